"""GAP images after 0 / 10 / 50 token steps for two classes, with what the checker and the student read.

The setting of the benchmark's GAP track (spurious 0.95, seed 0); the student is trained on the real
train images. Two methods:

- text (the benchmark's default since session 7): per class, 8 contexts of captions of unlabelled
  pool images are screened by the student's loss, 4 token sets start at the hardest 4 and are
  optimised with the true-label loss, a zero-shot class-keeping term, text guidance toward their
  contexts and image guidance toward the pool's mean, through 4 DDIM steps; the final images come
  from the pipeline's own sampler (8 steps), so the student's loss on them shows the transfer.
- kept (session 6): GAP starts from each class's real train images, keeps their digit strokes
  (plain-background masks) and optimises 3 token sets per class with the true-label loss and image
  guidance toward the modes of unlabelled pool images, through 4 DDIM steps at strength 0.8; the
  final images are rendered through that same sampler.

"0 steps" is the tokens before optimisation (learning rate 0). Writes a PNG (a row per class and
step count) and prints, per row, the checker's digit reading, the backgrounds it reads and the
student's true-label cross-entropy.

    PYTHONPATH=. python benchmarks/gap_grid.py [--method text|kept] [--classes 3,8] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import datacrafter_widget as dc  # noqa: E402
from datacrafter_widget.loop.gap import GapConfig, gap_images, student_loss_on  # noqa: E402
from datacrafter_widget.loop.masks import plain_background_mask  # noqa: E402
from datacrafter_widget.loop.student import train_student  # noqa: E402
from datacrafter_widget.starter.checker import load_checker  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", default="3,8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", default="0,10,50")
    p.add_argument("--per-class", type=int, default=9)
    p.add_argument("--method", default="text", choices=["text", "kept"])
    p.add_argument("--out", default=None, help="default: benchmarks/results/gap/gap_grid[_kept].png")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    classes = [c for c in a.classes.split(",") if c]
    ds = dc.starter.colored_digits(shots=5, spurious=0.95, seed=a.seed)
    models = dc.starter.models()
    checker = load_checker()
    student = train_student(ds.images(), [str(x) for x in ds.labels], ds.classes, seed=a.seed, progress=False)
    target = ds.pool.images(list(range(0, len(ds.pool), max(1, len(ds.pool) // 40))))
    sources = {c: [im for im, l in zip(ds.images(), ds.labels) if str(l) == c] for c in classes}
    masks = {c: [plain_background_mask(im) for im in ims] for c, ims in sources.items()}
    kept = a.method == "kept"
    descs: dict[str, list[str]] = {}
    if not kept:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from types import SimpleNamespace

        from bench_data_efficiency import gap_descriptions

        descs = gap_descriptions(SimpleNamespace(seed=a.seed, ds=ds, models=models), 8, 200)  # type: ignore[arg-type]
    seeds = {c: [a.seed * 1000 + 100 * i + j for j in range(a.per_class)] for i, c in enumerate(classes)}
    rows: list[tuple[str, list[Image.Image]]] = []
    print(f"{'class':>5} {'steps':>5}  checker digit ok  backgrounds (checker)            student CE (true label)")
    for c in classes:
        for steps in [int(s) for s in a.steps.split(",")]:
            cfg = GapConfig(
                steps=max(1, steps),
                lr=2e-2 if steps else 0.0,
                n_tokens=4,
                sampler_steps=4,
                final_steps=4 if kept else models.generator.default_steps,
                batch=3,
                guidance=models.generator.default_guidance,
                image_weight=10.0,
                loss="true-label",
                token_sets=3 if kept else 4,
                strength=0.8,
                init="class" if kept else "target",
                class_weight=0.0 if kept else 1.0,
            )
            [(_, _, images)] = list(
                gap_images(
                    models.generator,
                    student,
                    [c],
                    seeds={c: seeds[c]},
                    target={c: descs[c]} if descs else None,
                    target_images=target,
                    embedder=models.embedder,
                    config=cfg,
                    sources={c: sources[c]} if kept else None,
                    masks={c: masks[c]} if kept else None,
                )
            )
            read = checker.predict(images)
            ok = sum(d == c for d in read["digit"])
            bgs = Counter(read["background"]).most_common()
            ce = student_loss_on(student, images, c)
            text = f"class {c}, {steps} steps: checker {ok}/{len(images)} digit {c}; student CE {ce:.2f}"
            print(f"{c:>5} {steps:>5}  {ok}/{len(images):<15} {str(dict(bgs)):<34} {ce:.3f}")
            rows.append((text, images))
    scale, pad, head = 3, 4, 16
    w = 32 * scale
    width = pad + a.per_class * (w + pad)
    sheet = Image.new("RGB", (width, len(rows) * (head + w + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    y = pad
    for text, images in rows:
        draw.text((pad, y), text, fill="black")
        for j, im in enumerate(images):
            sheet.paste(im.resize((w, w), Image.NEAREST), (pad + j * (w + pad), y + head))
        y += head + w + pad
    out = Path(a.out or REPO / "benchmarks" / "results" / "gap" / f"gap_grid{'_kept' if kept else ''}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

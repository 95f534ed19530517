"""Benchmark the shipped starter models against an independent checker (prints the figures).

    python benchmarks/bench_starter_models.py [--weights DIR] [--seeds 5] [--guidance G]

1. Trains the independent checker (small CNN, real pool renders only) and prints its accuracy on
   renders of held-out pool scans.
2. Text-to-image on the (digit, foreground, background) triples held out of the diffusion
   training: % of images where the checker finds the prompted digit / background / foreground.
3. Image-to-image from real held-out renders, prompting a *different* digit: % keeping the
   source digit at strength 0.3, % showing the prompted digit at 0.9; also at 0.3 with guidance at
   every step (guidance_min_sigma=None), to show what the guidance floor changes.
4. Starter CLIP zero-shot digit and background accuracy on held-out pool scans.
5. Speed: images/second for 16 images at 20 steps on this CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datacrafter_widget.starter.checker import train_checker  # noqa: E402
from datacrafter_widget.starter.digits import BACKGROUNDS, CLASSES, colored_digits  # noqa: E402
from datacrafter_widget.starter.loader import WEIGHTS_DIR, load_starter_models  # noqa: E402
from datacrafter_widget.starter.train import HELDOUT_TRIPLES, heldout_sources, prompt_text  # noqa: E402


def heldout_pool(n: int | None = None, seed: int = 0):
    """Renders of the pool scans that no starter model trained on."""
    frame = colored_digits(shots=1, seed=seed, pool_variants=1).pool.frame
    held = frame[frame["source_index"].isin(heldout_sources(frame["source_index"].to_numpy()))]
    return held if n is None else held.iloc[:n]


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--seeds", type=int, default=5, help="images per held-out triple")
    ap.add_argument("--guidance", type=float, default=None, help="default: the shipped generator default")
    ap.add_argument(
        "--img2img",
        type=int,
        default=None,
        help="source images for the image-to-image test (default: all 125 held-out)",
    )
    ap.add_argument("--checker-steps", type=int, default=600)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    figures: dict[str, float] = {}

    t = time.time()
    checker = train_checker(steps=args.checker_steps)
    for k, v in checker.heldout_accuracy.items():
        figures[f"checker_{k}_real_heldout"] = v
    print(
        "checker accuracy on real held-out renders: "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in checker.heldout_accuracy.items())
        + f"  ({time.time() - t:.0f}s to train)"
    )

    models = load_starter_models(weights_dir=args.weights)
    gen = models.generator
    g = gen.default_guidance if args.guidance is None else args.guidance
    print(
        f"generator: {gen.name}, steps {gen.default_steps}, guidance {g}, no guidance below sigma {gen.guidance_min_sigma}"
    )

    # --- text-to-image on held-out attribute combinations
    prompts, want = [], []
    for d, fg, bg in HELDOUT_TRIPLES:
        for _ in range(args.seeds):
            prompts.append(prompt_text(d, fg, bg))
            want.append((d, fg, bg))
    t = time.time()
    images = gen(prompts, seed=list(range(1000, 1000 + len(prompts))), steps=20, guidance=g, batch_size=25)
    t_gen = time.time() - t
    pred = checker.predict(images)
    figures["t2i_digit"] = float(np.mean([p == w[0] for p, w in zip(pred["digit"], want)]))
    figures["t2i_foreground"] = float(np.mean([p == w[1] for p, w in zip(pred["foreground"], want)]))
    figures["t2i_background"] = float(np.mean([p == w[2] for p, w in zip(pred["background"], want)]))
    print(
        f"text-to-image, {len(prompts)} images from {len(HELDOUT_TRIPLES)} held-out (digit, fg, bg) triples "
        f"('{prompts[0]}', ...): prompted digit {100 * figures['t2i_digit']:.1f}% (target >= 90), "
        f"background {100 * figures['t2i_background']:.1f}% (>= 90), foreground {100 * figures['t2i_foreground']:.1f}% (>= 85)"
        f"  [{t_gen:.0f}s]"
    )

    # --- negative prompt sanity: 'a 3' with negative 'on a black background' should avoid black
    neg_prompts = [prompt_text(d, None, None) for d in CLASSES for _ in range(2)]
    plain = checker.predict(
        gen(neg_prompts, seed=list(range(2000, 2000 + len(neg_prompts))), guidance=g, batch_size=20)
    )
    negd = checker.predict(
        gen(
            neg_prompts,
            seed=list(range(2000, 2000 + len(neg_prompts))),
            guidance=g,
            batch_size=20,
            negative_prompt="a digit on a black background",
        )
    )
    figures["black_bg_without_negative"] = float(np.mean([b == "black" for b in plain["background"]]))
    figures["black_bg_with_negative"] = float(np.mean([b == "black" for b in negd["background"]]))
    figures["digit_only_prompt_digit"] = float(
        np.mean([p == w for p, w in zip(plain["digit"], [p.split()[-1] for p in neg_prompts])])
    )
    print(
        f"'a <digit>' prompts: digit {100 * figures['digit_only_prompt_digit']:.1f}%; black background "
        f"{100 * figures['black_bg_without_negative']:.1f}% without vs {100 * figures['black_bg_with_negative']:.1f}% "
        f"with negative prompt 'a digit on a black background'"
    )

    # --- image-to-image
    src = heldout_pool(args.img2img, seed=5)
    src_digits = list(src["digit"])
    targets = [str((int(d) + 1 + i % 8) % 10) for i, d in enumerate(src_digits)]
    i2i_prompts = [prompt_text(tg, fg, bg) for tg, fg, bg in zip(targets, src["foreground"], src["background"])]
    seeds = list(range(3000, 3000 + len(src)))
    for strength in (0.3, 0.9):
        out = gen(i2i_prompts, image=list(src["image"]), strength=strength, seed=seeds, guidance=g, batch_size=25)
        p = checker.predict(out)["digit"]
        keep = float(np.mean([a == b for a, b in zip(p, src_digits)]))
        win = float(np.mean([a == b for a, b in zip(p, targets)]))
        figures[f"i2i_{strength}_source_digit"] = keep
        figures[f"i2i_{strength}_prompted_digit"] = win
        print(
            f"image-to-image strength {strength}: source digit kept {100 * keep:.1f}%, prompted (different) digit "
            f"{100 * win:.1f}%  ({len(src)} real held-out sources)"
        )
    p = checker.predict(
        gen(
            i2i_prompts,
            image=list(src["image"]),
            strength=0.3,
            seed=seeds,
            guidance=g,
            batch_size=25,
            guidance_min_sigma=None,
        )
    )["digit"]
    figures["i2i_0.3_source_digit_guided_every_step"] = float(np.mean([a == b for a, b in zip(p, src_digits)]))
    print(
        f"image-to-image strength 0.3 with guidance at every step (no floor): source digit kept "
        f"{100 * figures['i2i_0.3_source_digit_guided_every_step']:.1f}%"
    )
    src_read = checker.predict(list(src["image"]))["digit"]
    figures["checker_on_i2i_sources"] = float(np.mean([a == b for a, b in zip(src_read, src_digits)]))
    print(
        f"(the checker reads the digit of {100 * figures['checker_on_i2i_sources']:.1f}% of these sources themselves)"
    )

    # --- starter CLIP zero-shot
    held = heldout_pool(seed=0)
    emb = models.embedder.embed_images(list(held["image"]))
    pd_ = models.embedder.zero_shot(emb, CLASSES, templates=("a photo of a {}",)).argmax(1)
    pb = models.embedder.zero_shot(emb, list(BACKGROUNDS), templates=("a photo of a digit on a {} background",)).argmax(
        1
    )
    figures["clip_zero_shot_digit"] = float(np.mean(np.array(CLASSES)[pd_] == held["digit"].to_numpy()))
    figures["clip_zero_shot_background"] = float(
        np.mean(np.array(list(BACKGROUNDS))[pb] == held["background"].to_numpy())
    )
    print(
        f"starter CLIP zero-shot on {len(held)} held-out pool images: digit {100 * figures['clip_zero_shot_digit']:.1f}% "
        f"(target >= 90, prompt 'a photo of a {{d}}'), background {100 * figures['clip_zero_shot_background']:.1f}% "
        f"(>= 95, prompt 'a photo of a digit on a {{bg}} background')"
    )

    # --- captioner
    caps = models.captioner(list(held["image"][:100]))
    figures["captioner_exact"] = float(np.mean([c == t for c, t in zip(caps, held["caption"][:100])]))
    print(f"retrieval captioner: exact caption match {100 * figures['captioner_exact']:.1f}% on 100 held-out images")

    # --- speed
    speed_prompts = [prompt_text(str(i % 10), "red", "white") for i in range(16)]
    gen(speed_prompts[:2], seed=0, steps=2)  # warm-up
    t = time.time()
    gen(speed_prompts, seed=0, steps=20, guidance=g, batch_size=16)
    dt = time.time() - t
    figures["images_per_second"] = 16 / dt
    print(
        f"speed: 16 images at 20 steps in {dt:.2f}s = {16 / dt:.1f} images/s (CPU, {torch.get_num_threads()} threads)"
    )
    return figures


if __name__ == "__main__":
    main()

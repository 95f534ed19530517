"""Generation throughput: DataCrafter.generate against the bare diffusers pipeline, and batching.

1. images/s of `crafter.generate(strategy="class")` (which also writes PNGs, provenance rows and,
   with an embedder, embeddings + the class filter) against calling the diffusers
   StableDiffusionPipeline directly with the same model, prompts, seeds, batch and steps, measured
   in the same run, interleaved (A B A B ...), median of the repeats. Aim: ratio >= 0.95.
2. batched multi-prompt generation (one pipeline call per batch of mixed prompts) against a
   per-prompt loop. Aim: >= 2x.

Uses the starter models when their weights are shipped, else the tiny random-weight SD from
tests/tiny_models.py. CPU unless a GPU is present.

3. with --batches 8,32,64: images/s of the same requests rendered at each batch size (interleaved
   repeats) and the largest pixel difference from the first size's images (batch composition must
   not change what a seed draws). It chose the starter's default batch of 64.

    python benchmarks/bench_generate.py [--models auto|starter|tiny] [--images 40] [--batch 8] [--steps 20]
    python benchmarks/bench_generate.py --models starter --batches 8,32,64 --per-class 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

import datacrafter_widget as dc  # noqa: E402
from datacrafter_widget.models.generator import Generator  # noqa: E402


def load_models(which: str, steps: int, weights_dir: str | None = None) -> tuple[dc.Models, str]:
    if weights_dir:  # starter-architecture weights from another folder (e.g. a training run)
        from datacrafter_widget.starter.loader import load_starter_models

        return load_starter_models(weights_dir=weights_dir), f"starter ({weights_dir})"
    weights = ROOT / "datacrafter_widget" / "starter" / "weights"
    if which in ("auto", "starter") and weights.is_dir() and any(weights.iterdir()) and hasattr(dc.starter, "models"):
        return dc.starter.models(), "starter"
    if which == "starter":
        raise SystemExit(f"no starter weights in {weights}: train them first or use --models tiny")
    from tiny_models import tiny_open_clip, tiny_sd_pipeline

    model, preprocess, tokenizer = tiny_open_clip()
    gen = Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=steps)
    return dc.Models(generator=gen, embedder=dc.Embedder(model, preprocess, tokenizer, name="tiny-clip")), "tiny"


class Timer:
    """Wall-clock and process CPU time: on a shared, overloaded CPU the wall clock swings by 2-3x
    between identical runs, while CPU time (single torch thread) measures the work itself. CPU time
    does not count waiting on disk (fsync), so the wall-clock ratio is reported too."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def direct_pipeline(pipe, prompts, negatives, seeds, steps, guidance, batch, size) -> tuple[float, float]:
    """The bare diffusers loop a user would write: same batches, one generator per image."""
    with Timer() as t:
        for start in range(0, len(prompts), batch):
            sl = slice(start, start + batch)
            pipe(
                prompts[sl],
                negative_prompt=negatives[sl],
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=size,
                width=size,
                generator=[torch.Generator().manual_seed(s) for s in seeds[sl]],
            )
    return len(prompts) / t.wall, len(prompts) / t.cpu


def crafter_generate(ds, models, per_class, steps, guidance, batch, filter_on, workdir, tag) -> tuple[float, float]:
    project = Path(tempfile.mkdtemp(prefix=f"bench-{tag}-", dir=workdir))
    with dc.DataCrafter(ds, models=models, project=project, batch_size=batch) as crafter:
        with Timer() as t:
            ids = crafter.generate(
                per_class=per_class, strategy="class", steps=steps, guidance=guidance, filter=filter_on, progress=False
            )
    return len(ids) / t.wall, len(ids) / t.cpu


def by_batch(
    gen: Generator, prompts: list[str], negatives: list[str], seeds: list[int], args, sizes: list[int]
) -> None:
    """Section 3: the same requests at each batch size, interleaved; rates and pixel differences."""
    import numpy as np

    gen(prompts[:2], negative_prompt=negatives[:2], seed=seeds[:2], steps=2, batch_size=2)  # warm-up
    rates: dict[int, list[float]] = {b: [] for b in sizes}
    first: dict[int, np.ndarray] = {}
    for _ in range(args.repeats):
        for b in sizes:
            with Timer() as t:
                out = gen(prompts, negative_prompt=negatives, seed=seeds, steps=args.steps, batch_size=b)
            rates[b].append(len(prompts) / t.wall)
            first.setdefault(b, np.stack([np.asarray(im, dtype=np.int16) for im in out]))
    base = sizes[0]
    print(f"\n3) {len(prompts)} images at each batch size ({args.repeats} interleaved runs, wall clock)")
    for b in sizes:
        diff = int(np.abs(first[b] - first[base]).max())
        ratio = statistics.median(rates[b]) / statistics.median(rates[base])
        print(
            f"   batch {b:4d}: median {statistics.median(rates[b]):6.2f} img/s ({ratio:.2f}x batch {base})   "
            f"runs: {', '.join(f'{x:.2f}' for x in rates[b])}   largest pixel difference from batch {base}: {diff}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="auto", choices=["auto", "starter", "tiny"])
    ap.add_argument("--per-class", type=int, default=4, help="images per class per crafter run (10 classes)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--weights", default=None, help="load starter-architecture weights from this folder")
    ap.add_argument("--batches", default="", help="comma list of batch sizes: only section 3 (images/s per batch)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (0: torch's default); 1 is steadier on a shared CPU"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    models, kind = load_models(args.models, args.steps, args.weights)
    gen = models.generator
    ds = dc.starter.colored_digits(shots=1, seed=0)
    classes = ds.classes
    guidance = gen.default_guidance
    # The exact requests crafter.generate(strategy="class") makes, so both sides do the same work.
    from datacrafter_widget.loop.strategies import build_requests

    reqs = build_requests("class", classes=classes, per_class=args.per_class, seed=100_000)
    prompts = [r.prompt for r in reqs]
    negatives = [r.negative_prompt for r in reqs]
    seeds = [r.seed for r in reqs]
    n = len(prompts)
    print(
        f"models: {kind} ({gen.name}), device {gen.device}, resolution {gen.resolution}px, "
        f"{n} images, batch {args.batch}, {args.steps} steps, guidance {guidance}, torch threads {torch.get_num_threads()}"
    )

    if args.batches:
        by_batch(gen, prompts, negatives, seeds, args, [int(b) for b in args.batches.split(",")])
        return
    pure = dc.Models(generator=gen)  # no embedder: the generation path alone
    with tempfile.TemporaryDirectory() as workdir:
        # warm-up (lazy img2img/tokenizer setup, allocator)
        direct_pipeline(gen.pipe, prompts[:2], negatives[:2], seeds[:2], 2, guidance, 2, gen.resolution)
        rates: dict[str, list[tuple[float, float]]] = {"direct": [], "crafter": [], "crafter+filter": []}
        for r in range(args.repeats):
            rates["direct"].append(
                direct_pipeline(gen.pipe, prompts, negatives, seeds, args.steps, guidance, args.batch, gen.resolution)
            )
            rates["crafter"].append(
                crafter_generate(ds, pure, args.per_class, args.steps, guidance, args.batch, False, workdir, f"p{r}")
            )
            if models.has("embedder"):
                rates["crafter+filter"].append(
                    crafter_generate(
                        ds, models, args.per_class, args.steps, guidance, args.batch, True, workdir, f"f{r}"
                    )
                )
        print(
            f"\n1) crafter.generate vs the diffusers pipeline (images/s, {args.repeats} interleaved runs; "
            "paired ratio = median over runs of crafter / the direct run just before it)"
        )
        for j, clock in enumerate(("wall", "cpu")):
            print(f"   [{clock} clock]")
            for k, v in rates.items():
                if v:
                    xs = [x[j] for x in v]
                    print(
                        f"   {k:<15} median {statistics.median(xs):7.2f} img/s   runs: {', '.join(f'{x:.2f}' for x in xs)}"
                    )
            for k in ("crafter", "crafter+filter"):
                if rates[k]:
                    paired = statistics.median(a[j] / d[j] for a, d in zip(rates[k], rates["direct"]))
                    extra = "   aim >= 0.95" if k == "crafter" else "   (also embeds + class filter)"
                    print(f"   ratio {k} / direct = {paired:.3f}{extra}")

        # 2) batched mixed prompts vs a per-prompt loop, through the same Generator
        m = min(n, 4 * args.batch)
        batched, loop = [], []
        for _ in range(args.repeats):
            with Timer() as t:
                gen(prompts[:m], negative_prompt=negatives[:m], seed=seeds[:m], steps=args.steps, batch_size=args.batch)
            batched.append((m / t.wall, m / t.cpu))
            with Timer() as t:
                for p, ng, s in zip(prompts[:m], negatives[:m], seeds[:m]):
                    gen([p], negative_prompt=ng, seed=[s], steps=args.steps, batch_size=1)
            loop.append((m / t.wall, m / t.cpu))
        print(
            f"\n2) batched multi-prompt generation vs a per-prompt loop ({m} mixed prompts, "
            f"{len(set(prompts[:m]))} distinct, {args.repeats} interleaved runs)"
        )
        for j, clock in enumerate(("wall", "cpu")):
            bs, ls = [x[j] for x in batched], [x[j] for x in loop]
            b, l = statistics.median(bs), statistics.median(ls)
            paired = statistics.median(x / y for x, y in zip(bs, ls))
            print(
                f"   [{clock} clock] batched (batch {args.batch}) {b:7.2f} img/s   runs: {', '.join(f'{x:.2f}' for x in bs)}"
            )
            print(f"   [{clock} clock] per-prompt loop   {l:7.2f} img/s   runs: {', '.join(f'{x:.2f}' for x in ls)}")
            print(f"   [{clock} clock] speed-up = {paired:.2f}x (paired median)   aim >= 2x")


if __name__ == "__main__":
    main()

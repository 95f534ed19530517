"""Generation throughput: DataCrafter.generate against the bare diffusers pipeline, and batching.

1. images/s of `crafter.generate(strategy="class")` (which also writes PNGs, provenance rows and,
   with an embedder, embeddings + the class filter) against calling the diffusers
   StableDiffusionPipeline directly with the same model, prompts, seeds, batch and steps, measured
   in the same run, interleaved (A B A B ...), median of the repeats. Aim: ratio >= 0.95.
2. batched multi-prompt generation (one pipeline call per batch of mixed prompts) against a
   per-prompt loop. Aim: >= 2x.

Uses the starter models when their weights are shipped, else the tiny random-weight SD from
tests/tiny_models.py. CPU unless a GPU is present.

    python benchmarks/bench_generate.py [--models auto|starter|tiny] [--images 40] [--batch 8] [--steps 20]
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
from datacrafter_widget.generator import Generator  # noqa: E402


def load_models(which: str, steps: int) -> tuple[dc.Models, str]:
    weights = ROOT / "datacrafter_widget" / "starter" / "weights"
    if which in ("auto", "starter") and weights.is_dir() and any(weights.iterdir()) and hasattr(dc.starter, "models"):
        return dc.starter.models(), "starter"
    if which == "starter":
        raise SystemExit(f"no starter weights in {weights}: train them first or use --models tiny")
    from tiny_models import tiny_open_clip, tiny_sd_pipeline

    model, preprocess, tokenizer = tiny_open_clip()
    gen = Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=steps)
    return dc.Models(generator=gen, embedder=dc.Embedder(model, preprocess, tokenizer, name="tiny-clip")), "tiny"


def direct_pipeline(pipe, prompts, negatives, seeds, steps, guidance, batch, size) -> float:
    """The bare diffusers loop a user would write: same batches, one generator per image."""
    t = time.perf_counter()
    for start in range(0, len(prompts), batch):
        sl = slice(start, start + batch)
        pipe(prompts[sl], negative_prompt=negatives[sl], num_inference_steps=steps, guidance_scale=guidance,
             height=size, width=size, generator=[torch.Generator().manual_seed(s) for s in seeds[sl]])
    return len(prompts) / (time.perf_counter() - t)


def crafter_generate(ds, models, per_class, steps, guidance, batch, filter_on, workdir, tag) -> float:
    project = Path(tempfile.mkdtemp(prefix=f"bench-{tag}-", dir=workdir))
    with dc.DataCrafter(ds, models=models, project=project, batch_size=batch) as crafter:
        t = time.perf_counter()
        ids = crafter.generate(per_class=per_class, strategy="class", steps=steps, guidance=guidance,
                               filter=filter_on, progress=False)
        rate = len(ids) / (time.perf_counter() - t)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="auto", choices=["auto", "starter", "tiny"])
    ap.add_argument("--per-class", type=int, default=4, help="images per class per crafter run (10 classes)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default); 1 is steadier on a shared CPU")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    models, kind = load_models(args.models, args.steps)
    gen = models.generator
    ds = dc.starter.colored_digits(shots=1, seed=0)
    classes = ds.classes
    guidance = gen.default_guidance
    # The exact requests crafter.generate(strategy="class") makes, so both sides do the same work.
    from datacrafter_widget.strategies import build_requests

    reqs = build_requests("class", classes=classes, per_class=args.per_class, seed=100_000)
    prompts = [r.prompt for r in reqs]
    negatives = [r.negative_prompt for r in reqs]
    seeds = [r.seed for r in reqs]
    n = len(prompts)
    print(f"models: {kind} ({gen.name}), device {gen.device}, resolution {gen.resolution}px, "
          f"{n} images, batch {args.batch}, {args.steps} steps, guidance {guidance}, torch threads {torch.get_num_threads()}")

    pure = dc.Models(generator=gen)  # no embedder: the generation path alone
    with tempfile.TemporaryDirectory() as workdir:
        # warm-up (lazy img2img/tokenizer setup, allocator)
        direct_pipeline(gen.pipe, prompts[:2], negatives[:2], seeds[:2], 2, guidance, 2, gen.resolution)
        rates: dict[str, list[float]] = {"direct": [], "crafter": [], "crafter+filter": []}
        for r in range(args.repeats):
            rates["direct"].append(direct_pipeline(gen.pipe, prompts, negatives, seeds, args.steps, guidance,
                                                   args.batch, gen.resolution))
            rates["crafter"].append(crafter_generate(ds, pure, args.per_class, args.steps, guidance, args.batch,
                                                     False, workdir, f"p{r}"))
            if models.has("embedder"):
                rates["crafter+filter"].append(crafter_generate(ds, models, args.per_class, args.steps, guidance,
                                                                args.batch, True, workdir, f"f{r}"))
        med = {k: statistics.median(v) for k, v in rates.items() if v}
        # paired ratios (each crafter run against the direct run right before it) resist load drift
        paired = {k: statistics.median(a / d for a, d in zip(v, rates["direct"])) for k, v in rates.items()
                  if v and k != "direct"}
        print("\n1) crafter.generate vs the diffusers pipeline (images/s, median of "
              f"{args.repeats}, interleaved)")
        for k, v in rates.items():
            if v:
                print(f"   {k:<15} {med[k]:7.2f} img/s   runs: {', '.join(f'{x:.2f}' for x in v)}")
        print(f"   ratio crafter / direct          = {paired['crafter']:.3f} (median of paired runs; "
              f"ratio of medians {med['crafter'] / med['direct']:.3f})   aim >= 0.95")
        if "crafter+filter" in paired:
            print(f"   ratio crafter+filter / direct   = {paired['crafter+filter']:.3f}   "
                  "(also embeds every image and runs the class filter)")

        # 2) batched mixed prompts vs a per-prompt loop, through the same Generator
        m = min(n, 4 * args.batch)
        batched, loop = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            gen(prompts[:m], negative_prompt=negatives[:m], seed=seeds[:m], steps=args.steps, batch_size=args.batch)
            batched.append(m / (time.perf_counter() - t))
            t = time.perf_counter()
            for p, ng, s in zip(prompts[:m], negatives[:m], seeds[:m]):
                gen([p], negative_prompt=ng, seed=[s], steps=args.steps, batch_size=1)
            loop.append(m / (time.perf_counter() - t))
        b, l = statistics.median(batched), statistics.median(loop)
        print(f"\n2) batched multi-prompt generation vs a per-prompt loop ({m} mixed prompts, "
              f"{len(set(prompts[:m]))} distinct)")
        print(f"   batched (batch {args.batch})  {b:7.2f} img/s   runs: {', '.join(f'{x:.2f}' for x in batched)}")
        print(f"   per-prompt loop      {l:7.2f} img/s   runs: {', '.join(f'{x:.2f}' for x in loop)}")
        print(f"   speed-up             = {b / l:.2f}x   (aim >= 2x)")


if __name__ == "__main__":
    main()

"""Peak memory and time of GAP token steps at the real size: SD-1.5 shape (64 x 64 latents, 512 px
decode), a CLIP-probe student on open_clip ViT-B-32 (224 px), batch 1, in a process of its own.

A GAP step backpropagates through the sampler's UNet calls, the VAE decoder at 512 px and the
student's CLIP, so its activations, not the weights, decide whether it fits a machine. The script
prints the resident memory after loading (the weights) and the peak over the token steps, for the
code on PYTHONPATH (run it once with another checkout on PYTHONPATH for a before/after):

    python benchmarks/bench_gap_memory.py --checkpointing            # full SD-1.5 / ViT-B-32 shapes
    python benchmarks/bench_gap_memory.py --shrink 8 --checkpointing  # the CI widths

--component vae|unet measures one model's forward and backward alone (the VAE decoder from 64 x 64
latents to 512 px at batch 1; the UNet at batch 2, as classifier-free guidance runs it), with
--mode none (no checkpointing), blocks (diffusers' own, one block at a time) or product (what
GAP's checkpointing uses, gap._block_checkpointing).

--profile prints, per stage (the module running: the UNet's blocks, the decoder's resnets, the
student's CLIP; "backward:" while the backward recomputes one), the peak resident memory and its
anonymous (activations, freed heap) and file-backed (mapped weights) parts. --n-tokens 8 and
--captioner give the step crafter.adversarial runs in the loop's process (bench_real_size.py).

--limit-gb stops the run (exit 3) once the process passes that much resident memory, so a
measurement cannot push a shared machine out of memory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
import torch
from memory_stages import StageMemory, stage_modules, status_bytes

GB = 1024**3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shrink", type=int, default=1)
    ap.add_argument("--cache", default=os.environ.get("DC_REAL_SIZE_CACHE", "/tmp/dc-real-size"))
    ap.add_argument("--checkpointing", action="store_true", help="GapConfig(checkpointing=True)")
    ap.add_argument("--sampler-steps", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1, help="token optimisation steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit-gb", type=float, default=14.0)
    ap.add_argument("--component", choices=["step", "vae", "unet"], default="step")
    ap.add_argument("--mode", choices=["none", "blocks", "product"], default="product")
    ap.add_argument("--n-tokens", type=int, default=4, help="learned tokens (crafter.adversarial's default: 8)")
    ap.add_argument("--captioner", action="store_true", help="load the BLIP-shaped captioner too, as the loop does")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="peak resident memory per stage (module) of the step, forward and backward",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.component != "step":
        component(args)
        return

    import datacrafter_widget as dc
    from datacrafter_widget.loop.gap import GapConfig, optimise_prompt_tokens
    from datacrafter_widget.loop.student import train_student
    from real_size.build import build_all, render_photo

    proc = psutil.Process()
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.02):
            rss = proc.memory_info().rss
            peak[0] = max(peak[0], rss)
            if rss > args.limit_gb * GB:
                print(f"  stopped: resident memory passed --limit-gb {args.limit_gb} ({rss / GB:.2f} GB)", flush=True)
                os._exit(3)

    p = build_all(args.cache, args.shrink)
    p.register_clip()
    models = dc.Models.stable_diffusion(
        str(p.sd),
        clip=(p.clip_arch, str(p.clip_weights)),
        captioner=str(p.captioner) if args.captioner else None,
        device="cpu",
        steps=2,
    )
    images = [render_photo(k, 512, seed=s) for k in ("ball", "box") for s in range(3)]
    student = train_student(
        images, ["ball"] * 3 + ["box"] * 3, kind="probe", embedder=models.embedder, epochs=5, progress=False
    )
    loaded = proc.memory_info().rss
    print(
        f"GAP token steps at shrink={args.shrink}: {models.generator.resolution} px, checkpointing={args.checkpointing}, "
        f"sampler_steps={args.sampler_steps}, batch 1, torch threads {torch.get_num_threads()}\n"
        f"  resident after loading the models and the student: {loaded / GB:.2f} GB",
        flush=True,
    )
    threading.Thread(target=watch, daemon=True).start()
    stages = StageMemory(stage_modules(models) if args.profile else {})
    base = status_bytes()
    t, cpu = time.perf_counter(), time.process_time()
    with stages if args.profile else contextlib.nullcontext():
        res = optimise_prompt_tokens(
            models.generator,
            student,
            "ball",
            target="a photo of an object on a beach",
            config=GapConfig(
                steps=args.steps,
                sampler_steps=args.sampler_steps,
                batch=1,
                checkpointing=args.checkpointing,
                n_tokens=args.n_tokens,
            ),
            seed=0,
        )
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    stop.set()
    peak[0] = max(peak[0], proc.memory_info().rss)
    print(
        f"  {args.steps} token step(s): {wall:.1f} s wall, {cpu:.1f} s CPU; peak resident {peak[0] / GB:.2f} GB "
        f"({(peak[0] - loaded) / GB:.2f} GB over the loaded models); loss {res.history[-1]['loss']:.4f}",
        flush=True,
    )
    if args.profile:
        print(stages.report(base), flush=True)


def component(args: argparse.Namespace) -> None:
    """One model's forward and backward at the real size, with a checkpointing mode."""
    from diffusers import StableDiffusionPipeline

    from datacrafter_widget.loop.gap import _block_checkpointing
    from real_size.build import build_all

    p = build_all(args.cache, args.shrink)
    pipe = StableDiffusionPipeline.from_pretrained(str(p.sd), safety_checker=None, requires_safety_checker=False)
    model = pipe.vae if args.component == "vae" else pipe.unet
    model.requires_grad_(False)
    proc = psutil.Process()
    with torch.no_grad():  # touch the weights, so the figures below are activations
        for w in model.parameters():
            w.sum()
    loaded = proc.memory_info().rss
    peak = [loaded]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], proc.memory_info().rss)

    threading.Thread(target=watch, daemon=True).start()
    if args.mode == "blocks":
        model.enable_gradient_checkpointing()
    mode = _block_checkpointing(model) if args.mode == "product" else contextlib.nullcontext()
    side = int(pipe.unet.config.sample_size)
    t, cpu = time.perf_counter(), time.process_time()
    with mode:
        if args.component == "vae":
            z = torch.randn(1, 4, side, side, requires_grad=True)
            out = pipe.vae.decode(z).sample
        else:
            z = torch.randn(2, 4, side, side, requires_grad=True)
            h = torch.randn(2, 77, int(pipe.unet.config.cross_attention_dim))
            out = pipe.unet(z, torch.tensor(500), encoder_hidden_states=h).sample
        out.square().mean().backward()
    stop.set()
    print(
        f"{args.component} forward + backward at shrink={args.shrink}, {side} x {side} latents, checkpointing "
        f"{args.mode}: {time.perf_counter() - t:.1f} s wall, {time.process_time() - cpu:.1f} s CPU; "
        f"{(peak[0] - loaded) / GB:.2f} GB over the loaded weights ({peak[0] / GB:.2f} GB peak resident)",
        flush=True,
    )


if __name__ == "__main__":
    main()

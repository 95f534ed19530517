"""The real-size path: SD-1.5-shaped generator, open_clip ViT-B-32, a BLIP-shaped captioner, 512 px photos.

The models have the real architectures with random weights (benchmarks/real_size/build.py builds
them once into --cache, in a process of its own, and the product loads them with the call a user
makes: dc.Models.stable_diffusion(folder, clip=(arch, weights), captioner=folder)). A folder of
photo-like 512 px images (three classes) goes through the whole loop once: import, first map, a
class round and a caption round, feedback, evolve, the probe student, a GAP step, the widget's view
and atlas, export. Per step it prints seconds and peak resident memory (and peak device memory on
a GPU). Then:

- images/s of one round of `crafter.generate` against the bare diffusers pipeline on the same
  prompts, seeds, steps and size, interleaved in the same run (aim: crafter >= 1/1.1 of bare).
- the widget over --photos photos (default 500) at 512 px: the kernel side of the first view once
  the map is computed (aim <= 3 s), and its atlas bytes against the same photos at another size
  (aim: independent of the photos' size).

    python benchmarks/bench_real_size.py                       # full SD-1.5 shape, CPU, float32
    python benchmarks/bench_real_size.py --shrink 8            # channel widths / 8 (CI shape), same resolutions
    python benchmarks/bench_real_size.py --device cuda --dtype float16 --steps 25 --batch 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import psutil
import torch

import datacrafter_widget as dc
from datacrafter_widget.ui.widget import CrafterView
from real_size.build import CLASSES, paths, write_photos

GB = 1024**3


class PeakMemory:
    """Peak resident memory of this process over a span (sampled every 20 ms), and peak device memory."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> "PeakMemory":
        self.peak = self.proc.memory_info().rss
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def device_peak(self) -> float | None:
        return torch.cuda.max_memory_allocated() / GB if torch.cuda.is_available() else None


ROWS: list[tuple[str, float, float, float, float | None, str]] = []


@contextmanager
def step(name: str, note: str = "") -> Iterator[dict]:
    """Times a step and records its peak memory; the body may set info["note"]."""
    info = {"note": note}
    with PeakMemory() as mem:
        t, cpu = time.perf_counter(), time.process_time()
        yield info
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    ROWS.append((name, seconds, cpu, mem.peak / GB, mem.device_peak, str(info["note"])))
    dev = f"  device {mem.device_peak:5.2f} GB" if mem.device_peak is not None else ""
    print(
        f"  {name:<26s} {seconds:8.2f} s wall {cpu:8.2f} s CPU   peak RSS {mem.peak / GB:5.2f} GB{dev}   {info['note']}",
        flush=True,
    )


def ensure_models(cache: Path, shrink: int) -> None:
    """Builds the random-weight models in a child process, so their construction is not in this one's peak."""
    p = paths(cache, shrink)
    if all((p.sd.parent / f".done-{part}").is_file() for part in ("sd", "clip", "blip")):
        return
    print(f"building the shrink={shrink} models into {p.sd.parent} (once) ...", flush=True)
    script = ROOT / "benchmarks" / "real_size" / "build.py"
    subprocess.run([sys.executable, str(script), str(cache), "--shrink", str(shrink)], check=True)


def load_models(cache: Path, args: argparse.Namespace) -> dc.Models:
    p = paths(cache, args.shrink)
    p.register_clip()
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    return dc.Models.stable_diffusion(
        str(p.sd),
        clip=(p.clip_arch, str(p.clip_weights)),
        captioner=str(p.captioner),
        device=args.device,
        dtype=dtype,
        steps=args.steps,
    )


def bare_vs_crafter(crafter: dc.DataCrafter, args: argparse.Namespace) -> None:
    """One round through crafter.generate against the bare pipeline on the same requests, interleaved."""
    from datacrafter_widget.loop.strategies import build_requests

    gen = crafter.models.generator
    pipe = gen.pipe
    cls = [crafter.classes[0]]
    per_class = args.round_images
    wall: dict[str, list[float]] = {"bare": [], "crafter": []}
    cpu: dict[str, list[float]] = {"bare": [], "crafter": []}
    for rep in range(args.repeats):
        seed = 900_000 + rep * 1000
        reqs = build_requests("class", classes=cls, per_class=per_class, seed=seed)
        prompts = [r.prompt for r in reqs]
        negatives = [r.negative_prompt for r in reqs]
        seeds = [r.seed for r in reqs]
        t, c = time.perf_counter(), time.process_time()
        with torch.no_grad():
            for start in range(0, len(prompts), args.batch):
                sl = slice(start, start + args.batch)
                pipe(
                    prompts[sl],
                    negative_prompt=negatives[sl],
                    num_inference_steps=args.steps,
                    guidance_scale=gen.default_guidance,
                    height=gen.resolution,
                    width=gen.resolution,
                    generator=[torch.Generator().manual_seed(s) for s in seeds[sl]],
                )
        wall["bare"].append(time.perf_counter() - t)
        cpu["bare"].append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        ids = crafter.generate(
            per_class=per_class,
            strategy="class",
            classes=cls,
            steps=args.steps,
            seed=seed,
            batch_size=args.batch,
            progress=False,
        )
        wall["crafter"].append(time.perf_counter() - t)
        cpu["crafter"].append(time.process_time() - c)
        assert len(ids) == per_class, ids
        print(
            f"  repeat {rep + 1}: bare {wall['bare'][-1]:.2f} s wall {cpu['bare'][-1]:.2f} s CPU, crafter "
            f"{wall['crafter'][-1]:.2f} s wall {cpu['crafter'][-1]:.2f} s CPU",
            flush=True,
        )
    n = per_class
    bare, craft = statistics.median(wall["bare"]), statistics.median(wall["crafter"])
    bare_cpu, craft_cpu = statistics.median(cpu["bare"]), statistics.median(cpu["crafter"])
    print(
        f"\n{n} image(s) of {gen.resolution} px at {args.steps} steps, batch {args.batch}, median of {args.repeats}"
        " (interleaved; CPU time counts this process's threads, steadier than wall time on a shared machine):"
        f"\n  bare diffusers pipeline  {n / bare:8.4f} images/s  ({bare:.2f} s wall, {bare_cpu:.2f} s CPU)"
        f"\n  crafter.generate         {n / craft:8.4f} images/s  ({craft:.2f} s wall, {craft_cpu:.2f} s CPU)"
        f"\n  crafter / bare           {craft / bare:8.3f} wall, {craft_cpu / bare_cpu:.3f} CPU   (aim <= 1.10)\n",
        flush=True,
    )


def widget_over_photos(models: dc.Models, work: Path, args: argparse.Namespace) -> None:
    """The first view of a project of --photos photos, once its map is computed; atlas bytes by photo size."""
    sizes = [args.size, *[s for s in args.atlas_sizes if s != args.size]]
    atlas: dict[int, int] = {}
    for size in sizes:
        folder = write_photos(work / f"photos-{args.photos}-{size}", -(-args.photos // len(CLASSES)), size, seed=7)
        ds = dc.Dataset.from_folder(folder, check="header")
        with step(f"import {len(ds)} @ {size}px"):
            crafter = dc.DataCrafter(ds, models=models, project=work / f"view-{size}")
        with crafter:
            with step(f"map of {len(ds)} @ {size}px"):
                crafter.update_projection()
            with step(f"first view {len(ds)} @ {size}px"):
                view = CrafterView(crafter)  # what crafter.show() builds; kept here to wait on its jobs
                bundle = view.widget._repr_mimebundle_()
            assert bundle, "the widget produced no display bundle"
            with step(f"thumbnails of {len(ds)} @ {size}px, as pages of 256") as info:
                n = view.widget.thumbs["count"]  # what the browser asks for when zoomed in on all of them
                atlas[size] = sum(
                    len(view.widget.thumbnail_page(range(s, min(n, s + 256)))[0]) for s in range(0, n, 256)
                )
                info["note"] = f"{atlas[size] / 1024:.0f} KB, tile {view.widget.thumbs['tile']} px"
            view.wait(timeout=600)
    if len(atlas) > 1:
        base = atlas[args.size]
        print(
            "  thumbnail bytes by photo size: "
            + ", ".join(f"{s} px {b / 1024:.0f} KB ({b / base:.2f}x)" for s, b in atlas.items()),
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shrink", type=int, default=1, help="divide the channel widths (1: the real SD-1.5 shape)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--steps", type=int, default=2, help="sampler steps of every round")
    ap.add_argument("--batch", type=int, default=1, help="images per pipeline call")
    ap.add_argument("--per-class", type=int, default=8, help="real photos per class (3 classes; half as many test)")
    ap.add_argument("--size", type=int, default=512, help="the photos' side in px")
    ap.add_argument("--round-images", type=int, default=1, help="images of the crafter-vs-bare round")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--photos", type=int, default=500, help="photos of the widget measurement (0: skip it)")
    ap.add_argument("--atlas-sizes", type=int, nargs="*", default=[256], help="other photo sizes for the atlas")
    ap.add_argument(
        "--cache", default=os.environ.get("DC_REAL_SIZE_CACHE", str(Path(tempfile.gettempdir()) / "dc-real-size"))
    )
    ap.add_argument(
        "--parts", nargs="+", default=["loop", "widget"], choices=["loop", "ratio", "widget"], help="what to measure"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    ensure_models(cache, args.shrink)
    print(
        f"bench_real_size: shrink={args.shrink} device={args.device} dtype={args.dtype} steps={args.steps} "
        f"batch={args.batch} torch threads={torch.get_num_threads()} torch {torch.__version__}",
        flush=True,
    )
    if args.device == "cuda":
        print(f"  GPU: {torch.cuda.get_device_name(0)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-real-size-") as tmp:
        work = Path(tmp)
        if "loop" in args.parts:
            the_loop(cache, work, args)
        if "ratio" in args.parts and "loop" not in args.parts:  # the loop part runs it too
            ratio_only(cache, work, args)
        if args.photos and "widget" in args.parts:
            print(f"\nthe widget over {args.photos} photos:", flush=True)
            with step("load models"):
                models = load_models(cache, args)
            widget_over_photos(models, work, args)
    peak = max(r[3] for r in ROWS)
    print(f"\npeak resident memory over the bench: {peak:.2f} GB (aim < 8 GB)")


def ratio_only(cache: Path, work: Path, args: argparse.Namespace) -> None:
    """crafter.generate against the bare pipeline alone, on a project of a few photos."""
    photos = write_photos(work / "ratio-photos", 2, args.size, seed=5)
    with step("load models"):
        models = load_models(cache, args)
    with dc.DataCrafter(dc.Dataset.from_folder(photos), models=models, project=work / "ratio") as crafter:
        with step("crafter vs bare rounds"):  # so the peak memory of these rounds is in the table too
            bare_vs_crafter(crafter, args)


def the_loop(cache: Path, work: Path, args: argparse.Namespace) -> None:
    """Import, first map, class and caption rounds, feedback, evolve, probe student, GAP, view, export."""
    photos = work / "photos"
    with step("render photos", f"{args.per_class}+{args.per_class // 2} per class, {args.size} px"):
        write_photos(photos / "train", args.per_class, args.size, seed=1)
        write_photos(photos / "test", max(1, args.per_class // 2), args.size, seed=2)
    with step("load models") as info:
        models = load_models(cache, args)
        info["note"] = repr(models.generator)
    with step("import") as info:
        ds = dc.Dataset.from_folder(photos / "train")
        test = dc.Dataset.from_folder(photos / "test")
        crafter = dc.DataCrafter(ds, models=models, project=work / "project", heldout=test, batch_size=args.batch)
        info["note"] = f"{len(ds)} train + {len(test)} test photos"
    with crafter:
        with step("first map") as info:
            frame = crafter.update_projection()
            info["note"] = f"{int((frame['kind'] == 'label').sum())} content labels"
        with step("class round") as info:
            ids = crafter.generate(per_class=1, strategy="class", steps=args.steps, progress=False)
            info["note"] = f"{len(ids)} images"
        with step("caption round") as info:
            cap_ids = crafter.generate(per_class=1, strategy="caption", steps=args.steps, progress=False)
            info["note"] = f"{len(cap_ids)} images"
        with step("feedback"):
            crafter.feedback(bad=ids[:1], good=ids[1:2], bad_labels=["blurry"])
        with step("evolve") as info:
            result = crafter.evolve(
                classes=[crafter.classes[0]],
                population=2,
                generations=1,
                batch=1,
                steps=args.steps,
                test_negatives=False,  # its with/without measurement is max(16, 4 x batch) images x 2
                progress=False,
            )
            info["note"] = f"{len(result.prompts) if hasattr(result, 'prompts') else ''} prompts"
        with step("probe student") as info:
            student = crafter.train_student(kind="probe", progress=False)
            info["note"] = f"test accuracy {crafter.evaluate(test)['accuracy']:.2f}"
        with step("GAP step") as info:
            gap_ids = crafter.adversarial(
                target="a photo of an object on a beach",
                steps=1,
                per_class=1,
                classes=[crafter.classes[0]],
                sampler_steps=1,
                final_steps=args.steps,
                batch=1,
                checkpointing=True,
                progress=False,
            )
            info["note"] = f"{len(gap_ids)} image(s)"
        bare_vs_crafter(crafter, args)  # before the view exists: its refreshes would run in this round
        with step("widget view + thumbnails") as info:
            view = CrafterView(crafter)
            view.wait(timeout=600)
            pages = [
                view.widget.thumbnail_page(range(s, min(len(view.ids), s + 256)))[0]
                for s in range(0, len(view.ids), 256)
            ]
            info["note"] = f"thumbnail pages {sum(map(len, pages)) / 1024:.0f} KB for {len(view.ids)} images"
        with step("export") as info:
            out = crafter.export(work / "export")
            info["note"] = f"{sum(1 for _ in out.rglob('*.png'))} PNGs"
        del student


if __name__ == "__main__":
    main()

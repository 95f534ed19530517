"""The real-size path: SD-1.5-shaped generator, open_clip ViT-B-32, a BLIP-shaped captioner, 512 px photos.

The models have the real architectures with random weights (benchmarks/real_size/build.py builds
them once into --cache, in a process of its own, and the product loads them with the call a user
makes: dc.Models.stable_diffusion(folder, clip=(arch, weights), captioner=folder)). A folder of
photo-like 512 px images (three classes) goes through the whole loop once: import, first map, a
class round and a caption round, feedback, evolve, the probe student, a GAP step, the widget's view
and a page of thumbnails, export. Per step it prints seconds and peak resident memory (and peak device memory on
a GPU). Then:

- images/s of one round of `crafter.generate` against the bare diffusers pipeline on the same
  prompts, seeds, steps and size, interleaved in the same run (aim: crafter >= 1/1.1 of bare).
- the widget over --photos photos (default 500) at 512 px: the kernel side of the first view once
  the map is computed (aim <= 3 s), and the bytes of a page of its thumbnails against the same photos at another size
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
from contextlib import contextmanager, nullcontext
from typing import Any
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
from memory_stages import StageMemory, stage_modules
from real_size.build import CLASSES, paths, write_photos

GB = 1024**3


class PeakMemory:
    """Peak resident memory of this process over a span (sampled every 20 ms), and peak device memory."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    limit = float("inf")  # bytes; past it the bench stops (exit 3), so it cannot push a shared machine out of memory

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            rss = self.proc.memory_info().rss
            self.peak = max(self.peak, rss)
            if rss > self.limit:
                print(f"\nstopped: resident memory {rss / GB:.2f} GB passed --limit-gb", flush=True)
                os._exit(3)

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


STAGES: dict[str, Any] = {}  # --profile: the modules whose forward starts a stage (memory_stages.stage_modules)


@contextmanager
def step(name: str, note: str = "") -> Iterator[dict]:
    """Times a step and records its peak memory; the body may set info["note"]. With --profile (once
    the models are loaded) it also prints the step's peak per stage (benchmarks/memory_stages.py)."""
    info = {"note": note}
    stages = StageMemory(STAGES) if STAGES else None
    with PeakMemory() as mem, stages if stages is not None else nullcontext():
        t, cpu = time.perf_counter(), time.process_time()
        yield info
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    ROWS.append((name, seconds, cpu, mem.peak / GB, mem.device_peak, str(info["note"])))
    dev = f"  device {mem.device_peak:5.2f} GB" if mem.device_peak is not None else ""
    print(
        f"  {name:<26s} {seconds:8.2f} s wall {cpu:8.2f} s CPU   peak RSS {mem.peak / GB:5.2f} GB{dev}   {info['note']}",
        flush=True,
    )
    if stages is not None:
        print(stages.report(), flush=True)


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
    """The first view of a project of --photos photos, once its map is computed; thumbnail page bytes by photo size."""
    sizes = [args.size, *[s for s in args.other_sizes if s != args.size]]
    pages: dict[int, int] = {}
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
            with step(f"thumbnail page @ {size}px") as info:
                pages[size], info["note"] = thumbnail_page(view)
            view.wait(timeout=600)
    if len(pages) > 1:
        base = pages[args.size]
        print(
            "  thumbnail page bytes by photo size: "
            + ", ".join(f"{s} px {b / 1024:.0f} KB ({b / base:.2f}x)" for s, b in pages.items()),
            flush=True,
        )


def thumbnail_page(view: CrafterView) -> tuple[int, str]:
    """Encodes the first page of thumbnails as the browser gets it when zoomed in (up to 256 points):
    its bytes and a note."""
    count = int(view.widget.thumb_meta["count"])
    page, grid = view.widget.thumbnail_page(range(min(256, count)))
    return len(page), f"{grid['count']} thumbnails of {grid['tile']} px: {len(page) / 1024:.0f} KB"


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
    ap.add_argument(
        "--other-sizes", type=int, nargs="*", default=[256], help="other photo sizes for the thumbnail page"
    )
    ap.add_argument(
        "--cache", default=os.environ.get("DC_REAL_SIZE_CACHE", str(Path(tempfile.gettempdir()) / "dc-real-size"))
    )
    ap.add_argument(
        "--parts",
        nargs="+",
        default=["loop", "widget"],
        choices=["loop", "ratio", "widget", "probe"],
        help="what to measure",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--loop-steps",
        nargs="+",
        default=list(LOOP_STEPS),
        choices=LOOP_STEPS,
        help="the loop's steps to run, in order; a later run with --work goes on from the project there",
    )
    ap.add_argument(
        "--round-classes", type=int, default=3, help="classes of the class and caption rounds (1 image each)"
    )
    ap.add_argument("--limit-gb", type=float, default=14.0, help="stop (exit 3) past this resident memory")
    ap.add_argument("--profile", action="store_true", help="each loop step's peak memory per stage (module)")
    ap.add_argument("--work", default="", help="keep the photos and the project here (default: a temporary folder)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    PeakMemory.limit = args.limit_gb * GB
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
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "loop" in args.parts:
            the_loop(cache, work, args)
        if "ratio" in args.parts and "loop" not in args.parts:  # the loop part runs it too
            ratio_only(cache, work, args)
        if args.photos and "widget" in args.parts:
            print(f"\nthe widget over {args.photos} photos:", flush=True)
            with step("load models"):
                models = load_models(cache, args)
            widget_over_photos(models, work, args)
        if args.photos and "probe" in args.parts:
            print(f"\nthe probe student over {args.photos} photos:", flush=True)
            probe_over_photos(cache, work, args)
    peak = max(r[3] for r in ROWS)
    print(f"\npeak resident memory over the bench: {peak:.2f} GB (aim < 8 GB)")


def probe_over_photos(cache: Path, work: Path, args: argparse.Namespace) -> None:
    """The student for photos, a linear probe on CLIP features, trained on a project of --photos photos
    whose embeddings the first map computed (only the CLIP model is loaded: the generator plays no part)."""
    from datacrafter_widget.models.embedder import Embedder

    p = paths(cache, args.shrink)
    p.register_clip()
    with step("load CLIP"):
        models = dc.Models(embedder=Embedder.from_open_clip(p.clip_arch, str(p.clip_weights), device=args.device))
    folder = write_photos(
        work / f"photos-{args.photos}-{args.size}", -(-args.photos // len(CLASSES)), args.size, seed=7
    )
    ds = dc.Dataset.from_folder(folder, check="header")
    with tempfile.TemporaryDirectory(prefix="probe-", dir=work) as tmp:
        with dc.DataCrafter(ds, models=models, project=Path(tmp) / "project", heldout=None) as crafter:
            with step(f"embeddings of {len(ds)} @ {args.size}px"):  # what the first map computes and keeps
                crafter.embeddings()
            with step(f"probe student on {len(ds)} @ {args.size}px") as info:
                student = crafter.train_student(kind="probe", progress=False)
                info["note"] = f"{student.config.n_train} images, {student.config.epochs} epochs"


def ratio_only(cache: Path, work: Path, args: argparse.Namespace) -> None:
    """crafter.generate against the bare pipeline alone, on a project of a few photos."""
    photos = write_photos(work / "ratio-photos", 2, args.size, seed=5)
    with step("load models"):
        models = load_models(cache, args)
    with dc.DataCrafter(dc.Dataset.from_folder(photos), models=models, project=work / "ratio") as crafter:
        with step("crafter vs bare rounds"):  # so the peak memory of these rounds is in the table too
            bare_vs_crafter(crafter, args)


LOOP_STEPS = ("import", "map", "class", "caption", "feedback", "evolve", "probe", "gap", "ratio", "view", "export")


class Loop:
    """The loop's state between steps, all of it in --work (photos, project), so a step can run in a later process.

    Each step reads what it needs back from the project (the class round's ids from its rows, the
    student from <project>/student), as a user's notebook would after a kernel restart.
    """

    def __init__(self, cache: Path, work: Path, args: argparse.Namespace) -> None:
        self.cache, self.work, self.args = cache, work, args
        self.photos, self.project = work / "photos", work / "project"
        self._models: dc.Models | None = None
        self._crafter: dc.DataCrafter | None = None

    @property
    def models(self) -> dc.Models:
        if self._models is None:
            with step("load models") as info:
                self._models = load_models(self.cache, self.args)
                info["note"] = repr(self._models.generator)
            if self.args.profile:
                STAGES.update(stage_modules(self._models))
        return self._models

    @property
    def test(self) -> dc.Dataset:
        return dc.Dataset.from_folder(self.photos / "test")

    @property
    def crafter(self) -> dc.DataCrafter:
        if self._crafter is None:
            if not self.project.is_dir():
                raise SystemExit(f"no project in {self.project}: run the import step first (--loop-steps import ...)")
            models = self.models
            with step("reopen project") as info:
                self._crafter = dc.DataCrafter.open(self.project, models=models, batch_size=self.args.batch)
                self._crafter.heldout = self.test
                info["note"] = f"{len(self._crafter.samples)} samples"
        return self._crafter

    def close(self) -> None:
        if self._crafter is not None:
            self._crafter.close()

    def ids_of(self, strategy: str) -> list[str]:
        s = self.crafter.samples
        return s.loc[(s["source"] == "generated") & (s["strategy"] == strategy), "id"].tolist()

    # ---- the steps, in LOOP_STEPS order --------------------------------------------------------
    def step_import(self) -> None:
        args = self.args
        with step("render photos", f"{args.per_class}+{max(1, args.per_class // 2)} per class, {args.size} px"):
            write_photos(self.photos / "train", args.per_class, args.size, seed=1)
            write_photos(self.photos / "test", max(1, args.per_class // 2), args.size, seed=2)
        models = self.models
        with step("import") as info:
            ds = dc.Dataset.from_folder(self.photos / "train")
            test = self.test
            self._crafter = dc.DataCrafter(ds, models=models, project=self.project, heldout=test, batch_size=args.batch)
            info["note"] = f"{len(ds)} train + {len(test)} test photos"

    def step_map(self) -> None:
        crafter = self.crafter
        with step("first map") as info:
            frame = crafter.update_projection()
            info["note"] = f"{int((frame['kind'] == 'label').sum())} content labels"

    def _round(self, strategy: str) -> None:
        crafter = self.crafter
        with step(f"{strategy} round") as info:
            ids = crafter.generate(
                per_class=1, strategy=strategy, classes=self.classes, steps=self.args.steps, progress=False
            )
            info["note"] = f"{len(ids)} images of {crafter.models.generator.resolution} px"

    @property
    def classes(self) -> list[str]:
        return list(self.crafter.classes)[: self.args.round_classes]

    def step_class(self) -> None:
        self._round("class")

    def step_caption(self) -> None:
        self._round("caption")

    def step_feedback(self) -> None:
        crafter, ids = self.crafter, self.ids_of("class")
        with step("feedback") as info:
            marked = crafter.feedback(bad=ids[:1], good=ids[1:2], bad_labels=["blurry"])
            info["note"] = f"{marked['bad']} bad, {marked['good']} good"

    def step_evolve(self) -> None:
        crafter = self.crafter
        with step("evolve") as info:
            result = crafter.evolve(
                classes=[crafter.classes[0]],
                population=2,
                generations=1,
                batch=1,
                steps=self.args.steps,
                test_negatives=False,  # its with/without measurement is max(16, 4 x batch) images x 2
                progress=False,
            )
            info["note"] = f"{len(result.prompts) if hasattr(result, 'prompts') else ''} prompts"

    def step_probe(self) -> None:
        crafter = self.crafter
        with step("probe student") as info:
            crafter.train_student(kind="probe", progress=False)
            info["note"] = f"test accuracy {crafter.evaluate(self.test)['accuracy']:.2f}"

    def step_gap(self) -> None:
        crafter = self.crafter
        with step("GAP step") as info:
            gap_ids = crafter.adversarial(
                target="a photo of an object on a beach",
                steps=1,
                per_class=1,
                classes=[crafter.classes[0]],
                sampler_steps=1,
                final_steps=self.args.steps,
                batch=1,
                progress=False,
            )
            info["note"] = f"{len(gap_ids)} image(s), 1 token step at batch 1, 1 sampler step"

    def step_ratio(self) -> None:
        crafter = self.crafter
        with step("crafter vs bare rounds"):  # before the view exists: its refreshes would run in these rounds
            bare_vs_crafter(crafter, self.args)

    def step_view(self) -> None:
        crafter = self.crafter
        with step("widget view") as info:
            view = CrafterView(crafter)
            view.wait(timeout=600)
            info["note"] = f"{len(view.ids)} images"
        with step("thumbnails, one page") as info:
            info["note"] = thumbnail_page(view)[1]

    def step_export(self) -> None:
        crafter = self.crafter
        with step("export") as info:
            out = crafter.export(self.work / "export", overwrite=True)
            info["note"] = f"{sum(1 for _ in out.rglob('*.png'))} PNGs"


def the_loop(cache: Path, work: Path, args: argparse.Namespace) -> None:
    """Import, first map, class and caption rounds, feedback, evolve, probe student, GAP, view, export."""
    loop = Loop(cache, work, args)
    try:
        for name in args.loop_steps:
            getattr(loop, f"step_{name}")()
    finally:
        loop.close()


if __name__ == "__main__":
    main()

"""The round runner: the one path from a plan to stored generated images.

Every kind of round (class, caption, perturb, custom, evolved, GAP) and `regenerate` go through
here: plan (a validated `RoundSpec` -> `GenerationRequest`s with seeds from `round_seed`) ->
`Job` -> images -> flag (NaN / black / off-class) + embed -> store. `store_generated` is the only
function in the package that writes generated rows, and `generated_row` is their one schema.
Prompt evolution's prompts.json and GAP's token / mask files are written here too; the loop
algorithms (loop/evolution.py, loop/gap.py) only compute.

Execution seam (for other backends, e.g. Ray): images are produced by one narrow call,

    backend(generator, requests, sources, settings) -> Iterator[BatchResult]

`requests` is one group of `GenerationRequest`s that can share a pipeline call (same mode,
strength and perturbation; see `group_requests`), `sources` their parent images (image-to-image)
or None, `settings` a `RenderSettings` (steps, guidance, batch size, cancel event, progress
callback). Each yielded `BatchResult` names the request indices it covers (`indices`), their
images and flags, in any order of batches; a batch must be complete (all its images) when
yielded. The default is `local_backend` (the generator in this process); pass another to
`RoundRunner(host, backend=...)` or set `crafter.rounds_runner.backend`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, Union

import numpy as np
import pandas as pd
from PIL import Image

from .. import limits
from ..data.images import image_hash
from ..data.files import atomic_write_bytes, slug
from ..data.store import DamagedFileError, SampleStore
from ..loop.class_filter import ClassFilter
from ..loop.strategies import GenerationRequest, StrategyError, build_requests, check_classes, group_requests
from ..models.bundle import MissingModelError, Models
from ..models.generator import BatchResult
from . import map_view
from .jobs import Cancel, Job, JobContext, stop_check, tqdm_listener
from ..seeds import image_seed, round_seed
from .round_spec import RoundSpec, RoundSpecError

if TYPE_CHECKING:
    from ..loop.evolution import EvolutionResult, Genome
    from ..loop.gap import GapConfig, GapResult
    from ..loop.student import Student
    from ..models.embedder import Embedder
    from ..models.generator import Generator

#: GAP source images: "train" (each class's real train images) or {class: [sample ids]}
Sources = Union[str, Mapping[str, Sequence[str]], None]
#: GAP object masks: "plain-background", a function image -> mask, or {sample id: mask}
Masks = Union[str, Callable[[Image.Image], np.ndarray], Mapping[str, np.ndarray], None]
Progress = Union[bool, Callable[[int, int], None]]

__all__ = [
    "RoundRunner",
    "RoundHost",
    "RenderSettings",
    "ImageBackend",
    "local_backend",
    "store_generated",
    "generated_row",
    "gap_round",
    "evolve_store",
    "image_fn",
    "JobRunningError",
    "FLAG_REASONS",
]

PROMPTS_FILE = "prompts.json"
_T = TypeVar("_T")

FLAG_REASONS = {
    "nan": "the pipeline produced NaN pixels (often fp16 overflow in the VAE): try float32, another seed or fewer steps",
    "black": "the image is all black (a failed decode or the safety checker): try another seed or prompt",
    "nsfw": "the pipeline's safety checker blanked this image",
}


class JobRunningError(RuntimeError):
    """A generation job is already running; wait for it or cancel it first."""


# ---- the execution seam ----------------------------------------------------------------------------------
@dataclass
class RenderSettings:
    """What a backend needs besides the requests: the round's resolved sampler settings."""

    steps: int
    guidance: float
    batch_size: int
    cancel: Cancel = None
    progress: Callable[[float, int], None] | None = None  # (images done in this group, group size)


class ImageBackend(Protocol):
    def __call__(
        self,
        generator: "Generator",
        requests: Sequence[GenerationRequest],
        sources: Sequence[Image.Image] | None,
        settings: RenderSettings,
    ) -> Iterator[BatchResult]: ...


def local_backend(
    generator: "Generator",
    requests: Sequence[GenerationRequest],
    sources: Sequence[Image.Image] | None,
    settings: RenderSettings,
) -> Iterator[BatchResult]:
    """The default backend: the generator in this process, in full batches (see Generator.iter_batches)."""
    first = requests[0]
    img2img = sources is not None
    return generator.iter_batches(
        [r.prompt for r in requests],
        negative_prompts=[r.negative_prompt for r in requests],
        seeds=[r.seed for r in requests],
        steps=settings.steps,
        guidance=settings.guidance,
        images=sources,
        strength=first.strength if img2img else 0.5,
        latent_perturbation=first.latent_perturbation if img2img else 0.0,
        batch_size=settings.batch_size,
        cancel=settings.cancel,
        progress=settings.progress,
    )


# ---- the one writer of generated rows ----------------------------------------------------------------------
def generated_row(
    r: GenerationRequest,
    *,
    round: int,
    steps: int,
    guidance: float,
    model: str,
    scheduler: str,
    guidance_min_sigma: float | None,
    flag: str = "",
    flag_reason: str = "",
    batch_id: str = "",
    batch_index: int = 0,
) -> dict[str, object]:
    """The row schema of every generated image (all strategies, GAP included)."""
    return {
        "label": r.label,
        "split": "generated",
        "source": "generated",
        "prompt": r.prompt,
        "negative_prompt": r.negative_prompt,
        "seed": int(r.seed),
        "steps": int(steps),
        "guidance": float(guidance),
        "strength": r.strength if r.parent_id else math.nan,
        "parent_id": r.parent_id,
        "round": int(round),
        "strategy": r.strategy,
        "model": model,
        "caption": r.caption,
        "flag": flag,
        "flag_reason": flag_reason,
        "latent_perturbation": float(r.latent_perturbation),
        "scheduler": scheduler,
        "guidance_min_sigma": math.nan if guidance_min_sigma is None else float(guidance_min_sigma),
        "batch_id": batch_id,
        "batch_index": int(batch_index),
        "embeddings_file": str(r.extra.get("embeddings_file", "")),
        "mask_file": str(r.extra.get("mask_file", "")),
    }


def store_generated(
    store: SampleStore,
    images: list[Image.Image],
    requests: Sequence[GenerationRequest],
    flags: Sequence[str],
    *,
    round: int,
    steps: int,
    guidance: float,
    model: str,
    scheduler: str = "",
    guidance_min_sigma: float | None = None,
    embedder: "Embedder | None" = None,
    class_filter: ClassFilter | None = None,
    batch_id: str = "",
) -> list[str]:
    """Flag (NaN / black / off-class), embed and store one finished batch in one atomic commit.

    The batch's composition (batch_id + batch_index) is part of the provenance: CPU and GPU
    kernels may pick other algorithms for other batch sizes, so an image is only guaranteed
    bit-exact when its whole batch is replayed (what `regenerate` does).
    """
    flags = list(flags) or [""] * len(images)
    reasons = [FLAG_REASONS.get(f, "") for f in flags]
    emb = None
    if embedder is not None:
        emb = embedder.embed_images(images)
        if class_filter is not None:
            for k, (flag, why) in enumerate(class_filter.check(emb, [r.label for r in requests])):
                if flag and not flags[k]:
                    flags[k], reasons[k] = flag, why
    rows = [
        generated_row(
            r,
            round=round,
            steps=steps,
            guidance=guidance,
            model=model,
            scheduler=scheduler,
            guidance_min_sigma=guidance_min_sigma,
            flag=f,
            flag_reason=why,
            batch_id=batch_id,
            batch_index=k,
        )
        for k, (r, f, why) in enumerate(zip(requests, flags, reasons))
    ]
    ids = store.add(images, rows)
    if emb is not None and embedder is not None:
        store.put_embeddings([image_hash(im) for im in images], embedder.name, emb)
    return ids


def _scheduler_name(generator: "Generator") -> str:
    return type(getattr(getattr(generator, "pipe", None), "scheduler", None)).__name__


# ---- what the runner needs from the controller ----------------------------------------------------------------
class RoundHost(Protocol):
    """The controller as the runner sees it (DataCrafter implements it)."""

    store: SampleStore
    models: Models
    classes: list[str]
    batch_size: int
    filter_mode: str
    job: Job | None

    def embeddings(self, ids: Sequence[str] | None = None) -> np.ndarray: ...
    def _check_ids(self, ids: Iterable[str], what: str = "ids") -> list[str]: ...
    def _emit(self, event: str, payload: object) -> None: ...


class RoundRunner:
    """Runs rounds for one controller: plan -> Job -> backend -> flag + embed -> store (see module docstring)."""

    def __init__(self, host: RoundHost, backend: ImageBackend = local_backend) -> None:
        self.host = host
        self.backend = backend
        self._filter_cache: tuple[tuple, ClassFilter] | None = None
        self._warned_filter = False
        self.last_gap_results: dict[str, GapResult] = {}  # the tokens of the last GAP round, per class

    @property
    def store(self) -> SampleStore:
        return self.host.store

    # ---- rounds.json -----------------------------------------------------------------------------------
    @property
    def rounds(self) -> list[dict[str, Any]]:
        return list(self.store.read_json("rounds.json", []) or [])

    def next_round(self, samples: pd.DataFrame | None = None) -> int:
        s = self.store.samples if samples is None else samples
        last = int(s["round"].max()) if len(s) else 0
        logged = max([int(r.get("round", 0)) for r in self.rounds] or [0])
        return max(last, logged) + 1

    def log_round(self, entry: dict[str, Any]) -> None:
        rounds = [r for r in self.rounds if int(r.get("round", -1)) != int(entry["round"])]
        rounds.append(entry)
        rounds.sort(key=lambda r: int(r.get("round", 0)))
        self.store.write_json("rounds.json", rounds)

    def mark_interrupted(self) -> list[dict[str, Any]]:
        """Mark rounds still "running" as "interrupted", with the number of images that were stored.

        Only a writer calls this (when a project opens): it holds the project's write lock, so no live
        process can be running one of these rounds. Returns the entries that were changed."""
        if self.store.readonly:
            return []
        try:
            rounds = self.rounds
        except DamagedFileError:
            return []  # reported with its fix where the rounds are used
        stale = [r for r in rounds if isinstance(r, dict) and r.get("status") == "running"]
        if not stale:
            return []
        s = self.store.samples
        counts = s.loc[s["source"] == "generated", "round"].value_counts()
        now = time.time()
        for entry in stale:
            stored = int(counts.get(int(entry.get("round", -1)), 0))
            entry.update(status="interrupted", stored=stored, interrupted_found=now)
        self.store.write_json("rounds.json", rounds)
        return stale

    def _finish_round(self, rnd: int, status: str, stored: int) -> None:
        entry: dict[str, Any] = next((r for r in self.rounds if int(r.get("round", -1)) == rnd), {"round": rnd})
        entry.update(status=status, stored=stored, finished=time.time())
        self.log_round(entry)

    def _check_idle(self) -> None:
        job = self.host.job
        if job is not None and job.running:
            raise JobRunningError("a generation job is still running: crafter.job.wait() or crafter.job.cancel() first")

    # ---- prompts.json: prompt evolution's result and the map's prompt edits (this runner is its writer) ----
    def prompts_doc(self) -> dict[str, object]:
        """The project's prompts.json document ({} before the first evolution or edit)."""
        return dict(self.store.read_json(PROMPTS_FILE, {}) or {})

    def edit_prompts(self, edit: Callable[[dict[str, object]], tuple[dict[str, object], _T]]) -> _T:
        """Apply a prompt edit (map_view.set_prompt / accept_prompt / revert_prompt: document in,
        (new document, result) out) to prompts.json and return its result."""
        doc, result = edit(self.prompts_doc())
        self.store.write_json(PROMPTS_FILE, doc)
        return result

    # ---- planning --------------------------------------------------------------------------------------
    def evolved_prompts(self, classes: Sequence[str] | None) -> tuple[dict[str, list[str]], dict[str, str]]:
        """The prompts and negative prompts prompt evolution kept in prompts.json, per class that has one
        (a rebalanced class has a mixture: its images cycle through the list)."""
        use = check_classes(classes, self.host.classes)
        entries = {c: e for c, e in map_view.prompts(self.prompts_doc(), use).items() if e["current"]}
        if not entries:
            raise StrategyError(
                "no evolved prompts yet: mark images with crafter.feedback(...) and run crafter.evolve() first"
            )
        return (
            {c: list(e["mixture"]) or [e["current"]] for c, e in entries.items()},
            {c: e["negative_prompt"] for c, e in entries.items()},
        )

    def plan(
        self,
        spec: RoundSpec,
        *,
        caption_now: bool = True,
        round_number: int | None = None,
    ) -> tuple[list[GenerationRequest], dict[str, Any], int]:
        """(requests, round entry, number of real images still to caption when not caption_now)."""
        host = self.host
        strategies = list(spec.strategies)
        use = check_classes(None if spec.classes is None else list(spec.classes), host.classes)
        prompts: Any = spec.prompts
        negatives: Any = spec.negative_prompts
        if "evolved" in strategies:
            if len(strategies) > 1 or prompts is not None:
                raise RoundSpecError(
                    "strategy='evolved' takes its prompts from prompts.json: run it alone, without prompts="
                )
            prompts, evolved_negs = self.evolved_prompts(use)
            use = [c for c in use if c in prompts]
            negatives = evolved_negs if negatives is None else negatives
        limits.check_round(images=spec.per_class * len(strategies) * len(use))  # before any request is built
        s = self.store.samples  # one copy of the table for the whole plan
        rnd = round_number or self.next_round(s)
        base = round_seed(rnd, spec.seed)
        real = s[(s["source"] == "real") & (s["split"] == "train") & s["label"].isin(use)]
        captions: dict[str, str] = {}
        uncaptioned = 0
        if any(x in ("caption", "perturb") for x in strategies):
            captions = self._captions(real, required="caption" in strategies, run=caption_now)
            uncaptioned = sum(1 for c in captions.values() if not c.strip()) if host.models.has("captioner") else 0
        requests: list[GenerationRequest] = []
        for strat in strategies:
            kw: dict[str, Any] = {}
            if spec.caption_template:
                kw["caption_template"] = spec.caption_template
            requests += build_requests(
                strat,
                classes=use,
                per_class=spec.per_class,
                seed=base + len(requests),
                real=real[["id", "label", "caption"]],
                captions=captions,
                prompts=prompts,
                negative_prompts=negatives,
                strength=spec.strength,
                latent_perturbation=spec.latent_perturbation,
                **kw,
            )
        spec.check_seeds(rnd, len(requests))
        info = {**spec.to_dict(), "round": rnd, "classes": use, "seed": base}
        return requests, info, uncaptioned

    def _captions(self, real: pd.DataFrame, required: bool, run: bool = True) -> dict[str, str]:
        """Captions of the real rows: stored ones first, else the captioner (stored for next time).

        run=False only checks that missing captions can be made (and leaves them empty)."""
        caps = {str(i): str(c or "") for i, c in zip(real["id"], real["caption"])}
        missing = [i for i, c in caps.items() if not c.strip()]
        if missing:
            if not self.host.models.has("captioner"):
                if required:
                    raise MissingModelError(
                        f"strategy='caption' needs captions, and {len(missing)} real image(s) have none and no captioner "
                        "was given: pass captioner=... to dc.Models.stable_diffusion, use dc.starter.models(), give the "
                        "dataset captions, or use strategy='class'"
                    )
                return caps
            if not run:
                return caps
            # chunk by chunk through the project's backend (workers on a Ray cluster), stored as they arrive
            backend = getattr(self.host, "backend", None)
            chunks = [missing[k : k + 64] for k in range(0, len(missing), 64)]
            images = ([self.store.image(i) for i in chunk] for chunk in chunks)
            results = (
                backend.caption_images(self.host.models, images)
                if backend is not None
                else ([str(c) for c in self.host.models.captioner(im)] for im in images)
            )
            for chunk, new in zip(chunks, results):
                self.store.update(chunk, caption=list(new))
                caps.update(zip(chunk, new))
        return caps

    # ---- running -----------------------------------------------------------------------------------------
    def generate(
        self, spec: RoundSpec, *, background: bool = False, progress: bool = True, backend: ImageBackend | None = None
    ) -> list[str] | Job:
        """Plan and run one round from a spec (what crafter.generate does after validating its arguments)."""
        self._check_idle()
        self.host.models.require("generator", "crafter.generate()")
        # In the background, captioning (a model call per real image) runs in the job too; the
        # plan made here without it already validates every input, so errors still come at once.
        requests, info, uncaptioned = self.plan(spec, caption_now=not background)
        prepare = None
        if uncaptioned:

            def prepare(ctx: JobContext) -> list[GenerationRequest]:
                ctx.report(0, len(requests), f"captioning {uncaptioned} real image(s)")
                return self.plan(spec, caption_now=True, round_number=info["round"])[0]

        return self.run_requests(
            requests,
            steps=spec.steps,
            guidance=spec.guidance,
            filter=spec.filter,
            background=background,
            batch_size=spec.batch_size,
            progress=progress,
            info=info,
            prepare=prepare,
            backend=backend,
        )

    def run_requests(
        self,
        requests: Sequence[GenerationRequest],
        *,
        steps: int | None = None,
        guidance: float | None = None,
        filter: bool = True,
        background: bool = False,
        batch_size: int | None = None,
        progress: bool = True,
        info: Mapping[str, object] | None = None,
        prepare: Callable[[JobContext], Sequence[GenerationRequest]] | None = None,
        backend: ImageBackend | None = None,
    ) -> list[str] | Job:
        """Run prepared requests as one round; `prepare`, if given, runs first inside the job and
        returns the final requests (same count and seeds, e.g. with captions filled in)."""
        self._check_idle()
        host = self.host
        gen = host.models.require("generator", "generating images")
        requests = list(requests)
        if not requests:
            raise StrategyError("no generation requests: ask for at least one image")
        for r in requests:
            if r.label not in host.classes:
                raise StrategyError(f"unknown class {r.label!r}: the project's classes are {host.classes}")
            if not str(r.prompt).strip():
                raise StrategyError(f"empty prompt for class {r.label!r}: give every request a non-empty prompt")
            if r.parent_id:
                host._check_ids([r.parent_id], "parent ids")
        self._warn_long_prompts(gen, requests)
        info = dict(info or {})
        rnd = int(str(info.get("round") or self.next_round()))
        steps = int(steps or gen.default_steps)
        guidance = float(gen.default_guidance if guidance is None else guidance)
        bs = int(batch_size or host.batch_size)
        res = int(getattr(gen, "resolution", 512))
        limits.check_round(steps=steps, batch_size=bs, images=len(requests))
        limits.check("resolution", res, "the generator's resolution")
        limits.note_memory(
            f"round {rnd} ({len(requests)} images at {res}px, batches of {bs})",
            limits.estimate_round_mb(len(requests), bs, res),
        )
        use = backend or self.backend  # this round's image seam (Ray, ...) or the runner's
        entry = {
            **info,
            "round": rnd,
            "requested": len(requests),
            "steps": steps,
            "guidance": guidance,
            "batch_size": bs,
            "model": gen.name,
            "filter": bool(filter),
            "status": "running",
            "started": time.time(),
            "stored": 0,
            "backend": use.config() if hasattr(use, "config") else {"kind": "local"},
        }
        self.log_round(entry)

        def work(ctx: JobContext) -> list[str]:
            final = list(prepare(ctx)) if prepare is not None else requests
            return self._generate_round(final, rnd, steps, guidance, filter, bs, ctx, use)

        return self._run_job(work, len(requests), rnd, background=background, progress=progress)

    def _run_job(
        self, work: Callable[[JobContext], list[str]], total: int, rnd: int, *, background: bool, progress: bool
    ) -> list[str] | Job:
        job = Job(work, total=total, description=f"round {rnd}")
        job.on_progress(lambda j: self.host._emit("progress", j))
        self.host.job = job
        if background:
            return job.start()
        if progress:
            job.on_progress(tqdm_listener(total, f"generating round {rnd}"))
        return job.run() or []

    def _warn_long_prompts(self, gen: "Generator", requests: Sequence[GenerationRequest]) -> None:
        """Prompts longer than the text encoder reads are stored whole; say once that the model sees a prefix."""
        tok = getattr(getattr(gen, "pipe", None), "tokenizer", None)
        limit = int(getattr(tok, "model_max_length", 0) or 0)
        if tok is None or not 0 < limit < 100_000:
            return
        long = [
            r
            for r in {r.prompt: r for r in requests}.values()
            if len(r.prompt) > limit and len(tok(r.prompt, truncation=False)["input_ids"]) > limit
        ]
        if long:
            warnings.warn(
                f"{len(long)} prompt(s) are longer than the {limit} tokens the text encoder reads (the first, "
                f"for class {long[0].label!r}, has {len(long[0].prompt)} characters): the model sees only their "
                "beginning; the rows store them whole",
                UserWarning,
                stacklevel=4,
            )

    def _generate_round(
        self,
        requests: list[GenerationRequest],
        rnd: int,
        steps: int,
        guidance: float,
        use_filter: bool,
        batch_size: int,
        ctx: JobContext,
        backend: ImageBackend | None = None,
    ) -> list[str]:
        """Generate group by group, batch by batch; each finished batch is stored by a writer thread
        while the next batch is being generated (PNG encoding, fsync, embeddings and the class filter
        overlap with the diffusion model). At most one batch waits to be stored; whatever happens,
        a batch that finished generating is stored before this returns."""
        host = self.host
        gen = host.models.generator
        ids: list[str] = []
        status = "failed"
        parents: dict[str, Image.Image] = {}
        flt = self.class_filter(rnd) if use_filter else None
        embedder = host.models.embedder if host.models.has("embedder") else None
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datacrafter-store")
        queue: list[Future] = []  # submitted to the writer, in order
        collected: set[Future] = set()
        generated = 0
        common = dict(
            round=rnd,
            steps=steps,
            guidance=guidance,
            model=gen.name,
            scheduler=_scheduler_name(gen),
            guidance_min_sigma=getattr(gen, "guidance_min_sigma", None),
            embedder=embedder,
            class_filter=flt,
        )

        def collect(future: Future) -> None:
            if future in collected:
                return
            new = future.result()
            collected.add(future)
            ids.extend(new)
            ctx.keep(list(ids))
            host._emit("samples", new)

        def drain(keep: int) -> None:
            while len(queue) > keep:
                collect(queue[0])
                queue.pop(0)

        try:
            for gi, group in enumerate(group_requests(requests)):
                if ctx.cancelled():
                    break
                reqs = [requests[i] for i in group]
                sources = None
                if reqs[0].is_img2img:
                    for r in reqs:
                        if r.parent_id not in parents:
                            parents[r.parent_id] = self.store.image(r.parent_id)
                    sources = [parents[r.parent_id] for r in reqs]
                settings = RenderSettings(
                    steps=steps,
                    guidance=guidance,
                    batch_size=batch_size,
                    cancel=ctx.cancel_event,
                    progress=functools.partial(_report_from, ctx, generated, len(requests)),
                )
                for batch in (backend or self.backend)(gen, reqs, sources, settings):
                    generated += len(batch.indices)
                    queue.append(
                        writer.submit(
                            store_generated,
                            self.store,
                            batch.images,
                            [reqs[i] for i in batch.indices],
                            batch.flags,
                            batch_id=f"{rnd}-{gi}-{group[batch.indices[0]]}",
                            **common,
                        )
                    )
                    drain(keep=1)  # the batch before this one must be stored by now (it had a batch's time)
            drain(keep=0)
            status = "cancelled" if ctx.cancelled() and len(ids) < len(requests) else "done"
            return ids
        except KeyboardInterrupt:  # Ctrl-C in blocking mode: a cancel, finished batches stay
            status = "cancelled"
            raise
        finally:
            writer.shutdown(wait=True)  # interrupted or failed: finished batches are still stored
            for future in queue:
                try:
                    collect(future)
                except Exception:  # noqa: BLE001 - the error already in flight is the one to report
                    pass
            self._finish_round(rnd, status, len(ids))

    def class_filter(self, rnd: int) -> ClassFilter | None:
        """The round's class filter, fitted on the real training images (cached while they stay the same)."""
        host = self.host
        if not host.models.has("embedder"):
            if not self._warned_filter:
                self._warned_filter = True
                warnings.warn(
                    "the class filter needs an embedder; none was given, so images are not checked",
                    RuntimeWarning,
                    stacklevel=5,
                )
            return None
        emb = host.models.embedder
        s = self.store.samples
        real = s[(s["source"] == "real") & (s["split"] == "train") & (s["feedback"] != "removed")]
        key = (emb.name, host.filter_mode, tuple(real["id"]))
        if self._filter_cache is None or self._filter_cache[0] != key:
            flt = ClassFilter(emb, host.classes, mode=host.filter_mode)
            if len(real):
                flt.fit(host.embeddings(real["id"].tolist()), real["label"].tolist())
            self._filter_cache = (key, flt)
        flt = self._filter_cache[1]
        entry = next((r for r in self.rounds if int(r.get("round", -1)) == rnd), None)
        if entry is not None and flt.report:
            entry["class_filter"] = flt.report
            self.log_round(entry)
        return flt

    # ---- prompt evolution ------------------------------------------------------------------------------------
    def evolve(
        self,
        *,
        vocabulary: Sequence[str] | None,
        compose: "Callable[[Genome], str] | None",
        seed: int | None,
        batch: int,
        progress: bool,
        cancel: Cancel,
        steps: int | None = None,
        **options: Any,
    ) -> "EvolutionResult":
        """Evolve prompts from the feedback (loop/evolution.py) and keep the result in prompts.json.

        Candidate batches are rendered through this runner's backend with seeds from the seed policy
        of the round the evolved prompts will generate in; nothing is stored but prompts.json."""
        host = self.host
        limits.check("steps", steps)
        limits.check("batch_size", batch, "batch")
        limits.check("evolve_population", options.get("population"), "population")
        limits.check("evolve_generations", options.get("generations"), "generations")
        gen = host.models.require("generator", "crafter.evolve()")
        emb = host.models.require("embedder", "crafter.evolve()")
        rnd = self.next_round()
        return evolve_store(
            self.store,
            classes=host.classes,
            generate=self.image_fn(gen, steps=steps),
            embedder=emb,
            vocabulary=vocabulary,
            compose=compose,
            seed=round_seed(rnd, seed),
            batch=batch,
            progress=progress,
            should_stop=stop_check(cancel),
            round=rnd - 1,
            **options,
        )

    def image_fn(
        self,
        gen: "Generator",
        *,
        steps: int | None = None,
        guidance: float | None = None,
    ) -> Callable[[list[str], list[str], list[int]], list[Image.Image]]:
        """`generate(prompts, negative_prompts, seeds) -> images` over this runner's backend (not stored)."""
        return image_fn(gen, backend=self.backend, steps=steps, guidance=guidance, batch_size=self.host.batch_size)

    # ---- GAP -------------------------------------------------------------------------------------------------
    def gap(
        self,
        student: "Student",
        classes: Sequence[str] | None,
        *,
        target: str | None,
        target_images: Sequence[Image.Image] | None,
        per_class: int,
        seed: int | None,
        config: "GapConfig",
        shared: bool,
        sources: Sources,
        masks: Masks,
        progress: bool,
        cancel: Cancel,
    ) -> list[str]:
        """A GAP round as a Job: learn tokens per class (loop/gap.py), store the images through store_generated."""
        self._check_idle()
        host = self.host
        gen = host.models.require("generator", "crafter.adversarial()")
        use = check_classes(classes, host.classes)
        per_class = int(RoundSpec(strategies=("class",), per_class=per_class, seed=seed).validated().per_class)
        limits.check("gap_steps", config.steps, "steps")
        limits.check("gap_tokens", config.n_tokens, "n_tokens")
        limits.check("steps", max(config.sampler_steps, config.final_steps), "sampler_steps / final_steps")
        limits.check("batch_size", config.batch, "batch")
        limits.check_round(images=per_class * len(use))
        rnd = self.next_round()
        base = RoundSpec(strategies=("class",), seed=seed).validated().check_seeds(rnd, per_class * len(use))
        entry = {
            "round": rnd,
            "strategies": ["gap"],
            "per_class": per_class,
            "classes": use,
            "target": target or "",
            "seed": base,
            "requested": per_class * len(use),
            "steps": int(config.final_steps),
            "guidance": float(config.guidance),
            "model": gen.name,
            "status": "running",
            "started": time.time(),
            "stored": 0,
        }
        self.log_round(entry)
        embedder = host.models.embedder if host.models.has("embedder") else None
        results: dict[str, GapResult] = {}

        def work(ctx: JobContext) -> list[str]:
            ids: list[str] = []
            status = "failed"
            try:
                new, _ = gap_round(
                    self.store,
                    gen,
                    student,
                    use,
                    target=target,
                    target_images=target_images,
                    embedder=embedder,
                    per_class=per_class,
                    round=rnd,
                    seed=base,
                    config=config,
                    progress=progress,
                    cancel=stop_check(cancel, ctx),
                    shared=shared,
                    sources=sources,
                    masks=masks,
                    results=results,
                    on_stored=functools.partial(_stored, ctx, ids, host),
                )
                ids += new
                status = "cancelled" if ctx.cancelled() and len(ids) < per_class * len(use) else "done"
                return ids
            finally:
                self._finish_round(rnd, status, len(ids))

        out = self._run_job(work, per_class * len(use), rnd, background=False, progress=False)
        self.last_gap_results = results
        return list(out) if isinstance(out, list) else []

    # ---- regeneration ------------------------------------------------------------------------------------------
    def regenerate(self, sample_id: str, *, alone: bool = False) -> Image.Image:
        """Regenerate a generated image from its stored provenance (see DataCrafter.regenerate)."""
        host = self.host
        (sample_id,) = host._check_ids([sample_id])
        row = self.store.row(sample_id)
        if row["source"] != "generated":
            raise ValueError(f"{sample_id} is a real image: only generated samples can be regenerated")
        gen = host.models.require("generator", f"crafter.regenerate({sample_id!r})")
        if str(row["model"]) != gen.name:
            raise ValueError(
                f"{sample_id} was generated with model {row['model']!r}, but the current generator is {gen.name!r}: "
                f"open the project with models that load {row['model']!r} to regenerate it"
            )
        scheduler = row.get("scheduler")
        current = _scheduler_name(gen)
        if isinstance(scheduler, str) and scheduler and scheduler != current:
            raise ValueError(
                f"{sample_id} was generated with scheduler {scheduler}, the generator now uses {current}: "
                f"set it back (generator.set_scheduler / scheduler=...) to regenerate"
            )
        limits.check("steps", row["steps"], f"sample {sample_id}: its stored steps")
        tokens_file = row.get("embeddings_file")
        if isinstance(tokens_file, str) and tokens_file:
            return self._regenerate_gap(row, gen, alone)
        batch_id = row.get("batch_id")
        members = [row]
        if not alone and isinstance(batch_id, str) and batch_id:
            s = self.store.samples
            same = s[s["batch_id"] == batch_id].sort_values("batch_index")
            members = same.to_dict("records")
        position = next(k for k, m in enumerate(members) if m["id"] == sample_id)
        strength = float(row["strength"])
        img2img = not math.isnan(strength)
        lp = row.get("latent_perturbation", 0.0)
        lp = 0.0 if lp is None or (isinstance(lp, float) and math.isnan(lp)) else float(lp)
        # The guidance floor the image was made with (rows from before the column: the generator's own).
        floor = row.get("guidance_min_sigma", None)
        extra: dict[str, Any] = {}  # only for generators that have a floor (test doubles may not)
        if floor is not None and hasattr(gen, "guidance_min_sigma"):
            extra["guidance_min_sigma"] = None if math.isnan(float(floor)) else float(floor)
        out = gen(
            [str(m["prompt"]) for m in members],
            negative_prompt=[str(m["negative_prompt"]) for m in members],
            seed=[int(m["seed"]) for m in members],
            steps=int(row["steps"]),
            guidance=float(row["guidance"]),
            image=[self.store.image(str(m["parent_id"])) for m in members] if img2img else None,
            strength=strength if img2img else 0.5,
            latent_perturbation=lp if img2img else 0.0,
            batch_size=len(members),
            **extra,
        )
        return out[position]

    def _regenerate_gap(self, row: dict[str, Any], gen: "Generator", alone: bool) -> Image.Image:
        """GAP images: learned prompt tokens (safetensors in the project) + seed, replayed in the
        same call that made them (all seeds of that token file, in order) unless `alone`."""
        from ..loop.gap import generate_with_tokens, load_mask, load_tokens

        if alone:
            members, position = [row], 0
        else:
            s = self.store.samples
            same = s[s["embeddings_file"] == row["embeddings_file"]]
            members = same.to_dict("records")
            position = same["id"].tolist().index(row["id"])
        # Every path from the table is checked to lie inside the project before anything is read.
        tokens_path = self.store.project_file(row["embeddings_file"], f"sample {row['id']}: its embeddings_file")
        seeds = [int(m["seed"]) for m in members]
        # Masked / img2img GAP rows name their source (parent_id), strength and stored mask.
        parent = row.get("parent_id")
        sources = masks = strength = None
        mask_file = row.get("mask_file")
        mask_paths = (
            [self.store.project_file(m["mask_file"], f"sample {m['id']}: its mask_file") for m in members]
            if isinstance(parent, str) and parent and isinstance(mask_file, str) and mask_file
            else None
        )
        tokens = load_tokens(tokens_path)
        if isinstance(parent, str) and parent:
            sources = [self.store.image(str(m["parent_id"])) for m in members]
            strength = float(row["strength"])
            if mask_paths is not None:
                masks = [load_mask(path) for path in mask_paths]
        out = generate_with_tokens(
            gen,
            tokens,
            seeds,
            steps=int(row["steps"]),
            guidance=float(row["guidance"]),
            negative_prompt=str(row["negative_prompt"]),
            sources=sources,
            masks=masks,
            strength=strength,
        )
        return out[position]


def image_fn(
    generator: "Generator",
    *,
    backend: ImageBackend = local_backend,
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int = 8,
) -> Callable[[list[str], list[str], list[int]], list[Image.Image]]:
    """Images without rows, through the same seam as rounds: prompt evolution's candidate batches."""

    def generate(prompts: list[str], negatives: list[str], seeds: list[int]) -> list[Image.Image]:
        reqs = [
            GenerationRequest(prompt=p, label="", seed=int(s), strategy="evolved", negative_prompt=n)
            for p, n, s in zip(prompts, negatives, seeds)
        ]
        settings = RenderSettings(
            steps=int(steps or generator.default_steps),
            guidance=float(generator.default_guidance if guidance is None else guidance),
            batch_size=int(batch_size),
        )
        out: dict[int, Image.Image] = {}
        for batch in backend(generator, reqs, None, settings):
            out.update(zip(batch.indices, batch.images))
        return [out[i] for i in sorted(out)]

    return generate


def _report_from(ctx: JobContext, offset: int, total: int, done: float, _group_total: int) -> None:
    """A group's progress (images done in the group) as the round's (images done in the round)."""
    ctx.report(offset + done, total)


def _stored(ctx: JobContext, ids: list[str], host: RoundHost, new: list[str]) -> None:
    """GAP stored a class's images: keep them as the job's partial result and tell the views."""
    ctx.keep(list(ids) + new)
    host._emit("samples", new)


# ---- store-level entry points (also used by benchmarks without a DataCrafter) -------------------------------
def evolve_store(
    store: SampleStore,
    *,
    classes: Sequence[str],
    generate: Callable[..., list[Image.Image]],
    embedder: "Embedder",
    vocabulary: Sequence[str] | None = None,
    round: int | None = None,
    **options: Any,
) -> "EvolutionResult":
    """Evolve the prompts from the store's feedback and merge the result into prompts.json (its only writer)."""
    from ..loop.evolution import apply_to_prompts_doc, current_prompts, evolve_prompts

    doc = store.read_json(PROMPTS_FILE, {}) or {}
    samples = store.samples
    if round is None:
        round = int(samples["round"].max()) if len(samples) else 0
    if "lassos" not in options:  # which images were lassoed together, without words (feedback.json)
        log = store.read_json("feedback.json", []) or []
        options["lassos"] = [e["bad"] for e in log if isinstance(e, dict) and e.get("bad") and not e.get("bad_labels")]
    result = evolve_prompts(
        samples,
        classes=classes,
        generate=generate,
        embedder=embedder,
        load_image=store.image,
        current=current_prompts(doc, classes),
        vocabulary=vocabulary,
        round=round,
        **options,
    )
    store.write_json(PROMPTS_FILE, apply_to_prompts_doc(doc, result))
    return result


def gap_round(
    store: SampleStore,
    generator: "Generator",
    student: "Student",
    classes: Sequence[str],
    *,
    target: str | None = None,
    target_images: Sequence[Image.Image] | None = None,
    embedder: "Embedder | None" = None,
    per_class: int = 10,
    round: int = 1,
    seed: int | None = None,
    config: "GapConfig | None" = None,
    progress: Progress = False,
    cancel: Cancel = None,
    shared: bool = False,
    sources: Sources = None,
    masks: Masks = None,
    results: dict[str, "GapResult"] | None = None,
    on_stored: Callable[[list[str]], object] | None = None,
    **overrides: Any,
) -> tuple[list[str], dict[str, "GapResult"]]:
    """Learn tokens per class, generate `per_class` final images each, store them (without a DataCrafter).

    Rows carry strategy "gap", the readable prompt, seed (the seed policy: round_seed(round, seed) + k),
    steps, guidance and `embeddings_file` (the learned tokens, relative to the project), so each
    can be regenerated. sources: None = text-to-image; "train" = the real train images of each
    class; or {class: [sample ids]}; final image j of a class starts from its source j mod n.
    masks (with sources): None = img2img only; "plain-background"; a callable image -> mask; or
    {sample id: mask}; stored as PNG under gap/masks/ (row: mask_file). Each class's tokens land in
    `results` (when given) and its stored ids go to `on_stored(ids)` as soon as they are stored, so a
    cancelled or failed round keeps the classes it finished.
    """
    from ..loop.gap import GapConfig, GapError, gap_images, mask_for

    config = config if config is not None else GapConfig()
    results = {} if results is None else results
    classes = [str(c) for c in classes]
    seed = round_seed(round, seed)
    if not classes:
        raise GapError("no classes given: pass the classes to generate GAP images for")
    if int(per_class) < 1:
        raise GapError(f"per_class={per_class}: ask for at least 1 image per class")
    per_class = int(per_class)
    base = Path(store.path)
    src_ids = _source_ids(store, classes, sources) if sources is not None else None
    if masks is not None and src_ids is None:
        raise GapError("masks need source images: pass sources='train' (or {class: [sample ids]}) too")
    src_images = {i: store.image(i) for ids_of_class in (src_ids or {}).values() for i in ids_of_class}
    src_masks = {i: mask_for(masks, i, im) for i, im in src_images.items()} if masks is not None else None
    mask_files = {i: _save_mask(base, i, m) for i, m in src_masks.items()} if src_masks is not None else {}
    seeds = {c: [image_seed(seed, ci * per_class + j) for j in range(per_class)] for ci, c in enumerate(classes)}
    ids: list[str] = []
    for label, res, images in gap_images(
        generator,
        student,
        classes,
        seeds=seeds,
        target=target,
        target_images=target_images,
        embedder=embedder,
        config=config,
        progress=progress,
        should_stop=stop_check(cancel),
        shared=shared,
        sources={c: [src_images[i] for i in src_ids[c]] for c in classes} if src_ids else None,
        masks={c: [src_masks[i] for i in src_ids[c]] for c in classes} if src_ids and src_masks is not None else None,
        **overrides,
    ):
        digest = hashlib.sha256(res.embeddings.numpy().tobytes()).hexdigest()[:12]
        rel = f"gap/gap-r{int(round):03d}-{slug(label)}-{digest}.safetensors"
        res.save(base / rel)
        res.file = rel
        results[label] = res
        parents = [src_ids[label][j % len(src_ids[label])] for j in range(per_class)] if src_ids else []
        reqs = [
            GenerationRequest(
                prompt=res.prompt,
                label=label,
                seed=s,
                strategy="gap",
                caption=target or "",
                parent_id=parents[j] if parents else "",
                strength=float(res.config.strength) if parents else math.nan,
                extra={"embeddings_file": rel, "mask_file": mask_files.get(parents[j], "") if parents else ""},
            )
            for j, s in enumerate(seeds[label])
        ]
        new = store_generated(
            store,
            images,
            reqs,
            [],
            round=round,
            steps=int(res.config.final_steps),
            guidance=float(res.config.guidance),
            model=res.model,
            scheduler=_scheduler_name(generator),
            embedder=embedder,
            batch_id=f"{round}-gap-{slug(label)}",
        )
        ids += new
        if on_stored is not None:
            on_stored(new)
    return ids, results


def _source_ids(
    store: SampleStore, classes: list[str], sources: str | Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """Sample ids of the source images per class, checked against the store."""
    from ..loop.gap import GapError

    s = store.samples
    if isinstance(sources, str):
        if sources != "train":
            raise GapError(
                f"sources={sources!r}: use 'train' (the real train images of each class) or {{class: [sample ids]}}"
            )
        real = s[(s["source"] == "real") & (s["split"] == "train")]
        out = {c: real.loc[real["label"] == c, "id"].astype(str).tolist() for c in classes}
    else:
        out = {c: [str(i) for i in sources.get(c, [])] for c in classes}
        known = set(s["id"].astype(str))
        missing = sorted({i for v in out.values() for i in v} - known)
        if missing:
            raise GapError(f"source ids {missing[:5]} are not in the project: pass ids from crafter.samples")
    empty = [c for c, v in out.items() if not v]
    if empty:
        raise GapError(
            f"no source images for class(es) {empty}: GAP with sources needs at least one real train "
            "image per class (or sources=None for text-to-image)"
        )
    return out


def _save_mask(base: Path, sample_id: str, mask: np.ndarray) -> str:
    """Store a mask as PNG (content-addressed, written atomically); returns its path relative to the project."""
    from ..loop.masks import mask_to_image

    buf = io.BytesIO()
    mask_to_image(mask).save(buf, format="PNG", optimize=False, compress_level=6)  # 8-bit L, no metadata
    data = buf.getvalue()
    rel = f"gap/masks/{slug(sample_id)}-{hashlib.sha256(data).hexdigest()[:12]}.png"
    if not (base / rel).is_file():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(base / rel, data)
    return rel

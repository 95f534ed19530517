"""The round runner: a project's one path from a round's spec to stored images.

Built from (project, models, backend, embeddings); it never sees the `DataCrafter` facade. A
round reads top to bottom in `generate` (check, plan, record, run) and `_run` (caption, load
sources, generate through the backend, store batch by batch, finish). Prompt evolution and GAP
rounds (`evolve`, `gap`) plan and record the same way and render through the same backend.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pandas as pd
from PIL import Image

from .. import limits
from ..loop.class_filter import ClassFilter
from ..loop.strategies import GenerationRequest, check_classes
from ..models.bundle import MissingModelError, Models
from ..seeds import round_seed
from . import rounds
from .backends import Backend, GeneratedBatch
from .embeddings import Embeddings
from .jobs import Cancel, Job, JobContext, stop_check, tqdm_listener
from .plan import RoundPlan, plan_gap, plan_round, source_images
from .project import Project
from .round_spec import RoundSpec
from .rows import scheduler_name, store_generated

if TYPE_CHECKING:
    from ..loop.evolution import EvolutionResult, Genome
    from ..loop.gap import GapConfig, GapResult
    from ..loop.student import Student
    from ..models.generator import Generator

__all__ = ["RoundRunner", "JobRunningError"]

CAPTION_CHUNK = 64  # real images per captioning call on the backend


class JobRunningError(RuntimeError):
    """A generation job is already running; wait for it or cancel it first."""


class RoundRunner:
    """Runs a project's rounds; `job` is the one running (or last) round."""

    def __init__(
        self,
        project: Project,
        models: Models,
        backend: Backend,
        embeddings: Embeddings,
        *,
        batch_size: int | None = None,
    ) -> None:
        self.project = project
        self.models = models
        self.backend = backend
        self.embeddings = embeddings
        self._batch_size = None if batch_size is None else int(batch_size)
        self.job: Job | None = None
        self.last_gap_results: dict[str, GapResult] = {}  # the tokens of the last GAP round, per class
        self._filter_cache: tuple[tuple[Any, ...], ClassFilter] | None = None
        self._warned_filter = False

    @property
    def store(self) -> Any:
        return self.project.store

    # ---- a round ---------------------------------------------------------------------------------
    def generate(self, spec: RoundSpec, *, progress: bool = True, backend: Backend | None = None) -> list[str]:
        """One round from a validated spec, blocking (tqdm progress; Ctrl-C cancels): the new ids."""
        job = self._prepare(spec, backend)
        if progress:
            job.on_progress(tqdm_listener(job.total, f"generating {job.description}"))
        return list(job.run() or [])

    def start(self, spec: RoundSpec, *, backend: Backend | None = None) -> Job:
        """One round from a validated spec in a background Job (started)."""
        return self._prepare(spec, backend).start()

    def _prepare(self, spec: RoundSpec, backend: Backend | None) -> Job:
        """A round up to its job: checked, planned and recorded as running."""
        # 1. one round at a time, and a generator to run it
        self._check_idle()
        gen = self.models.require("generator", "crafter.generate()")
        backend = backend or self.backend
        # 2. resolve the spec once: round number, seeds, steps, guidance, requests, rounds-log entry
        plan = plan_round(
            spec,
            round_number=self.project.rounds.next_round(),
            classes=self.project.classes,
            samples=self.store.samples,
            evolved=self.project.prompts.evolved,
            captions=self._known_captions,
            generator=gen,
            batch_size=self.batch_size,
            backend=backend.config(),
        )
        self._warn_long_prompts(gen, plan.requests)
        # 3. record it as running (a killed kernel leaves it "running": marked interrupted on open)
        self.project.rounds.log(plan.entry)
        # 4. its job: run blocking (generate) or started in the background (start)
        return self._job(lambda ctx: self._run(plan, backend, ctx), len(plan.requests), plan.round)

    def _run(self, plan: RoundPlan, backend: Backend, ctx: JobContext) -> list[str]:
        """The round's job; whatever happens, a batch that finished generating is stored."""
        writer = _BatchWriter(self, plan, ctx)
        try:
            # 1. caption the real images the requests start from that have none yet
            if plan.uncaptioned:
                ctx.report(0, len(plan.requests), f"captioning {len(plan.uncaptioned)} real image(s)")
                plan.with_captions(self._caption(plan.uncaptioned, backend))
            # 2. load each image-to-image source once
            sources = source_images(plan.requests, self.store.image)
            # 3. what every row shares, with the class filter fitted on the real training images
            writer.common = self._row_settings(plan)
            # 4. the backend batches and generates; each finished batch is stored while the next is made
            for batch in backend.generate(
                self.models,
                plan.image_requests(sources),
                batch_size=plan.batch_size,
                cancel=ctx.cancel_event,
                progress=lambda done, total: ctx.report(done, total),
            ):
                writer.submit(batch)
            writer.drain(keep=0)
            writer.status = "cancelled" if ctx.cancelled() and len(writer.ids) < len(plan.requests) else "done"
            return writer.ids
        except KeyboardInterrupt:  # Ctrl-C in blocking mode: a cancel, finished batches stay
            writer.status = "cancelled"
            raise
        finally:
            # 5. store what finished, and close the round's entry
            writer.close()
            self.project.rounds.finish(plan.round, writer.status, len(writer.ids))

    def _job(self, work: Callable[[JobContext], list[str]], total: int, rnd: int) -> Job:
        """The project's job for round `rnd`; the views follow its progress through the "progress" event."""
        job = Job(work, total=total, description=f"round {rnd}")
        job.on_progress(lambda j: self.project.events.emit("progress", j))
        self.job = job
        return job

    def _check_idle(self) -> None:
        if self.job is not None and self.job.running:
            raise JobRunningError("a generation job is still running: crafter.job.wait() or crafter.job.cancel() first")

    def _row_settings(self, plan: RoundPlan) -> dict[str, Any]:
        gen = self.models.generator
        return dict(
            round=plan.round,
            steps=plan.steps,
            guidance=plan.guidance,
            model=plan.model,
            scheduler=scheduler_name(gen),
            guidance_min_sigma=getattr(gen, "guidance_min_sigma", None),
            embedder=self.models.embedder if self.models.has("embedder") else None,
            class_filter=self.class_filter(plan.round) if plan.filter else None,
        )

    # ---- captions --------------------------------------------------------------------------------
    def _known_captions(self, real: pd.DataFrame, required: bool) -> tuple[dict[str, str], list[str]]:
        """The stored captions of the real rows, and the ids the captioner must still caption."""
        caps = {str(i): str(c or "") for i, c in zip(real["id"], real["caption"])}
        missing = [i for i, c in caps.items() if not c.strip()]
        if missing and not self.models.has("captioner"):
            if required:
                raise MissingModelError(
                    f"strategy='caption' needs captions, and {len(missing)} real image(s) have none and no captioner "
                    "was given: pass captioner=... to dc.Models.stable_diffusion, use dc.starter.models(), give the "
                    "dataset captions, or use strategy='class'"
                )
            return caps, []
        return caps, missing

    def _caption(self, ids: list[str], backend: Backend) -> dict[str, str]:
        """Caption real images through the backend, chunk by chunk, each chunk stored as it arrives."""
        chunks = [ids[k : k + CAPTION_CHUNK] for k in range(0, len(ids), CAPTION_CHUNK)]
        images = ([self.store.image(i) for i in chunk] for chunk in chunks)
        out: dict[str, str] = {}
        for chunk, new in zip(chunks, backend.caption_images(self.models, images)):
            self.store.update(chunk, caption=list(new))
            out.update(zip(chunk, new))
        return out

    def _warn_long_prompts(self, gen: Generator, requests: Sequence[GenerationRequest]) -> None:
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

    # ---- the class filter ------------------------------------------------------------------------
    def class_filter(self, rnd: int) -> ClassFilter | None:
        """The round's class filter, fitted on the real training images (cached while they stay the same)."""
        if not self.models.has("embedder"):
            if not self._warned_filter:
                self._warned_filter = True
                warnings.warn(
                    "the class filter needs an embedder; none was given, so images are not checked",
                    RuntimeWarning,
                    stacklevel=5,
                )
            return None
        emb = self.models.embedder
        s = self.store.samples
        real = s[(s["source"] == "real") & (s["split"] == "train") & (s["feedback"] != "removed")]
        key = (emb.name, self.project.filter_mode, tuple(real["id"]))
        if self._filter_cache is None or self._filter_cache[0] != key:
            flt = ClassFilter(emb, self.project.classes, mode=self.project.filter_mode)
            if len(real):
                flt.fit(self.embeddings(real["id"].tolist()), real["label"].tolist())
            self._filter_cache = (key, flt)
        flt = self._filter_cache[1]
        if flt.report:
            self.project.rounds.update(rnd, class_filter=flt.report)
        return flt

    @property
    def batch_size(self) -> int:
        """Images per pipeline call: the value set, else the generator's default (8 without one)."""
        if self._batch_size is not None:
            return self._batch_size
        return int(getattr(self.models.generator, "default_batch_size", 8) or 8)

    @batch_size.setter
    def batch_size(self, value: int | None) -> None:
        if value is not None and int(value) < 1:
            raise ValueError(f"batch_size={value} must be at least 1 (None: the generator's default)")
        self._batch_size = None if value is None else int(value)

    # ---- prompt evolution ------------------------------------------------------------------------
    def evolve(
        self,
        *,
        vocabulary: Sequence[str] | None,
        compose: Callable[[Genome], str] | None,
        seed: int | None,
        batch: int,
        progress: bool,
        cancel: Cancel,
        steps: int | None = None,
        **options: Any,
    ) -> EvolutionResult:
        """Evolve prompts from the feedback (loop/evolution.py) and keep the result in the prompt book.

        Candidate batches render through this runner's backend with the seeds of the round the
        evolved prompts will generate in; nothing is stored but prompts.json."""
        limits.check("steps", steps)
        limits.check("batch_size", batch, "batch")
        limits.check("evolve_population", options.get("population"), "population")
        limits.check("evolve_generations", options.get("generations"), "generations")
        self.models.require("generator", "crafter.evolve()")
        emb = self.models.require("embedder", "crafter.evolve()")
        rnd = self.project.rounds.next_round()
        options.setdefault("lassos", self.project.feedback.lassos())
        options.setdefault("render_batch", self.batch_size)
        return rounds.evolve_store(
            self.store,
            classes=self.project.classes,
            generate=rounds.image_fn(self.models, self.backend, steps=steps, batch_size=self.batch_size),
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

    # ---- GAP -------------------------------------------------------------------------------------
    def gap(
        self,
        student: Student,
        classes: Sequence[str] | None,
        *,
        target: str | Sequence[str] | Mapping[str, Sequence[str]] | None,
        target_images: Sequence[Image.Image] | None,
        per_class: int,
        seed: int | None,
        config: GapConfig,
        shared: bool,
        sources: rounds.Sources,
        masks: rounds.Masks,
        progress: bool,
        cancel: Cancel,
    ) -> list[str]:
        """A GAP round as a Job: learn tokens per class (loop/gap.py), store each class's images as it finishes."""
        # 1. one round at a time; 2. plan it (round, seeds, settings, entry); 3. record it as running
        self._check_idle()
        gen = self.models.require("generator", "crafter.adversarial()")
        use = check_classes(classes, self.project.classes)
        limits.check("gap_steps", config.steps, "steps")
        limits.check("gap_tokens", config.n_tokens, "n_tokens")
        limits.check("steps", max(config.sampler_steps, config.final_steps), "sampler_steps / final_steps")
        limits.check("batch_size", config.batch, "batch")
        plan = plan_gap(
            use,
            per_class=per_class,
            round_number=self.project.rounds.next_round(),
            seed=seed,
            steps=int(config.final_steps),
            guidance=float(config.guidance),
            model=gen.name,
            target=target,
        )
        self.project.rounds.log(plan.entry)
        embedder = self.models.embedder if self.models.has("embedder") else None
        results: dict[str, GapResult] = {}

        def work(ctx: JobContext) -> list[str]:
            # 4. learn each class's tokens and store its images (gap_round), keeping what finished
            ids: list[str] = []
            status = "failed"

            def stored(new: list[str]) -> None:
                ids.extend(new)
                ctx.keep(list(ids))
                self.project.events.emit("samples", new)

            try:
                rounds.gap_round(
                    self.store,
                    gen,
                    student,
                    use,
                    target=target,
                    target_images=target_images,
                    embedder=embedder,
                    per_class=int(plan.entry["per_class"]),
                    round=plan.round,
                    seed=plan.seed,
                    config=config,
                    progress=progress,
                    cancel=stop_check(cancel, ctx),
                    shared=shared,
                    sources=sources,
                    masks=masks,
                    results=results,
                    on_stored=stored,
                    plan=plan,
                )
                status = "cancelled" if ctx.cancelled() and len(ids) < plan.entry["requested"] else "done"
                return ids
            finally:
                # 5. close the round's entry
                self.project.rounds.finish(plan.round, status, len(ids))

        out = self._job(work, int(plan.entry["requested"]), plan.round).run()
        self.last_gap_results = results
        return list(out or [])

    # ---- regeneration ----------------------------------------------------------------------------
    def regenerate(self, sample_id: str, *, alone: bool = False) -> Image.Image:
        """Regenerate a generated image from its stored provenance (see DataCrafter.regenerate)."""
        (sample_id,) = self.project.check_ids([sample_id])
        gen = self.models.require("generator", f"crafter.regenerate({sample_id!r})")
        return rounds.regenerate(self.store, gen, sample_id, alone=alone)


class _BatchWriter:
    """Stores a round's finished batches on one writer thread while the next batch is generated (PNG
    encoding, fsync, embeddings and the class filter overlap with the diffusion model); at most one
    batch waits to be stored."""

    def __init__(self, runner: RoundRunner, plan: RoundPlan, ctx: JobContext) -> None:
        self.runner, self.plan, self.ctx = runner, plan, ctx
        self.ids: list[str] = []
        self.status = "failed"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datacrafter-store")
        self._queue: list[Future[list[str]]] = []
        self._collected: set[Future[list[str]]] = set()
        self.common: dict[str, Any] = {}  # what every row of the round shares (RoundRunner._row_settings)

    def submit(self, batch: GeneratedBatch) -> None:
        future = self._pool.submit(
            store_generated,
            self.runner.store,
            batch.images,
            [self.plan.requests[i] for i in batch.indices],
            batch.flags,
            batch_id=self.plan.batch_id(batch),
            **self.common,
        )
        self._queue.append(future)
        self.drain(keep=1)  # the batch before this one must be stored by now (it had a batch's time)

    def drain(self, keep: int) -> None:
        while len(self._queue) > keep:
            self._collect(self._queue.pop(0))

    def _collect(self, future: Future[list[str]]) -> None:
        if future in self._collected:
            return
        new = future.result()
        self._collected.add(future)
        self.ids.extend(new)
        self.ctx.keep(list(self.ids))
        self.runner.project.events.emit("samples", new)

    def close(self) -> None:
        """Wait for the writer; interrupted or failed, finished batches are still stored."""
        self._pool.shutdown(wait=True)
        for future in self._queue:
            try:
                self._collect(future)
            except Exception:  # noqa: BLE001 - the error already in flight is the one to report
                pass

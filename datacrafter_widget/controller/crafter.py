"""The `DataCrafter` controller: owns the project state and wires dataset, store and models.

Data flows one way: dataset -> store -> generate -> embed + label -> project -> widget ->
feedback -> evolve -> generate. The controller is the only object that writes the store; the
widget talks to it through the documented hooks below (`on(event, fn)`, `selection`,
`generate(background=True)`, `feedback`), never to the models.

Hooks for the other concerns (one module each, see docs/architecture.md):
- projection (issue 5): `crafter.projection` labels and places new samples through project_map.py
  (labeler.py + projection.py) and returns kind, id, text, x, y; `update_projection()` does the
  same and fires "projection"; `set_projection(frame)` shows a layout computed elsewhere.
- widget (issue 6): `crafter.show()` / `_repr_mimebundle_` build the view with
  `datacrafter_widget.ui.widget.crafter_view(crafter)`; subscribe to events with `crafter.on(...)`:
  "samples" (new ids stored), "feedback" (ids changed), "selection" (ids), "progress" (Job),
  "projection" (frame).
- student / evolution / GAP / metrics (issues 5, 7): read `crafter.samples`, `crafter.store`,
  `crafter.models`, `crafter.embeddings(ids)`, `crafter.feedback_log`, `crafter.rounds`; generate
  through `crafter.generate(strategy="custom", prompts=...)` or `crafter.run_requests(requests)`;
  rounds made elsewhere (GAP) take `crafter.next_round()` and are recorded with `crafter.log_round()`.
  `regenerate` replays GAP rows (those with an `embeddings_file`) through adversarial.generate_with_tokens.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ..loop.class_filter import ClassFilter
from ..data.dataset import Dataset
from ..data.images import image_hash
from .jobs import Job, JobContext, tqdm_listener
from ..models.bundle import MissingModelError, Models
from .map_cache import ProjectMap
from ..data.store import COLUMNS, SampleStore
from ..loop.strategies import STRATEGIES, GenerationRequest, StrategyError, build_requests, check_classes, group_requests

EXPORT_FORMATS = ("imagefolder", "csv", "hf")
EVENTS = ("samples", "feedback", "selection", "progress", "projection")
ROUND_SEED_STRIDE = 100_000  # default seeds of round r start at r * ROUND_SEED_STRIDE


class UnknownSampleError(KeyError):
    """Sample ids that are not in the project; the message lists them and where ids come from."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class JobRunningError(RuntimeError):
    """A generation job is already running; wait for it or cancel it first."""


class DataCrafter:
    """Expand a small labelled dataset with generated images, with full provenance, in a project folder."""

    def __init__(
        self,
        ds: Dataset,
        models: Models | None = None,
        project: str | os.PathLike = "runs/datacrafter",
        *,
        batch_size: int = 8,
        heldout: Dataset | str | None = "auto",
    ) -> None:
        if not isinstance(ds, Dataset):
            raise TypeError(
                f"DataCrafter needs a dc.Dataset, got {type(ds).__name__}: build one with dc.Dataset.from_folder(...), "
                "dc.Dataset.from_dataframe(...) or dc.starter.colored_digits()"
            )
        store = SampleStore(project)
        try:
            self._setup(store, models, batch_size)
            meta = store.read_json("project.json", {}) or {}
            if "classes" in meta:
                if list(meta["classes"]) != list(ds.classes):
                    raise ValueError(
                        f"project {store.path} was created for classes {meta['classes']}, but this dataset has "
                        f"{ds.classes}: open it with dc.DataCrafter.open({str(project)!r}) or choose a new project folder"
                    )
                self.classes = list(meta["classes"])
            else:
                self.classes = list(ds.classes)
                self._store_real(ds)
                store.write_json("project.json", {
                    **meta, "classes": self.classes, "dataset": ds.name,
                    "models": self.models.describe(), "generator": "datacrafter-widget",
                })
            self.dataset = ds
            self.heldout = heldout
        except BaseException:
            store.close()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike, models: Models | None = None, *, readonly: bool = False,
             batch_size: int = 8) -> "DataCrafter":
        """Resume a project after a kernel restart (models are optional for browsing)."""
        store = SampleStore(path, create=False, readonly=readonly)
        try:
            meta = store.read_json("project.json", {}) or {}
            if "classes" not in meta:
                raise ValueError(f"{store.path} is a sample store but not a DataCrafter project (no classes in project.json)")
            self = cls.__new__(cls)
            self._setup(store, models, batch_size)
            self.classes = list(meta["classes"])
            self.dataset = self._dataset_from_store()
            return self
        except BaseException:
            store.close()
            raise

    def _setup(self, store: SampleStore, models: Models | None, batch_size: int) -> None:
        if models is not None and not isinstance(models, Models):
            raise TypeError(f"models must be a dc.Models (e.g. dc.starter.models()), got {type(models).__name__}")
        self.store = store
        self.project = store.path
        self.models = models if models is not None else Models()
        self.batch_size = int(batch_size)
        # class filter: "auto" (the better of zero-shot and real-image prototypes, checked on the
        # real training images; off when neither works), "zero-shot" or "prototypes"; see class_filter.py
        self.filter_mode = "auto"
        self._filter_cache: tuple[tuple, ClassFilter] | None = None
        self.job: Job | None = None
        self._selection: list[str] = []
        self._projection: pd.DataFrame | None = None
        self._map = ProjectMap(store)
        self._map_lock = threading.RLock()
        self._labeler: Any = None
        self._heldout: Dataset | str | None = "auto"
        self._heldout_fp: tuple[int, str] | None = None
        # options for the per-round held-out student (student.train_student: seed=, steps=, kind=, ...)
        self.heldout_options: dict[str, Any] = {}
        self._listeners: dict[str, list[Callable[..., None]]] = {e: [] for e in EVENTS}

    # ---- real images ----------------------------------------------------------------------------
    def _store_real(self, ds: Dataset) -> None:
        parts: list[tuple[str, Dataset]] = []
        if ds.train is not None:
            parts.append(("train", ds.train))
        elif not ds.splits:
            parts.append(("train", ds))
        if ds.test is not None:
            parts.append(("test", ds.test))
        if not parts:
            raise ValueError(f"dataset {ds.name!r} has splits {sorted(ds.splits)} but no 'train' split: give it one")
        # An import interrupted earlier (kernel killed) resumes: images already stored are skipped.
        s = self.store.samples
        done = set(zip(s["hash"], s["split"])) if len(s) else set()
        for split, part in parts:
            frame = part.to_dataframe()
            attrs = [c for c in part.attributes if c not in COLUMNS]
            for start in range(0, len(part), 256):
                idx = list(range(start, min(len(part), start + 256)))
                images = part.images(idx)
                if done:
                    keep = [k for k, im in enumerate(images) if (image_hash(im), split) not in done]
                    idx, images = [idx[k] for k in keep], [images[k] for k in keep]
                    if not idx:
                        continue
                rows = []
                for i in idx:
                    cap = frame.at[i, "caption"]
                    row = {"label": str(frame.at[i, "label"]), "split": split, "source": "real", "round": 0,
                           "caption": "" if cap is None or (isinstance(cap, float) and math.isnan(cap)) else str(cap)}
                    for a in attrs:
                        v = frame.at[i, a]
                        row[a] = v.item() if hasattr(v, "item") else v
                    rows.append(row)
                self.store.add(images, rows)

    def _dataset_from_store(self) -> Dataset:
        s = self.store.samples
        real = s[s["source"] == "real"]
        splits = {}
        for split in ("train", "test"):
            rows = real[real["split"] == split]
            if len(rows):
                frame = pd.DataFrame({
                    "image": [str(self.store.path / f) for f in rows["file"]],
                    "label": rows["label"].astype(str).tolist(),
                    "caption": [c or None for c in rows["caption"].astype(str)],
                })
                splits[split] = Dataset(frame, classes=self.classes, name=f"{self.project.name}:{split}")
        whole = pd.concat([d.frame for d in splits.values()], ignore_index=True) if splits else pd.DataFrame(
            {"image": [], "label": [], "caption": []})
        return Dataset(whole, classes=self.classes, splits=splits, name=self.project.name)

    # ---- state ------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        s = self.store.samples
        real = int((s["source"] == "real").sum()) if len(s) else 0
        return (f"DataCrafter(project={str(self.project)!r}, classes={len(self.classes)}, real={real}, "
                f"generated={len(s) - real}, models={self.models!r})")

    @property
    def samples(self) -> pd.DataFrame:
        """One row per image (real and generated) with full provenance (a copy)."""
        return self.store.samples

    @property
    def rounds(self) -> list[dict[str, Any]]:
        """One dict per generation round (settings, requested / stored counts, status)."""
        return list(self.store.read_json("rounds.json", []) or [])

    @property
    def feedback_log(self) -> list[dict[str, Any]]:
        """Every feedback action in order: {time, round, bad, good, removed, bad_labels}."""
        return list(self.store.read_json("feedback.json", []) or [])

    def _check_ids(self, ids: Iterable[str], what: str = "ids") -> list[str]:
        if isinstance(ids, str):
            ids = [ids]
        ids = [str(i) for i in ids]
        unknown = [i for i in ids if i not in self.store]
        if unknown:
            raise UnknownSampleError(
                f"unknown sample {what} {unknown[:5]}{' ...' if len(unknown) > 5 else ''}: use ids from "
                f"crafter.samples['id'] (e.g. 'r000001' real, 'g000001' generated); nothing was changed"
            )
        return ids

    # ---- events (hooks for the widget, projection, ...) ----------------------------------------------
    def on(self, event: str, fn: Callable[..., None]) -> None:
        """Call `fn(payload)` on an event: samples | feedback | selection | progress | projection."""
        if event not in self._listeners:
            raise ValueError(f"unknown event {event!r}: use one of {list(EVENTS)}")
        self._listeners[event].append(fn)

    def off(self, event: str, fn: Callable[..., None]) -> None:
        if fn in self._listeners.get(event, []):
            self._listeners[event].remove(fn)

    def _emit(self, event: str, payload: Any) -> None:
        for fn in list(self._listeners[event]):
            try:
                fn(payload)
            except Exception as err:  # noqa: BLE001 - a broken view must not break generation
                warnings.warn(f"a {event!r} listener failed: {err!r}", RuntimeWarning, stacklevel=2)

    @property
    def selection(self) -> list[str]:
        """Sample ids selected (lasso in the widget, or set from Python)."""
        return list(self._selection)

    @selection.setter
    def selection(self, ids: Iterable[str] | None) -> None:
        ids = [] if ids is None else self._check_ids(ids, "ids in the selection")
        self._selection = list(dict.fromkeys(ids))
        self._emit("selection", self.selection)

    @property
    def projection(self) -> pd.DataFrame:
        """kind (image | label), id, text, x, y (+ members on label rows): every sample and the content
        labels in one 2D map (M2M, projection.py). Samples added since the last call are placed first,
        incrementally, when an embedder is available; without one, the last stored map is returned."""
        if self.models.has("embedder") and len(self.store) >= 2:
            self._update_projection(full=False, emit=False)
        elif self._projection is None and self._map.layout is not None:
            self._projection = self._map.stored_frame(self.store.samples)
        if self._projection is None:
            return pd.DataFrame({"kind": pd.Series(dtype="string"), "id": pd.Series(dtype="string"),
                                 "text": pd.Series(dtype="string"), "x": pd.Series(dtype="float32"),
                                 "y": pd.Series(dtype="float32")})
        return self._projection.copy()

    def update_projection(self, *, full: bool = False) -> pd.DataFrame:
        """Label and place new samples in the map (or, with full=True, lay everything out anew)."""
        self.models.require("embedder", "the projection (content labels and the 2D map)")
        if len(self.store) < 2:
            raise ValueError("the projection needs at least two images: add real images or generate some first")
        return self._update_projection(full=full, emit=True)

    def _update_projection(self, *, full: bool, emit: bool) -> pd.DataFrame:
        with self._map_lock:
            s = self.store.samples
            ids = s["id"].astype(str).tolist()
            if not full and self._projection is not None and self._map.ids == ids:
                return self._projection
            emb = self.embeddings(ids)
            labels = self._map.labels(s, emb, self.labeler, self.store.image)
            embedder = self.models.embedder
            frame = self._map.update(s, emb, labels, lambda texts: embedder.embed_texts(list(texts)), full=full)
            self._projection = frame
        if emit:
            self._emit("projection", frame.copy())
        return frame

    @property
    def labeler(self) -> Any:
        """The content labeler: models.labeler, or a CLIP vocabulary labeler built from the class names
        and the real captions; CLIP labelers are calibrated on the real images' embeddings."""
        if self._labeler is None:
            from ..loop.content_labels import ClipVocabularyLabeler

            embedder = self.models.require("embedder", "content labels")
            real = self.store.samples
            real = real[real["source"] == "real"]
            labeler = self.models.labeler if self.models.has("labeler") else ClipVocabularyLabeler(
                embedder, class_names=self.classes, captions=[c for c in real["caption"].astype(str) if c])
            if hasattr(labeler, "calibrate") and len(real):
                labeler.calibrate(self.embeddings(real["id"].tolist()))
            self._labeler = labeler
        return self._labeler

    def content_labels(self, ids: Sequence[str] | None = None) -> dict[str, list[str]]:
        """Content labels per sample id (computed and cached by image hash on first use)."""
        s = self.store.samples
        if ids is not None:
            s = s.set_index("id").loc[self._check_ids(ids)].reset_index()
        emb = self.embeddings(s["id"].astype(str).tolist())
        labels = self._map.labels(s, emb, self.labeler, self.store.image)
        return dict(zip(s["id"].astype(str), labels))

    def set_projection(self, frame: pd.DataFrame) -> None:
        """Show a layout computed elsewhere (kind, id, text, x, y) and tell the views."""
        missing = [c for c in ("kind", "id", "text", "x", "y") if c not in frame.columns]
        if missing:
            raise ValueError(f"projection frame lacks columns {missing}: it needs kind, id, text, x, y")
        self._projection = frame.copy()
        self._emit("projection", self._projection.copy())

    # ---- widget hooks ---------------------------------------------------------------------------------
    def show(self) -> Any:
        """The notebook view of this crafter (built by widget.crafter_view)."""
        try:
            from ..ui.widget import crafter_view
        except ImportError as err:
            raise RuntimeError(f"the widget view is not available ({err}): install the package with its widget extras") from err
        return crafter_view(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        try:
            view = self.show()
        except Exception:  # noqa: BLE001 - the text repr is the fallback outside notebooks
            return {"text/plain": repr(self)}
        if hasattr(view, "_repr_mimebundle_"):
            bundle = view._repr_mimebundle_(include=include, exclude=exclude)
            if isinstance(bundle, tuple):
                bundle = bundle[0]
            return {**bundle, "text/plain": repr(self)}
        return {"text/plain": repr(self)}

    # ---- generation ------------------------------------------------------------------------------------
    def generate(
        self,
        per_class: int = 20,
        strategy: str | Sequence[str] = "caption",
        prompts: Any = None,
        negative_prompts: str | Mapping[str, str] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        strength: float | None = None,
        seed: int | None = None,
        filter: bool = True,
        background: bool = False,
        *,
        classes: Sequence[str] | None = None,
        batch_size: int | None = None,
        latent_perturbation: float | None = None,
        caption_template: str | None = None,
        progress: bool = True,
    ) -> list[str] | Job:
        """Generate `per_class` images per class (and per strategy) and store them as one round.

        Blocking by default (tqdm progress; Ctrl-C cancels and keeps finished batches) and returns
        the new sample ids; `background=True` returns a running Job (`.progress`, `.cancel()`,
        `.wait()` -> ids). Seeds default to round * 100000 + k, so a round is reproducible.
        """
        if self.job is not None and self.job.running:
            raise JobRunningError("a generation job is still running: crafter.job.wait() or crafter.job.cancel() first")
        self.models.require("generator", "crafter.generate()")
        plan_args = (per_class, strategy, prompts, negative_prompts, strength, seed, classes, latent_perturbation,
                     caption_template)
        # In the background, captioning (a model call per real image) runs in the job too; the
        # plan made here without it already validates every input, so errors still come at once.
        requests, info, uncaptioned = self._plan(*plan_args, caption_now=not background)
        prepare = None
        if uncaptioned:
            def prepare(ctx: JobContext) -> list[GenerationRequest]:
                ctx.report(0, len(requests), f"captioning {uncaptioned} real image(s)")
                return self._plan(*plan_args, caption_now=True, round_number=info["round"])[0]

        return self.run_requests(requests, steps=steps, guidance=guidance, filter=filter, background=background,
                                 batch_size=batch_size, progress=progress, info=info, prepare=prepare)

    def _plan(self, per_class, strategy, prompts, negative_prompts, strength, seed, classes, latent_perturbation,
              caption_template, *, caption_now: bool = True, round_number: int | None = None,
              ) -> tuple[list[GenerationRequest], dict[str, Any], int]:
        """(requests, round info, number of real images still to caption when not caption_now)."""
        strategies = [strategy] if isinstance(strategy, str) else list(strategy)
        for s in strategies:
            if s not in STRATEGIES:
                raise StrategyError(f"unknown strategy {s!r}: use one of {list(STRATEGIES)}")
        use = check_classes(classes, self.classes)
        s = self.store.samples  # one copy of the table for the whole plan
        rnd = round_number or self._next_round(s)
        base = int(seed) if seed is not None else rnd * ROUND_SEED_STRIDE
        real = s[(s["source"] == "real") & (s["split"] == "train") & s["label"].isin(use)]
        captions: dict[str, str] = {}
        uncaptioned = 0
        if any(x in ("caption", "perturb") for x in strategies):
            captions = self._captions(real, required="caption" in strategies, run=caption_now)
            uncaptioned = sum(1 for c in captions.values() if not c.strip()) if self.models.has("captioner") else 0
        requests: list[GenerationRequest] = []
        for strat in strategies:
            kw: dict[str, Any] = {}
            if caption_template:
                kw["caption_template"] = caption_template
            requests += build_requests(
                strat, classes=use, per_class=per_class, seed=base + len(requests), real=real[["id", "label", "caption"]],
                captions=captions, prompts=prompts, negative_prompts=negative_prompts, strength=strength,
                latent_perturbation=latent_perturbation, **kw,
            )
        info = {"round": rnd, "strategies": strategies, "per_class": int(per_class), "classes": use, "seed": base}
        return requests, info, uncaptioned

    def next_round(self) -> int:
        """The number the next generation round gets (GAP / evolution rounds use it too)."""
        return self._next_round()

    def log_round(self, entry: dict[str, Any]) -> None:
        """Record (or replace) one round's entry in rounds.json; `entry["round"]` is required."""
        if "round" not in entry:
            raise ValueError("a round entry needs its 'round' number: use crafter.next_round()")
        self._log_round(dict(entry))

    def _next_round(self, samples: pd.DataFrame | None = None) -> int:
        s = self.store.samples if samples is None else samples
        last = int(s["round"].max()) if len(s) else 0
        logged = max([int(r.get("round", 0)) for r in self.rounds] or [0])
        return max(last, logged) + 1

    def _captions(self, real: pd.DataFrame, required: bool, run: bool = True) -> dict[str, str]:
        """Captions of the real rows: stored ones first, else the captioner (stored for next time).

        run=False only checks that missing captions can be made (and leaves them empty)."""
        caps = {str(i): str(c or "") for i, c in zip(real["id"], real["caption"])}
        missing = [i for i, c in caps.items() if not c.strip()]
        if missing:
            if not self.models.has("captioner"):
                if required:
                    raise MissingModelError(
                        f"strategy='caption' needs captions, and {len(missing)} real image(s) have none and no captioner "
                        "was given: pass captioner=... to dc.Models.stable_diffusion, use dc.starter.models(), give the "
                        "dataset captions, or use strategy='class'"
                    )
                return caps
            if not run:
                return caps
            images = [self.store.image(i) for i in missing]
            new = self.models.captioner(images)
            self.store.update(missing, caption=list(new))
            caps.update(zip(missing, new))
        return caps

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
        info: dict[str, Any] | None = None,
        prepare: Callable[[JobContext], Sequence[GenerationRequest]] | None = None,
    ) -> list[str] | Job:
        """Run prepared requests as one round (used by generate, prompt evolution and GAP).

        `prepare`, if given, runs first inside the job and returns the final requests (same count
        and seeds; e.g. with captions filled in), so slow preparation does not block the kernel."""
        if self.job is not None and self.job.running:
            raise JobRunningError("a generation job is still running: crafter.job.wait() or crafter.job.cancel() first")
        gen = self.models.require("generator", "generating images")
        requests = list(requests)
        if not requests:
            raise StrategyError("no generation requests: ask for at least one image")
        for r in requests:
            if r.label not in self.classes:
                raise StrategyError(f"unknown class {r.label!r}: the project's classes are {self.classes}")
            if not str(r.prompt).strip():
                raise StrategyError(f"empty prompt for class {r.label!r}: give every request a non-empty prompt")
            if r.parent_id:
                self._check_ids([r.parent_id], "parent ids")
        info = dict(info or {})
        rnd = int(info.get("round") or self._next_round())
        steps = int(steps or gen.default_steps)
        guidance = float(gen.default_guidance if guidance is None else guidance)
        bs = int(batch_size or self.batch_size)
        entry = {**info, "round": rnd, "requested": len(requests), "steps": steps, "guidance": guidance,
                 "batch_size": bs, "model": gen.name, "filter": bool(filter), "status": "running",
                 "started": time.time(), "stored": 0}
        self._log_round(entry)

        def work(ctx: JobContext) -> list[str]:
            final = list(prepare(ctx)) if prepare is not None else requests
            return self._generate_round(final, rnd, steps, guidance, filter, bs, ctx)

        job = Job(work, total=len(requests), description=f"round {rnd}")
        job.on_progress(lambda j: self._emit("progress", j))
        self.job = job
        if background:
            return job.start()
        if progress:
            job.on_progress(tqdm_listener(len(requests), f"generating round {rnd}"))
        return job.run() or []

    def _log_round(self, entry: dict[str, Any]) -> None:
        rounds = [r for r in self.rounds if int(r.get("round", -1)) != int(entry["round"])]
        rounds.append(entry)
        rounds.sort(key=lambda r: int(r.get("round", 0)))
        self.store.write_json("rounds.json", rounds)

    def _generate_round(self, requests: list[GenerationRequest], rnd: int, steps: int, guidance: float,
                        use_filter: bool, batch_size: int, ctx: JobContext) -> list[str]:
        """Generate group by group, batch by batch; each finished batch is stored by a writer thread
        while the next batch is being generated (PNG encoding, fsync, embeddings and the class filter
        overlap with the diffusion model). At most one batch waits to be stored; whatever happens,
        a batch that finished generating is stored before this returns."""
        gen = self.models.generator
        ids: list[str] = []
        status = "failed"
        parents: dict[str, Image.Image] = {}
        flt = self._class_filter(rnd) if use_filter else None
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datacrafter-store")
        queue: list[Future] = []        # submitted to the writer, in order
        collected: set[Future] = set()
        generated = 0

        def collect(future: Future) -> None:
            if future in collected:
                return
            new = future.result()
            collected.add(future)
            ids.extend(new)
            ctx.keep(list(ids))
            self._emit("samples", new)

        def drain(keep: int) -> None:
            while len(queue) > keep:
                collect(queue[0])
                queue.pop(0)

        try:
            for gi, group in enumerate(group_requests(requests)):
                if ctx.cancelled():
                    break
                reqs = [requests[i] for i in group]
                first = reqs[0]
                sources = None
                if first.is_img2img:
                    for r in reqs:
                        if r.parent_id not in parents:
                            parents[r.parent_id] = self.store.image(r.parent_id)
                    sources = [parents[r.parent_id] for r in reqs]
                batches = gen.iter_batches(
                    [r.prompt for r in reqs], negative_prompts=[r.negative_prompt for r in reqs],
                    seeds=[r.seed for r in reqs], steps=steps, guidance=guidance, images=sources,
                    strength=first.strength if first.is_img2img else 0.5,
                    latent_perturbation=first.latent_perturbation if first.is_img2img else 0.0,
                    batch_size=batch_size, cancel=ctx.cancel_event,
                    progress=lambda d, t, o=generated: ctx.report(o + d, len(requests)),
                )
                for batch in batches:
                    generated += len(batch.indices)
                    queue.append(writer.submit(
                        self._store_batch, [reqs[i] for i in batch.indices], batch.images, batch.flags,
                        rnd, steps, guidance, flt, batch_id=f"{rnd}-{gi}-{group[batch.indices[0]]}",
                    ))
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
            entry = next((r for r in self.rounds if int(r.get("round", -1)) == rnd), {"round": rnd})
            entry.update(status=status, stored=len(ids), finished=time.time())
            self._log_round(entry)

    def _class_filter(self, rnd: int) -> ClassFilter | None:
        """The round's class filter, fitted on the real training images (cached while they stay the same)."""
        if not self.models.has("embedder"):
            if not getattr(self, "_warned_filter", False):
                self._warned_filter = True
                warnings.warn("the class filter needs an embedder; none was given, so images are not checked",
                              RuntimeWarning, stacklevel=4)
            return None
        emb = self.models.embedder
        s = self.store.samples
        real = s[(s["source"] == "real") & (s["split"] == "train") & (s["feedback"] != "removed")]
        key = (emb.name, self.filter_mode, tuple(real["id"]))
        if self._filter_cache is None or self._filter_cache[0] != key:
            flt = ClassFilter(emb, self.classes, mode=self.filter_mode)
            if len(real):
                flt.fit(self.embeddings(real["id"].tolist()), real["label"].tolist())
            self._filter_cache = (key, flt)
        flt = self._filter_cache[1]
        entry = next((r for r in self.rounds if int(r.get("round", -1)) == rnd), None)
        if entry is not None and flt.report:
            entry["class_filter"] = flt.report
            self._log_round(entry)
        return flt

    def _store_batch(self, reqs: list[GenerationRequest], images: list[Image.Image], flags: list[str],
                     rnd: int, steps: int, guidance: float, flt: ClassFilter | None, batch_id: str = "") -> list[str]:
        """Flag (NaN / black / off-class) and store one finished batch in one atomic commit.

        The batch's composition (batch_id + batch_index) is part of the provenance: CPU and GPU
        kernels may pick other algorithms for other batch sizes, so an image is only guaranteed
        bit-exact when its whole batch is replayed (what `regenerate` does).
        """
        gen = self.models.generator
        reasons = [_FLAG_REASONS.get(f, "") for f in flags]
        emb = None
        if self.models.has("embedder"):
            emb = self.models.embedder.embed_images(images)
            if flt is not None:
                checks = flt.check(emb, [r.label for r in reqs])
                for k, (flag, why) in enumerate(checks):
                    if flag and not flags[k]:
                        flags[k], reasons[k] = flag, why
        scheduler = type(getattr(gen.pipe, "scheduler", None)).__name__
        floor = getattr(gen, "guidance_min_sigma", None)
        rows = []
        for k, (r, flag, why) in enumerate(zip(reqs, flags, reasons)):
            rows.append({
                "label": r.label, "split": "generated", "source": "generated", "prompt": r.prompt,
                "negative_prompt": r.negative_prompt, "seed": int(r.seed), "steps": steps, "guidance": guidance,
                "strength": r.strength if r.is_img2img else math.nan, "parent_id": r.parent_id, "round": rnd,
                "strategy": r.strategy, "model": gen.name, "caption": r.caption, "flag": flag, "flag_reason": why,
                "latent_perturbation": float(r.latent_perturbation), "scheduler": scheduler,
                "guidance_min_sigma": math.nan if floor is None else float(floor),
                "batch_id": batch_id, "batch_index": k,
            })
        ids = self.store.add(images, rows)
        if emb is not None:
            self.store.put_embeddings([image_hash(im) for im in images], self.models.embedder.name, emb)
        return ids

    def cancel(self) -> None:
        """Cancel the running generation job (finished batches stay stored)."""
        if self.job is not None:
            self.job.cancel()

    # ---- regeneration -----------------------------------------------------------------------------------
    def regenerate(self, sample_id: str, *, alone: bool = False) -> Image.Image:
        """Regenerate a generated image from its stored provenance.

        By default the image's whole batch is replayed (same prompts, seeds and order), which is
        bit-exact on the same device and library versions. `alone=True` runs just this image with
        its own seed: faster, and equal up to float rounding (batched kernels may sum in another order).
        """
        (sample_id,) = self._check_ids([sample_id])
        row = self.store.row(sample_id)
        if row["source"] != "generated":
            raise ValueError(f"{sample_id} is a real image: only generated samples can be regenerated")
        gen = self.models.require("generator", f"crafter.regenerate({sample_id!r})")
        if str(row["model"]) != gen.name:
            raise ValueError(
                f"{sample_id} was generated with model {row['model']!r}, but the current generator is {gen.name!r}: "
                f"open the project with models that load {row['model']!r} to regenerate it"
            )
        scheduler = row.get("scheduler")
        current = type(getattr(gen.pipe, "scheduler", None)).__name__
        if isinstance(scheduler, str) and scheduler and scheduler != current:
            raise ValueError(f"{sample_id} was generated with scheduler {scheduler}, the generator now uses {current}: "
                             f"set it back (generator.set_scheduler / scheduler=...) to regenerate")
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
        extra = {}
        if floor is not None and hasattr(gen, "guidance_min_sigma"):
            extra["guidance_min_sigma"] = None if math.isnan(float(floor)) else float(floor)
        out = gen(
            [str(m["prompt"]) for m in members],
            negative_prompt=[str(m["negative_prompt"]) for m in members],
            seed=[int(m["seed"]) for m in members],
            steps=int(row["steps"]), guidance=float(row["guidance"]),
            image=[self.store.image(str(m["parent_id"])) for m in members] if img2img else None,
            strength=strength if img2img else 0.5, latent_perturbation=lp if img2img else 0.0,
            batch_size=len(members), **extra,
        )
        return out[position]

    def _regenerate_gap(self, row: dict[str, Any], gen: Any, alone: bool) -> Image.Image:
        """GAP images: learned prompt tokens (safetensors in the project) + seed, replayed in the
        same call that made them (all seeds of that token file, in order) unless `alone`."""
        from ..loop.gap import generate_with_tokens, load_mask, load_tokens

        tokens = load_tokens(self.store.path / str(row["embeddings_file"]))
        if alone:
            members, position = [row], 0
        else:
            s = self.store.samples
            same = s[s["embeddings_file"] == row["embeddings_file"]]
            members = same.to_dict("records")
            position = same["id"].tolist().index(row["id"])
        seeds = [int(m["seed"]) for m in members]
        # Masked / img2img GAP rows name their source (parent_id), strength and stored mask.
        parent = row.get("parent_id")
        sources = masks = strength = None
        if isinstance(parent, str) and parent:
            sources = [self.store.image(str(m["parent_id"])) for m in members]
            strength = float(row["strength"])
            mask_file = row.get("mask_file")
            if isinstance(mask_file, str) and mask_file:
                masks = [load_mask(self.store.path / str(m["mask_file"])) for m in members]
        out = generate_with_tokens(gen, tokens, seeds, steps=int(row["steps"]), guidance=float(row["guidance"]),
                                   negative_prompt=str(row["negative_prompt"]), sources=sources, masks=masks,
                                   strength=strength)
        return out[position]

    # ---- feedback -----------------------------------------------------------------------------------------
    def feedback(
        self,
        bad: Iterable[str] | None = None,
        good: Iterable[str] | None = None,
        bad_labels: Sequence[str] | None = None,
        removed: Iterable[str] | None = None,
    ) -> dict[str, int]:
        """Mark samples good / bad (with optional reasons) / removed; the same as the widget's buttons.

        Every action is also appended to feedback.json (`crafter.feedback_log`) for prompt evolution.
        """
        bad = self._check_ids(bad or [], "ids in bad")
        good = self._check_ids(good or [], "ids in good")
        removed = self._check_ids(removed or [], "ids in removed")
        both = sorted(set(bad) & set(good))
        if both:
            raise ValueError(f"ids {both[:5]} are marked both bad and good: pass each id once")
        labels = [str(x) for x in (bad_labels or [])]
        if bad:
            self.store.update(bad, feedback="bad", feedback_labels=labels)
        if good:
            self.store.update(good, feedback="good", feedback_labels=[])
        if removed:
            self.store.update(removed, feedback="removed")
        if bad or good or removed:
            log = self.feedback_log
            log.append({"time": time.time(), "round": self._next_round() - 1, "bad": bad, "good": good,
                        "removed": removed, "bad_labels": labels})
            self.store.write_json("feedback.json", log)
            self._emit("feedback", bad + good + removed)
        return {"bad": len(bad), "good": len(good), "removed": len(removed)}

    # ---- embeddings ---------------------------------------------------------------------------------------
    def embeddings(self, ids: Sequence[str] | None = None) -> np.ndarray:
        """float32 (n, d) embeddings of the samples (all by default), cached in the store by image hash."""
        emb = self.models.require("embedder", "crafter.embeddings()")
        s = self.store.samples
        if ids is None:
            hashes = s["hash"].astype(str).tolist()
            ids = s["id"].astype(str).tolist()
        else:
            ids = self._check_ids(ids)
            by_id = dict(zip(s["id"].astype(str), s["hash"].astype(str)))
            hashes = [by_id[i] for i in ids]
        missing = self.store.missing_embeddings(hashes, emb.name)
        if missing and not self.store.readonly:
            first_id = {}
            for i, h in zip(ids, hashes):
                first_id.setdefault(h, i)
            for start in range(0, len(missing), 64):
                chunk = missing[start : start + 64]
                arr = emb.embed_images([self.store.image(first_id[h]) for h in chunk])
                self.store.put_embeddings(chunk, emb.name, arr)
        elif missing:
            out = self.store.embeddings(hashes, emb.name, partial=True)
            rows = [k for k, h in enumerate(hashes) if h in set(missing)]
            out[rows] = emb.embed_images([self.store.image(ids[k]) for k in rows])
            return out
        out = self.store.embeddings(hashes, emb.name)
        if out is None:
            return np.zeros((0, emb.dim), dtype=np.float32)
        return out

    # ---- export -------------------------------------------------------------------------------------------
    def export(
        self,
        out: str | os.PathLike,
        format: str = "imagefolder",
        *,
        include_flagged: bool = False,
        include_bad: bool = False,
        overwrite: bool = False,
    ) -> Path:
        """Write the expanded dataset: real train + accepted generated images (+ real test, kept apart).

        imagefolder: out/train/<class>/<id>.png, out/test/<class>/<id>.png, out/samples.csv;
        csv: out/images/<id>.png + out/samples.csv; hf: a `datasets` dataset saved with save_to_disk.
        Generated images marked bad/removed, or flagged, are left out unless asked for.
        """
        if format not in EXPORT_FORMATS:
            raise ValueError(f"unknown export format {format!r}: use one of {list(EXPORT_FORMATS)}")
        out = Path(out).expanduser()
        if out.exists() and any(out.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{out} is not empty: choose a new folder or pass overwrite=True")
            shutil.rmtree(out)
        s = self.store.samples
        gen = s["source"] == "generated"
        fb = s["feedback"].astype(str)
        drop = fb == "removed"
        if not include_bad:
            drop |= gen & (fb == "bad")
        if not include_flagged:
            drop |= gen & (s["flag"].astype(str) != "") & (fb != "good")
        rows = s[~drop].copy()
        rows["export_split"] = np.where(rows["split"] == "test", "test", "train")
        if format == "hf":
            return self._export_hf(rows, out)
        tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        files = []
        for r in rows.itertuples(index=False):
            if format == "imagefolder":
                rel = Path(r.export_split) / _safe_name(r.label) / f"{r.id}.png"
            else:
                rel = Path("images") / f"{r.id}.png"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.store.path / r.file, tmp / rel)
            files.append(rel.as_posix())
        table = rows.drop(columns=["file"]).assign(file=files)
        table.to_csv(tmp / "samples.csv", index=False)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        return out

    def _export_hf(self, rows: pd.DataFrame, out: Path) -> Path:
        try:
            import datasets
        except ImportError as err:
            raise ImportError("format='hf' needs the `datasets` package: pip install 'datacrafter-widget[hf]'") from err
        data: dict[str, list[Any]] = {"image": [str(self.store.path / f) for f in rows["file"]]}
        for c in rows.columns:
            if c in ("file", "image"):
                continue
            col = rows[c]
            if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
                data[c] = col.tolist()
            else:  # text, or mixed attribute columns: strings with None for missing
                data[c] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in col]
        ds = datasets.Dataset.from_dict(data)
        ds = ds.cast_column("image", datasets.Image())
        ds = ds.cast_column("label", datasets.ClassLabel(names=self.classes))
        dd = datasets.DatasetDict({split: ds.filter(lambda e, s=split: e["export_split"] == s)
                                   for split in sorted(set(rows["export_split"]))})
        dd.save_to_disk(str(out))
        return out

    # ---- per-round metrics (metrics.py) -------------------------------------------------------------
    @property
    def student(self) -> Any:
        """The current student (trained here, given in models, or saved in the project), or None."""
        from ..loop.student import StudentError

        try:
            return self._current_student()
        except StudentError:
            return None

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per generation round: informativeness, class maintenance, diversity, distance (CMMD,
        metrics.py), with the strategies and flag / bad-feedback counts. Class probabilities come from
        the class filter's classifier (zero-shot when no classifier works on the real images)."""
        from ..loop.metrics import round_metrics

        emb_model = self.models.require("embedder", "crafter.metrics")
        s = self.store.samples
        gen = s[s["source"] == "generated"]
        if not len(gen):
            return self._with_student_accuracy(pd.DataFrame(columns=["round", "n_generated"]))
        real = s[(s["source"] == "real") & (s["split"] == "train")]
        real_emb = self.embeddings(real["id"].tolist())
        flt = ClassFilter(emb_model, self.classes, mode=self.filter_mode).fit(real_emb, real["label"].tolist())
        if flt.active_mode == "off":  # no classifier works: fall back to zero-shot for the numbers
            flt = ClassFilter(emb_model, self.classes, mode="zero-shot")
        index = {c: i for i, c in enumerate(self.classes)}
        real_probs = flt.probabilities(real_emb)
        real_labels = np.array([index[x] for x in real["label"]])
        parent_probs = dict(zip(real["id"], real_probs))
        rows = []
        for rnd, g in gen.groupby("round", sort=True):
            g_emb = self.embeddings(g["id"].tolist())
            probs = flt.probabilities(g_emb)
            seeds = np.array([parent_probs.get(p, np.full(len(self.classes), np.nan)) for p in g["parent_id"]],
                             dtype=np.float32)
            row = round_metrics(probs, np.array([index[x] for x in g["label"]]), g_emb, real_emb, seed_probs=seeds,
                                real_probs=real_probs, real_labels=real_labels, round=int(rnd))
            row["strategies"] = ",".join(sorted(set(g["strategy"])))
            row["flagged"] = int((g["flag"] != "").sum())
            row["bad"] = int((g["feedback"] == "bad").sum())
            rows.append(row)
        return self._with_student_accuracy(pd.DataFrame(rows))

    @property
    def heldout(self) -> Dataset | None:
        """The split `crafter.metrics` scores the per-round student on (student_acc); None: no student column.

        Default ("auto"): the dataset's test split when it has one. Set a Dataset to use another.
        """
        if isinstance(self._heldout, str):
            return self.dataset.test if self.dataset is not None else None
        return self._heldout

    @heldout.setter
    def heldout(self, value: Dataset | str | None) -> None:
        if not (value is None or isinstance(value, Dataset) or value == "auto"):
            raise TypeError(f"heldout must be a dc.Dataset (e.g. ds.test), 'auto' (the test split) or None (off), "
                            f"got {type(value).__name__}")
        self._heldout, self._heldout_fp = value, None

    def _with_student_accuracy(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Adds student_acc (held-out accuracy of a student trained on each round's data; heldout.py),
        with a round-0 row for the real images alone; cached per round in <project>/heldout/."""
        from .heldout import STUDENT_COLUMNS, heldout_fingerprint, student_accuracy_by_round

        ds = self.heldout
        if ds is None or len(ds) == 0:
            return frame
        if self._heldout_fp is None or self._heldout_fp[0] != id(ds):
            self._heldout_fp = (id(ds), heldout_fingerprint(ds))
        rounds = [0, *sorted(int(r) for r in frame["round"].dropna())]
        acc = student_accuracy_by_round(
            self.store, self.classes, ds, rounds, fingerprint=self._heldout_fp[1],
            embedder=self.models.embedder if self.models.has("embedder") else None, options=self.heldout_options)
        if len(frame):
            merged = acc.merge(frame.astype({"round": "int64"}), on="round", how="left")
        else:
            merged = acc.assign(n_generated=0)
        first = merged["round"] == 0
        merged.loc[first, "n_generated"] = 0
        merged["n_generated"] = merged["n_generated"].astype("int64")
        if "strategies" in merged:
            merged.loc[first, "strategies"] = "real only"
        student_cols = list(STUDENT_COLUMNS)
        return merged[["round", *[c for c in merged.columns if c not in ["round", *student_cols]], *student_cols]]

    # ---- lifetime -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the project lock (cancels a running job first)."""
        if self.job is not None and self.job.running:
            self.job.cancel()
            try:
                self.job.wait(timeout=600)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        self.store.close()

    def __enter__(self) -> "DataCrafter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- student, prompt evolution, GAP (issue 7; the logic lives in student.py / evolution.py / adversarial.py) ----
    def train_student(self, *, keep_flagged: bool = False, include_generated: bool = True, progress: bool = True,
                      cancel: Any = None, **options: Any) -> Any:
        """Train the student on the real train images + accepted generated ones; saved to <project>/student.

        options go to student.train_student (kind="cnn"|"probe", backbone=..., epochs=..., seed=...).
        """
        from ..loop.student import train_student, training_set_from_samples

        images, labels, _ = training_set_from_samples(self.store.samples, self.store.image, keep_flagged=keep_flagged,
                                                      include_generated=include_generated)
        embedder = self.models.embedder if self.models.has("embedder") else None
        student = train_student(images, labels, self.classes, embedder=embedder, progress=progress, cancel=cancel, **options)
        student.save(self.project / "student")
        self.models.student = student
        return student

    def _current_student(self) -> Any:
        from ..loop.student import Student, StudentError

        if self.models.has("student"):
            return self.models.student
        if (self.project / "student" / "student.json").is_file():
            self.models.student = Student.load(self.project / "student",
                                               embedder=self.models.embedder if self.models.has("embedder") else None)
            return self.models.student
        raise StudentError("no student yet: call crafter.train_student() first")

    def evaluate(self, ds: Dataset | None = None) -> dict[str, Any]:
        """Accuracy, per-class accuracy and confusion matrix of the student on `ds` (default: the test split)."""
        from ..loop.student import StudentError, evaluate

        ds = ds if ds is not None else self.dataset.test
        if ds is None:
            raise StudentError("the project has no test split: pass a Dataset, e.g. crafter.evaluate(ds.test)")
        return evaluate(self._current_student(), ds)

    def evolve(self, *, vocabulary: Sequence[str] | None = None, bad_labels: Sequence[str] = (),
               classes: Sequence[str] | None = None, population: int = 4, generations: int = 1, batch: int = 4,
               seed: int | None = None, progress: bool = True, cancel: Any = None, **options: Any) -> Any:
        """Evolve the prompts of the classes with feedback; the result (ranked prompts + diffs) is kept in prompts.json.

        Generate with them next: crafter.generate_evolved(per_class=...).
        """
        from ..loop.evolution import default_compose, evolve_store, generator_fn, starter_compose, starter_vocabulary

        gen = self.models.require("generator", "crafter.evolve()")
        emb = self.models.require("embedder", "crafter.evolve()")
        starter = str(getattr(gen, "name", "")).startswith("starter/")
        if vocabulary is None and starter:
            vocabulary = starter_vocabulary()
        options.setdefault("compose", starter_compose if starter else default_compose())
        return evolve_store(self.store, classes=self.classes, generate=generator_fn(gen, batch_size=self.batch_size),
                            embedder=emb, vocabulary=vocabulary, bad_labels=bad_labels, only_classes=classes,
                            population=population, generations=generations, batch=batch,
                            seed=self.next_round() if seed is None else seed, progress=progress, cancel=cancel,
                            round=self.next_round() - 1, **options)

    def generate_evolved(self, per_class: int = 20, **options: Any) -> Any:
        """Generate a round with the current evolved prompts (prompts.json) of every class that has one."""
        doc = self.store.read_json("prompts.json", {}) or {}
        entries = {c: e for c, e in doc.get("classes", {}).items() if c in self.classes and e.get("prompt")}
        if not entries:
            raise StrategyError("no evolved prompts yet: mark images with crafter.feedback(...) and run crafter.evolve() first")
        return self.generate(per_class=per_class, strategy="custom", prompts={c: [e["prompt"]] for c, e in entries.items()},
                             negative_prompts={c: e.get("negative_prompt", "") for c, e in entries.items()},
                             classes=list(entries), **options)

    def adversarial(self, target: str | None = None, steps: int = 200, *, target_images: Sequence[Image.Image] | None = None,
                    per_class: int = 10, classes: Sequence[str] | None = None, seed: int | None = None,
                    progress: bool = True, cancel: Any = None, sources: Any = None, masks: Any = None,
                    **settings: Any) -> list[str]:
        """GAP: learn adversarial prompt tokens per class against the student, guided to `target`
        (a description) and/or `target_images` (unlabelled); store `per_class` images each. Returns the new ids.

        sources="train" starts from the real train images of each class (img2img, parent_id in the
        rows) and masks="plain-background" (or a function / {sample id: mask}) keeps each source's
        object pixels, so only the context changes and the label is kept; see adversarial.gap_round.
        settings go to adversarial.GapConfig (lr, n_tokens, sampler_steps, batch, guidance, strength, ...).
        """
        from ..loop.gap import GapConfig, GapError, gap_round

        gen = self.models.require("generator", "crafter.adversarial()")
        student = self._current_student()
        use = check_classes(classes, self.classes)
        if target is None and not target_images:
            raise GapError("GAP needs a target: target='a description of the test distribution' and/or target_images=[...]")
        rnd = self.next_round()
        shared = bool(settings.pop("shared", False))   # one token set for all classes (k times cheaper)
        config = GapConfig(steps=int(steps), **settings)
        entry = {"round": rnd, "strategies": ["gap"], "per_class": int(per_class), "classes": use, "target": target or "",
                 "status": "running", "started": time.time(), "model": gen.name, "stored": 0}
        self.log_round(entry)
        ids: list[str] = []
        status = "failed"
        try:
            ids, _ = gap_round(self.store, gen, student, use, target=target, target_images=target_images,
                               embedder=self.models.embedder if self.models.has("embedder") else None,
                               per_class=per_class, round=rnd, seed=rnd * ROUND_SEED_STRIDE if seed is None else seed,
                               config=config, progress=progress, cancel=cancel, shared=shared, sources=sources,
                               masks=masks)
            status = "done"
        finally:
            entry.update(status=status, stored=len(ids), finished=time.time())
            self.log_round(entry)
        if ids:
            self._emit("samples", ids)
        return ids


_FLAG_REASONS = {
    "nan": "the pipeline produced NaN pixels (often fp16 overflow in the VAE): try float32, another seed or fewer steps",
    "black": "the image is all black (a failed decode or the safety checker): try another seed or prompt",
    "nsfw": "the pipeline's safety checker blanked this image",
}


def _safe_name(label: str) -> str:
    """A class name usable as one folder name."""
    name = re.sub(r"[\\/:*?\"<>|\x00-\x1f]", "_", str(label)).strip(" .")
    return name or "_"

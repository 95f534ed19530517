"""The `DataCrafter` controller: owns the project state and wires dataset, store and models.

Data flows one way: dataset -> store -> generate -> embed + label -> project -> widget ->
feedback -> evolve -> generate. The controller is the only object that writes the store; the
widget talks to it through the documented hooks below (`on(event, fn)`, `selection`,
`generate(background=True)`, `feedback`), never to the models.

Hooks for the other concerns (one module each, see docs/architecture.md):
- projection (issue 5): `crafter.projection` labels and places new samples through project_map.py
  (labeler.py + projection.py) and returns kind, id, text, x, y; `update_projection()` does the
  same and fires "projection"; `set_projection(frame)` shows a layout computed elsewhere.
- widget: `crafter.show()`, `_repr_mimebundle_` and marimo's `_display_` go to ui/display.py (one
  widget per crafter, text only outside a notebook kernel); subscribe to events with `crafter.on(...)`:
  "samples" (new ids stored), "feedback" (ids changed), "selection" (ids), "progress" (Job),
  "projection" (frame).
- student / evolution / GAP / metrics (issues 5, 7): read `crafter.samples`, `crafter.store`,
  `crafter.models`, `crafter.embeddings(ids)`, `crafter.feedback_log`, `crafter.rounds`.
- rounds (issue 12): every generation round (class, caption, perturb, custom, evolved, GAP) and
  `regenerate` run in `controller/rounds.py` (`crafter.rounds_runner`), the only writer of generated
  rows; `generate`, `evolve`, `adversarial` and `regenerate` here validate and delegate. A round is a
  `RoundSpec` (controller/round_spec.py), its seeds come from `round_seed`.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

import numpy as np
import pandas as pd
from PIL import Image

from ..loop.class_filter import ClassFilter
from ..data.dataset import Dataset, DatasetError
from ..data.images import image_hash
from . import map_view, open_projects
from .export import EXPORT_FORMATS, ExportOptions, export_project  # EXPORT_FORMATS: kept importable from here
from .backends import Backend, BackendConfig, backend_from_config
from .jobs import Cancel, Job, stop_check
from .recovery import import_counter, unfinished_import_message
from ..models.bundle import Models
from .map_cache import ProjectMap
from ..data.store import COLUMNS, SampleStore
from ..seeds import ROUND_SEED_STRIDE, round_seed
from .round_spec import Prompts, RoundSpec
from .rounds import ImageBackend, JobRunningError, Masks, RoundRunner, Sources

if TYPE_CHECKING:
    from ..loop.content_labels import Labeler
    from ..loop.evolution import EvolutionResult
    from ..loop.student import Evaluation, Student
    from ..ui.view import CrafterView
    from ..ui.widget import CrafterWidget

EVENTS = ("samples", "feedback", "selection", "progress", "projection", "view")
__all__ = ["DataCrafter", "UnknownSampleError", "JobRunningError", "ROUND_SEED_STRIDE", "round_seed", "EXPORT_FORMATS"]


class UnknownSampleError(KeyError):
    """Sample ids that are not in the project; the message lists them and where ids come from."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


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
        backend: BackendConfig = None,
    ) -> None:
        if not isinstance(ds, Dataset):
            raise TypeError(
                f"DataCrafter needs a dc.Dataset, got {type(ds).__name__}: build one with dc.Dataset.from_folder(...), "
                "dc.Dataset.from_dataframe(...) or dc.starter.colored_digits()"
            )
        store = open_projects.acquire(project)
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
                store.write_json(
                    "project.json",
                    {
                        **meta,
                        "classes": self.classes,
                        "dataset": ds.name,
                        "models": self.models.describe(),
                        "generator": "datacrafter-widget",
                    },
                )
            self.dataset = ds
            self.heldout = heldout
            if backend is not None:
                self.backend = backend
        except BaseException:
            open_projects.release(store)
            raise

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        models: Models | None = None,
        *,
        readonly: bool = False,
        batch_size: int = 8,
        backend: BackendConfig = None,
    ) -> "DataCrafter":
        """Resume a project after a kernel restart (models are optional for browsing)."""
        store = SampleStore(path, readonly=True) if readonly else open_projects.acquire(path, create=False)
        try:
            meta = store.read_json("project.json", {}) or {}
            if "classes" not in meta:
                raise ValueError(unfinished_import_message(store))
            self = cls.__new__(cls)
            self._setup(store, models, batch_size)
            if backend is not None:
                self.backend = backend
            self.classes = list(meta["classes"])
            self.dataset = self._dataset_from_store()
            return self
        except BaseException:
            open_projects.release(store)
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
        self.job: Job | None = None
        self.rounds_runner = RoundRunner(self)
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
        # where rounds, bulk captions and embeddings run (backends.py); a project remembers its choice
        self._backend: Backend = backend_from_config((store.read_json("project.json", {}) or {}).get("backend"))
        self.rounds_runner.backend = self._backend.for_models(self.models)
        self._student: Any = None  # this project's student (never kept on the shared Models object)
        self._feedback_history = map_view.FeedbackHistory()
        self._view = map_view.ViewState()
        self.rounds_runner.mark_interrupted()  # rounds a killed kernel left "running"

    @property
    def backend(self) -> Backend:
        """The execution backend of this project: LocalBackend() (default) or dc.RayBackend(...)."""
        return self._backend

    @backend.setter
    def backend(self, value: BackendConfig) -> None:
        """Set it with a backend, "local", "ray" or a config dict; kept in project.json for DataCrafter.open."""
        new = backend_from_config(value)
        if new is not self._backend:
            self._backend.close()
        self._backend = new
        self.rounds_runner.backend = new.for_models(self.models)
        if not self.store.readonly:
            meta = self.store.read_json("project.json", {}) or {}
            self.store.write_json("project.json", {**meta, "backend": new.config()})

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
        done = import_counter(self.store.samples)
        for split, part in parts:
            frame = part.to_dataframe()
            attrs = [c for c in part.attributes if c not in COLUMNS]
            # Columns as lists once: a per-cell frame.at costs ~0.6 ms, 20 s over 10,000 images x 3 columns.
            col_label = frame["label"].astype(str).tolist()
            col_caption = frame["caption"].tolist()
            col_attrs = {a: frame[a].tolist() for a in attrs}
            for start in range(0, len(part), 256):
                idx = list(range(start, min(len(part), start + 256)))
                try:
                    images = part.images(idx)
                except DatasetError as err:  # names the file; what is stored so far stays
                    raise DatasetError(
                        f"{err}. Then run dc.DataCrafter(ds, project={str(self.project)!r}) again: the "
                        f"import resumes where it stopped"
                    ) from None
                if done:
                    labels = [col_label[i] for i in idx]
                    keep = [k for k, im in enumerate(images) if not _take(done, (image_hash(im), split, labels[k]))]
                    idx, images = [idx[k] for k in keep], [images[k] for k in keep]
                    if not idx:
                        continue
                rows = []
                for i in idx:
                    cap = col_caption[i]
                    row = {
                        "label": col_label[i],
                        "split": split,
                        "source": "real",
                        "round": 0,
                        "caption": "" if cap is None or (isinstance(cap, float) and math.isnan(cap)) else str(cap),
                    }
                    for a in attrs:
                        v = col_attrs[a][i]
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
                frame = pd.DataFrame(
                    {
                        "image": [str(self.store.path / f) for f in rows["file"]],
                        "label": rows["label"].astype(str).tolist(),
                        "caption": [c or None for c in rows["caption"].astype(str)],
                    }
                )
                splits[split] = Dataset(frame, classes=self.classes, name=f"{self.project.name}:{split}")
        whole = (
            pd.concat([d.frame for d in splits.values()], ignore_index=True)
            if splits
            else pd.DataFrame({"image": [], "label": [], "caption": []})
        )
        return Dataset(whole, classes=self.classes, splits=splits, name=self.project.name)

    # ---- state ------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        s = self.store.samples
        real = int((s["source"] == "real").sum()) if len(s) else 0
        return (
            f"DataCrafter(project={str(self.project)!r}, classes={len(self.classes)}, real={real}, "
            f"generated={len(s) - real}, models={self.models!r})"
        )

    @property
    def samples(self) -> pd.DataFrame:
        """One row per image (real and generated) with full provenance (a copy)."""
        return self.store.samples

    def image(self, sample_id: str) -> Image.Image:
        """The stored image of one sample (real or generated), as RGB."""
        return self.store.image(self._check_ids([sample_id])[0])

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
            return pd.DataFrame(
                {
                    "kind": pd.Series(dtype="string"),
                    "id": pd.Series(dtype="string"),
                    "text": pd.Series(dtype="string"),
                    "x": pd.Series(dtype="float32"),
                    "y": pd.Series(dtype="float32"),
                }
            )
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
    def labeler(self) -> Labeler:
        """The content labeler: models.labeler, or a CLIP vocabulary labeler built from the class names
        and the real captions; CLIP labelers are calibrated on the real images' embeddings."""
        if self._labeler is None:
            from ..loop.content_labels import ClipVocabularyLabeler

            embedder = self.models.require("embedder", "content labels")
            real = self.store.samples
            real = real[real["source"] == "real"]
            labeler = (
                self.models.labeler
                if self.models.has("labeler")
                else ClipVocabularyLabeler(
                    embedder, class_names=self.classes, captions=[c for c in real["caption"].astype(str) if c]
                )
            )
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

    # ---- display (ui/display.py: one widget per crafter; text only outside a notebook) ---------------
    _widget_view: CrafterView | None = None  # built on first display, shared by every later display

    def show(self) -> CrafterWidget:
        """This crafter's widget (an anywidget: JupyterLab, Notebook 7, VS Code, Colab, marimo).
        Every call and every display returns the same widget, so views of one crafter share it."""
        try:
            from ..ui.display import widget_of
        except ImportError as err:
            raise RuntimeError(
                f"the widget view is not available ({err}): install the package with its widget extras"
            ) from err
        return widget_of(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from ..ui.display import mimebundle

        return mimebundle(self, include, exclude)

    def _display_(self) -> CrafterWidget:
        """marimo's display hook: the widget itself, which marimo renders as an anywidget."""
        return self.show()

    # ---- generation (controller/rounds.py runs every round; these are its public doors) ----------------
    def generate(
        self,
        per_class: int = 20,
        strategy: str | Sequence[str] = "caption",
        prompts: Prompts | None = None,
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
        spec: RoundSpec | None = None,
        backend: BackendConfig = None,
    ) -> list[str] | Job:
        """Generate `per_class` images per class (and per strategy) and store them as one round.

        Blocking by default (tqdm progress; Ctrl-C cancels and keeps finished batches) and returns
        the new sample ids; `background=True` returns a running Job (`.progress`, `.cancel()`,
        `.wait()` -> ids). Seeds follow `round_seed`: round * 100000 + k unless `seed` is given, so a
        round is reproducible. strategy="evolved" uses the prompts of crafter.evolve(). Every
        argument is checked (RoundSpec.validated) before anything is recorded; `spec=` takes a
        ready RoundSpec instead of the keyword arguments. backend: where this round runs ("local", a
        dc.RayBackend, ...); default: the project's `crafter.backend`.
        """
        if spec is None:
            spec = RoundSpec(
                strategies=strategy,  # type: ignore[arg-type]  # RoundSpec.validated normalises
                per_class=per_class,
                classes=classes,  # type: ignore[arg-type]
                prompts=prompts,  # type: ignore[arg-type]
                negative_prompts=negative_prompts,  # type: ignore[arg-type]
                steps=steps,
                guidance=guidance,
                strength=strength,
                latent_perturbation=latent_perturbation,
                caption_template=caption_template,
                seed=seed,
                filter=filter,
                batch_size=batch_size,
            )
        return self.rounds_runner.generate(
            spec.validated(), background=background, progress=progress, backend=self._round_backend(backend)
        )

    def next_round(self) -> int:
        """The number the next generation round gets (GAP / evolution rounds use it too)."""
        return self.rounds_runner.next_round()

    def log_round(self, entry: dict[str, Any]) -> None:
        """Record (or replace) one round's entry in rounds.json; `entry["round"]` is required."""
        if "round" not in entry:
            raise ValueError("a round entry needs its 'round' number: use crafter.next_round()")
        self.rounds_runner.log_round(dict(entry))

    def _next_round(self) -> int:
        return self.rounds_runner.next_round()

    def _round_backend(self, backend: BackendConfig) -> ImageBackend | None:
        """The runner's image seam for one round: None -> the project's backend."""
        return None if backend is None else backend_from_config(backend).for_models(self.models)

    def cancel(self) -> None:
        """Cancel the running generation job (finished batches stay stored)."""
        if self.job is not None:
            self.job.cancel()

    def regenerate(self, sample_id: str, *, alone: bool = False) -> Image.Image:
        """Regenerate a generated image from its stored provenance.

        By default the image's whole batch is replayed (same prompts, seeds and order), which is
        bit-exact on the same device and library versions. `alone=True` runs just this image with
        its own seed: faster, and equal up to float rounding (batched kernels may sum in another order).
        """
        return self.rounds_runner.regenerate(sample_id, alone=alone)

    # ---- feedback -----------------------------------------------------------------------------------------
    def feedback(
        self,
        bad: Iterable[str] | None = None,
        good: Iterable[str] | None = None,
        bad_labels: Sequence[str] | None = None,
        removed: Iterable[str] | None = None,
        clear: Iterable[str] | None = None,
    ) -> dict[str, int]:
        """Mark samples good / bad (with optional reasons) / removed, or clear their marks; the same as
        the widget's buttons. `crafter.undo()` / `crafter.redo()` step through these changes.

        Every action is also appended to feedback.json (`crafter.feedback_log`) for prompt evolution.
        """
        bad = self._check_ids(bad or [], "ids in bad")
        good = self._check_ids(good or [], "ids in good")
        removed = self._check_ids(removed or [], "ids in removed")
        clear = self._check_ids(clear or [], "ids in clear")
        both = sorted(set(bad) & set(good))
        if both:
            raise ValueError(f"ids {both[:5]} are marked both bad and good: pass each id once")
        labels = [str(x) for x in (bad_labels or [])]
        touched = list(dict.fromkeys(bad + good + removed + clear))
        before = map_view.FeedbackHistory.values(self.store.samples, touched) if touched else []
        if clear:
            self.store.update(clear, feedback="", feedback_labels="[]")
        if bad:
            self.store.update(bad, feedback="bad", feedback_labels=labels)
        if good:
            self.store.update(good, feedback="good", feedback_labels=[])
        if removed:
            self.store.update(removed, feedback="removed")
        if touched:
            self._feedback_history.record(touched, before, map_view.FeedbackHistory.values(self.store.samples, touched))
            log = self.feedback_log
            log.append(
                {
                    "time": time.time(),
                    "round": self._next_round() - 1,
                    "bad": bad,
                    "good": good,
                    "removed": removed,
                    "bad_labels": labels,
                    "cleared": clear,
                }
            )
            self.store.write_json("feedback.json", log)
            self._emit("feedback", touched)
        return {"bad": len(bad), "good": len(good), "removed": len(removed), "cleared": len(clear)}

    def undo(self) -> list[str]:
        """Undo the last feedback action of this session (the widget's Undo button); returns the ids."""
        return self._step_feedback(redo=False)

    def redo(self) -> list[str]:
        """Redo the last undone feedback action; returns the ids."""
        return self._step_feedback(redo=True)

    def _step_feedback(self, redo: bool) -> list[str]:
        change = self._feedback_history.pop(redo=redo)
        if change.ids:
            self.store.update(list(change.ids), **map_view.feedback_columns(change.after if redo else change.before))
        log = self.feedback_log
        log.append({"time": time.time(), "round": self._next_round() - 1, "redo" if redo else "undo": change.ids})
        self.store.write_json("feedback.json", log)
        self._emit("feedback", change.ids)
        return list(change.ids)

    # ---- prompts (history in prompts.json, written by the round runner; edits computed in map_view.py) ------
    @property
    def prompts(self) -> dict[str, map_view.PromptEntry]:
        """class -> {current, negative_prompt, history}: evolved and edited prompts, kept in the project."""
        return map_view.prompts(self.rounds_runner.prompts_doc(), self.classes)

    def set_prompt(self, cls: str, prompt: str, *, negative_prompt: str | None = None) -> dict[str, object]:
        """Use `prompt` for class `cls` from now on (crafter.generate_evolved uses it); kept in the history."""
        return self.rounds_runner.edit_prompts(
            lambda doc: map_view.set_prompt(doc, self.classes, cls, prompt, negative_prompt=negative_prompt)
        )

    def accept_prompt(self, cls: str) -> dict[str, object]:
        """Accept class `cls`'s current (evolved) prompt; recorded in its history."""
        return self.rounds_runner.edit_prompts(lambda doc: map_view.accept_prompt(doc, self.classes, cls))

    def revert_prompt(self, cls: str, index: int = -2) -> dict[str, object]:
        """Go back to entry `index` of class `cls`'s prompt history (default: the previous prompt)."""
        return self.rounds_runner.edit_prompts(lambda doc: map_view.revert_prompt(doc, self.classes, cls, index))

    # ---- map tools (map_view.py); the widget follows through the "view" event ---------------------------
    def search(self, query: str, *, mode: str = "text", k: int = 24, select: bool = True) -> list[str]:
        """Ids matching `query`: mode="text" searches id, label, caption and prompt; mode="clip" embeds the
        query with the CLIP text encoder and returns the k nearest images. select=True selects them."""
        s = self.store.samples
        if mode == "text":
            ids = map_view.search_text(s, query)
        elif mode == "clip":
            embedder = self.models.require("embedder", "crafter.search(mode='clip')")
            ids = map_view.search_embedding(
                embedder.embed_texts([str(query)])[0], self.embeddings(), s["id"].astype(str).tolist(), k
            )
        else:
            raise ValueError(f"unknown search mode {mode!r}: use 'text' or 'clip'")
        if select:
            self.selection = ids
        return ids

    def neighbors(self, sample_id: str, k: int = 12, *, select: bool = True) -> list[str]:
        """The k samples nearest to `sample_id` by image embedding; select=True selects it and them."""
        sid = self._check_ids([sample_id])[0]
        ids = map_view.neighbors(self.embeddings(), self.store.samples["id"].astype(str).tolist(), sid, k)
        if select:
            self.selection = [sid, *ids]
        return ids

    @property
    def map_is_current(self) -> bool:
        """True when `crafter.projection` returns without computing (every sample already placed, or no
        embedder to place them with); views compute a map that is not current in the background."""
        if not self.models.has("embedder") or len(self.store) < 2:
            return True
        return self._map.layout is not None and self._map.ids == self.store.samples["id"].astype(str).tolist()

    @property
    def can_undo(self) -> tuple[int, int]:
        """How many feedback actions can be undone and redone."""
        h = self._feedback_history
        return len(h.undo_stack), len(h.redo_stack)

    def color_columns(self) -> list[str]:
        """What the map can be coloured by."""
        return map_view.color_columns(self.store.samples)

    def color_codes(self, column: str) -> tuple[np.ndarray, list[str]]:
        """Per-sample category codes and names for colouring by `column`."""
        return map_view.column_codes(self.store.samples, column)

    @property
    def view(self) -> map_view.ViewState:
        """What the map shows (colour column, filters); change it with color_by / filter / isolate."""
        return self._view

    def color_by(self, column: str) -> None:
        """Colour the map by a column: class, round, feedback, flag or any samples column (split, strategy...)."""
        self._set_view(color_by=column)

    def filter(
        self,
        *,
        show_test: bool | None = None,
        show_removed: bool | None = None,
        rounds: Iterable[int] | None | str = "keep",
    ) -> None:
        """Show or hide the held-out test images and removed images, or only some rounds (rounds=None: all)."""
        self._set_view(show_test=show_test, show_removed=show_removed, rounds=rounds)

    def isolate(self, ids: Iterable[str] | None) -> None:
        """Show only these samples on the map (None shows everything again)."""
        self._set_view(isolate=ids)

    def zoom_to(self, ids: Iterable[str] | None = None) -> None:
        """Zoom the map to these samples (default: the selection)."""
        ids = self.selection if ids is None else self._check_ids(ids)
        self._emit("view", {"zoom": list(ids)})

    def _set_view(self, **changes: Any) -> None:
        self._view = map_view.updated_view(self._view, self.store.samples, check_ids=self._check_ids, **changes)
        self._emit("view", {"state": self._view})

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
            first_id: dict[str, str] = {}
            for i, h in zip(ids, hashes):
                first_id.setdefault(h, i)
            # chunk by chunk through the backend (workers on a Ray cluster), each chunk stored as it arrives
            size = max(64, int(getattr(emb, "batch_size", 64)))  # the embedder's own batch: its fastest
            chunks = [missing[start : start + size] for start in range(0, len(missing), size)]
            images = ([self.store.image(first_id[h]) for h in chunk] for chunk in chunks)
            for chunk, arr in zip(chunks, self._backend.embed_images(self.models, images)):
                self.store.put_embeddings(chunk, emb.name, arr)
        elif missing:
            out = self.store.embeddings(hashes, emb.name, partial=True)
            assert out is not None  # partial=True gives an array with rows for the missing hashes too
            rows = [k for k, h in enumerate(hashes) if h in set(missing)]
            out[rows] = emb.embed_images([self.store.image(ids[k]) for k in rows])
            return out
        out = self.store.embeddings(hashes, emb.name)
        if out is None:
            return np.zeros((0, emb.dim), dtype=np.float32)
        return out

    # ---- export -------------------------------------------------------------------------------------------
    def export(self, out: str | os.PathLike, format: str = "imagefolder", **options: Unpack[ExportOptions]) -> Path:
        """Write the expanded dataset: real train + accepted generated images (+ real test, kept apart).

        imagefolder: out/train/<class>/<id>.png, out/test/<class>/<id>.png, out/samples.csv;
        csv: out/images/<id>.png + out/samples.csv; hf: a `datasets` dataset saved with save_to_disk.
        Generated images marked bad/removed, or flagged, are left out unless asked for (options: include_bad=True,
        include_flagged=True; see ExportOptions).
        The target may not be, hold or lie inside the project; overwrite=True only replaces an earlier
        export, and only once the new one is complete (see export.py).
        """
        return export_project(self.store, self.classes, out, format, **options)

    # ---- per-round metrics (metrics.py) -------------------------------------------------------------
    @property
    def student(self) -> Student | None:
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
        return self.metrics_table()

    def metrics_table(self, *, progress: bool = True) -> pd.DataFrame:
        """`crafter.metrics`; progress=False trains the held-out student without a tqdm bar (the view's
        background job: the widget shows its own progress, nothing is printed under it)."""
        from ..loop.metrics import round_metrics

        emb_model = self.models.require("embedder", "crafter.metrics")
        s = self.store.samples
        gen = s[s["source"] == "generated"]
        if not len(gen):
            return self._with_student_accuracy(pd.DataFrame(columns=["round", "n_generated"]), progress=progress)
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
            seeds = np.array(
                [parent_probs.get(p, np.full(len(self.classes), np.nan)) for p in g["parent_id"]], dtype=np.float32
            )
            row = round_metrics(
                probs,
                np.array([index[x] for x in g["label"]]),
                g_emb,
                real_emb,
                seed_probs=seeds,
                real_probs=real_probs,
                real_labels=real_labels,
                round=int(rnd),
            )
            row["strategies"] = ",".join(sorted(set(g["strategy"])))
            row["flagged"] = int((g["flag"] != "").sum())
            row["bad"] = int((g["feedback"] == "bad").sum())
            rows.append(row)
        return self._with_student_accuracy(pd.DataFrame(rows), progress=progress)

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
            raise TypeError(
                f"heldout must be a dc.Dataset (e.g. ds.test), 'auto' (the test split) or None (off), "
                f"got {type(value).__name__}"
            )
        self._heldout, self._heldout_fp = value, None

    def _with_student_accuracy(self, frame: pd.DataFrame, *, progress: bool = True) -> pd.DataFrame:
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
            self.store,
            self.classes,
            ds,
            rounds,
            fingerprint=self._heldout_fp[1],
            embedder=self.models.embedder if self.models.has("embedder") else None,
            options=self.heldout_options,
            progress=progress,
        )
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
        self._backend.close()
        open_projects.release(self.store)

    def __enter__(self) -> "DataCrafter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- student, prompt evolution, GAP (issue 7; the logic lives in student.py / evolution.py / adversarial.py) ----
    def train_student(
        self,
        *,
        keep_flagged: bool = False,
        include_generated: bool = True,
        progress: bool | Callable[[int, int], None] = True,
        cancel: Cancel = None,
        **options: Any,
    ) -> Student:
        """Train the student on the real train images + accepted generated ones; saved to <project>/student.

        options go to student.train_student (kind="cnn"|"probe", backbone=..., epochs=..., seed=...);
        progress: a tqdm bar (True), none (False) or a callable(done, total); cancel: an Event or a callable.
        """
        from ..loop.student import train_student, training_set_from_samples

        images, labels, _ = training_set_from_samples(
            self.store.samples, self.store.image, keep_flagged=keep_flagged, include_generated=include_generated
        )
        embedder = self.models.embedder if self.models.has("embedder") else None
        student = train_student(
            images,
            labels,
            self.classes,
            embedder=embedder,
            progress=progress,
            should_stop=stop_check(cancel),
            **options,
        )
        student.save(self.project / "student")
        self._student = student
        return student

    def _current_student(self) -> Student:
        from ..loop.student import Student, StudentError

        # trained here > given in models by the user > saved in this project
        if self._student is not None:
            return self._student
        if self.models.has("student"):
            return self.models.student
        if (self.project / "student" / "student.json").is_file():
            try:
                self._student = Student.load(
                    self.project / "student", embedder=self.models.embedder if self.models.has("embedder") else None
                )
            except StudentError:
                raise
            except Exception as exc:  # noqa: BLE001 - a truncated or edited file: the student can be trained again
                raise StudentError(
                    f"the saved student in {self.project / 'student'} is damaged ({type(exc).__name__}: "
                    f"{str(exc)[:120]}): train it again with crafter.train_student()"
                ) from None
            return self._student
        raise StudentError("no student yet: call crafter.train_student() first")

    def evaluate(self, ds: Dataset | None = None) -> Evaluation:
        """Accuracy, per-class accuracy and confusion matrix of the student on `ds` (default: the test split)."""
        from ..loop.student import StudentError, evaluate

        ds = ds if ds is not None else self.dataset.test
        if ds is None:
            raise StudentError("the project has no test split: pass a Dataset, e.g. crafter.evaluate(ds.test)")
        return evaluate(self._current_student(), ds)

    def evolve(
        self,
        *,
        vocabulary: Sequence[str] | None = None,
        bad_labels: Sequence[str] = (),
        classes: Sequence[str] | None = None,
        population: int = 4,
        generations: int = 1,
        batch: int = 4,
        seed: int | None = None,
        progress: bool = True,
        cancel: Cancel = None,
        **options: Any,
    ) -> EvolutionResult:
        """Evolve the prompts of the classes with feedback; the result (ranked prompts + diffs) is kept in prompts.json.

        Generate with them next: crafter.generate(strategy="evolved", per_class=...). With the starter
        models, the starter kit supplies the vocabulary, the prompt grammar and the attribute axes
        (starter/prompts.py). Pass `axes={"background": [...phrases]}` to let lassos without words
        ("fewer of these") rebalance a class over those phrases with a mixture of prompts.
        """
        gen = self.models.require("generator", "crafter.evolve()")
        if str(getattr(gen, "name", "")).startswith("starter/"):
            from ..starter.prompts import starter_axes, starter_compose, starter_vocabulary

            vocabulary = starter_vocabulary() if vocabulary is None else vocabulary
            options.setdefault("compose", starter_compose)
            options.setdefault("axes", starter_axes())
        return self.rounds_runner.evolve(
            vocabulary=vocabulary,
            compose=options.pop("compose", None),
            seed=seed,
            batch=batch,
            progress=progress,
            cancel=cancel,
            bad_labels=bad_labels,
            only_classes=classes,
            population=population,
            generations=generations,
            **options,
        )

    def generate_evolved(self, per_class: int = 20, **options: Any) -> list[str] | Job:
        """Generate a round with the current evolved prompts (prompts.json): generate(strategy="evolved")."""
        return self.generate(per_class=per_class, strategy="evolved", **options)

    def adversarial(
        self,
        target: str | None = None,
        steps: int = 200,
        *,
        target_images: Sequence[Image.Image] | None = None,
        per_class: int = 10,
        classes: Sequence[str] | None = None,
        seed: int | None = None,
        progress: bool = True,
        cancel: Cancel = None,
        sources: Sources = None,
        masks: Masks = None,
        **settings: Any,
    ) -> list[str]:
        """GAP: learn adversarial prompt tokens per class against the student, guided to `target`
        (a description) and/or `target_images` (unlabelled); store `per_class` images each. Returns the new ids.

        sources="train" starts from the real train images of each class (img2img, parent_id in the
        rows) and masks="plain-background" (or a function / {sample id: mask}) keeps each source's
        object pixels, so only the context changes and the label is kept; see controller/rounds.gap_round.
        settings go to gap.GapConfig (lr, n_tokens, sampler_steps, batch, guidance, strength, shared, ...).
        """
        from ..loop.gap import GapConfig, GapError

        self.models.require("generator", "crafter.adversarial()")
        student = self._current_student()
        if target is None and not target_images:
            raise GapError(
                "GAP needs a target: target='a description of the test distribution' and/or target_images=[...]"
            )
        shared = bool(settings.pop("shared", False))  # one token set for all classes (k times cheaper)
        config = GapConfig(steps=int(steps), **settings)
        return self.rounds_runner.gap(
            student,
            classes,
            target=target,
            target_images=target_images,
            per_class=per_class,
            seed=seed,
            config=config,
            shared=shared,
            sources=sources,
            masks=masks,
            progress=progress,
            cancel=cancel,
        )


def _take(counts: Any, key: tuple) -> bool:
    """True (and one fewer left) if `key` is still counted as already stored."""
    if counts.get(key, 0) > 0:
        counts[key] -= 1
        return True
    return False

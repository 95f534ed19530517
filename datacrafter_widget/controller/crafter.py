"""`DataCrafter`: the public facade over one project's services; every method is a short delegation.

Data flows one way: dataset -> store -> generate -> embed + label -> project -> widget ->
feedback -> evolve -> generate. The services, each built from the `Project` (store, classes,
events, rounds log, prompt book, feedback log) and never from this facade:

- `RoundRunner` (runner.py): every round (generate, evolve, GAP) and regenerate; `crafter.job`;
- `MapService` (map_service.py): projection, content labels, search, neighbours, selection, view;
- `EvaluationService` (evaluation.py): student, evaluation, metrics, held-out split;
- `Embeddings` (embeddings.py): image embeddings, cached by hash, through the backend.

The widget subscribes with `crafter.on(event, fn)`: "samples" (new ids stored), "feedback" (ids
changed), "selection" (ids), "progress" (Job), "projection" (frame), "view" (state or zoom).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

import numpy as np
import pandas as pd
from PIL import Image

from ..data.dataset import Dataset
from ..data.store import SampleStore
from ..models.bundle import Models
from ..seeds import ROUND_SEED_STRIDE, round_seed
from .backends import Backend, BackendConfig, backend_from_config
from .embeddings import Embeddings
from .evaluation import EvaluationService
from . import open_projects
from .export import EXPORT_FORMATS, ExportOptions, export_project
from .jobs import Cancel, Job
from .map_service import MapService
from .map_view import ViewState
from .project import EVENTS, Project, UnknownSampleError
from .prompt_book import PromptEntry
from .round_spec import Prompts, RoundSpec
from .rounds import Masks, Sources
from .runner import JobRunningError, RoundRunner

if TYPE_CHECKING:
    from ..loop.content_labels import Labeler
    from ..loop.evolution import EvolutionResult
    from ..loop.student import Evaluation, Student
    from ..ui.view import CrafterView
    from ..ui.widget import CrafterWidget

__all__ = [
    "DataCrafter",
    "UnknownSampleError",
    "JobRunningError",
    "ROUND_SEED_STRIDE",
    "round_seed",
    "EXPORT_FORMATS",
    "EVENTS",
]


class DataCrafter:
    """Expand a small labelled dataset with generated images, with full provenance, in a project folder."""

    def __init__(
        self,
        ds: Dataset,
        models: Models | None = None,
        project: str | os.PathLike[str] = "runs/datacrafter",
        *,
        batch_size: int | None = None,
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
            models = _checked(models)
            self._setup(Project.create(store, ds, models.describe()), models, ds, batch_size, backend)
            self.heldout = heldout
        except BaseException:
            open_projects.release(store)
            raise

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        models: Models | None = None,
        *,
        readonly: bool = False,
        batch_size: int | None = None,
        backend: BackendConfig = None,
    ) -> DataCrafter:
        """Resume a project after a kernel restart (models are optional for browsing)."""
        store = SampleStore(path, readonly=True) if readonly else open_projects.acquire(path, create=False)
        try:
            project = Project.open(store)
            self = cls.__new__(cls)
            self._setup(project, _checked(models), project.dataset(), batch_size, backend)
            return self
        except BaseException:
            open_projects.release(store)
            raise

    def _setup(
        self, project: Project, models: Models, ds: Dataset, batch_size: int | None, backend: BackendConfig
    ) -> None:
        self._project = project
        self.store = project.store
        self.project = project.path
        self.classes = project.classes
        self.models = models
        self.dataset = ds
        # where rounds, bulk captions and embeddings run (backends.py); a project remembers its choice
        self._backend = backend_from_config(project.meta().get("backend"))
        self._embeddings = Embeddings(project, models, self._backend)
        self.rounds_runner = RoundRunner(project, models, self._backend, self._embeddings, batch_size=batch_size)
        self._map = MapService(project, models, self._embeddings)
        self._evaluation = EvaluationService(project, models, self._embeddings, ds)
        if backend is not None:
            self.backend = backend

    # ---- settings and state -------------------------------------------------------------------
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
        self._backend = self._embeddings.backend = self.rounds_runner.backend = new
        if not self.store.readonly:
            self._project.update_meta(backend=new.config())

    @property
    def batch_size(self) -> int:
        """Images per pipeline call when a round does not set its own: the value given, else the
        generator's default (`models.generator.default_batch_size`: 64 for the starter kit, 8 for Stable
        Diffusion); set it to None to go back to that default."""
        return self.rounds_runner.batch_size

    @batch_size.setter
    def batch_size(self, value: int | None) -> None:
        self.rounds_runner.batch_size = value

    @property
    def filter_mode(self) -> str:
        """The class filter: "auto", "zero-shot" or "prototypes" (loop/class_filter.py)."""
        return self._project.filter_mode

    @filter_mode.setter
    def filter_mode(self, value: str) -> None:
        self._project.filter_mode = value

    @property
    def job(self) -> Job | None:
        """The running (or last) generation job."""
        return self.rounds_runner.job

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
        return self.store.image(self._project.check_ids([sample_id])[0])

    @property
    def rounds(self) -> list[dict[str, Any]]:
        """One dict per generation round (settings, requested / stored counts, status)."""
        return self._project.rounds.entries()

    @property
    def feedback_log(self) -> list[dict[str, Any]]:
        """Every feedback action in order: {time, round, bad, good, removed, bad_labels, cleared}."""
        return self._project.feedback.entries()

    def embeddings(self, ids: Sequence[str] | None = None) -> np.ndarray:
        """float32 (n, d) embeddings of the samples (all by default), cached in the store by image hash."""
        return self._embeddings(ids)

    # ---- events -------------------------------------------------------------------------------
    def on(self, event: str, fn: Callable[..., None]) -> None:
        """Call `fn(payload)` on an event: samples | feedback | selection | progress | projection | view."""
        self._project.events.on(event, fn)

    def off(self, event: str, fn: Callable[..., None]) -> None:
        self._project.events.off(event, fn)

    # ---- generation (runner.py) ---------------------------------------------------------------
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
        *,
        classes: Sequence[str] | None = None,
        batch_size: int | None = None,
        latent_perturbation: float | None = None,
        caption_template: str | None = None,
        progress: bool = True,
        spec: RoundSpec | None = None,
        backend: BackendConfig = None,
    ) -> list[str]:
        """Generate `per_class` images per class (and per strategy) and store them as one round.

        Blocks (tqdm progress; Ctrl-C cancels and keeps finished batches) and returns the new sample
        ids; `generate_background` runs the same round in a Job instead. Seeds follow `round_seed`:
        round * 100000 + k unless `seed` is given, so a round is reproducible. strategy="evolved"
        uses the prompts of crafter.evolve() (`generate_evolved`). Every
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
        run_on = None if backend is None else backend_from_config(backend)
        return self.rounds_runner.generate(spec.validated(), progress=progress, backend=run_on)

    def generate_background(
        self, spec: RoundSpec | None = None, *, backend: BackendConfig = None, **settings: Any
    ) -> Job:
        """Start the round `generate(**settings)` (or `spec`) in a background Job and return it at once:
        `.progress`, `.cancel()` (finished batches stay stored), `.wait()` -> the new ids. The kernel
        stays free, so the widget keeps answering."""
        spec = RoundSpec.from_dict(settings) if spec is None else spec.validated()
        run_on = None if backend is None else backend_from_config(backend)
        return self.rounds_runner.start(spec, backend=run_on)

    def generate_evolved(self, per_class: int = 20, **options: Any) -> list[str]:
        """Generate a round with the current evolved prompts (prompts.json): generate(strategy="evolved")."""
        return self.generate(per_class=per_class, strategy="evolved", **options)

    def next_round(self) -> int:
        """The number the next generation round gets (GAP / evolution rounds use it too)."""
        return self._project.rounds.next_round()

    def log_round(self, entry: dict[str, Any]) -> None:
        """Record (or replace) one round's entry in rounds.json; `entry["round"]` is required."""
        self._project.rounds.log(entry)

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

    def adversarial(
        self,
        target: str | Sequence[str] | Mapping[str, Sequence[str]] | None = None,
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

        target may also be several descriptions, or {class: [descriptions]} (e.g. the contexts of
        captions of target images): token set k is guided toward description k; with init="target"
        the sets start from the descriptions' words, and with more descriptions than token_sets the
        ones the student finds hardest are kept. class_weight=1 keeps each image readable as its class.

        sources="train" starts from the real train images of each class (img2img, parent_id in the
        rows) and masks="plain-background" (or a function / {sample id: mask}) keeps each source's
        object pixels, so only the context changes and the label is kept; see controller/rounds.gap_round.
        settings go to gap.GapConfig (lr, n_tokens, sampler_steps, batch, guidance, strength, shared, ...).
        """
        from ..loop.gap import GapConfig, GapError

        self.models.require("generator", "crafter.adversarial()")
        student = self._evaluation.current_student()
        if target is None and not target_images:
            raise GapError(
                "GAP needs a target: target='a description of the test distribution' and/or target_images=[...]"
            )
        shared = bool(settings.pop("shared", False))  # one token set for all classes (k times cheaper)
        return self.rounds_runner.gap(
            student,
            classes,
            target=target,
            target_images=target_images,
            per_class=per_class,
            seed=seed,
            config=GapConfig(steps=int(steps), **settings),
            shared=shared,
            sources=sources,
            masks=masks,
            progress=progress,
            cancel=cancel,
        )

    # ---- feedback (feedback_log.py) -----------------------------------------------------------
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
        check = self._project.check_ids
        marks = {
            "bad": check(bad or [], "ids in bad"),
            "good": check(good or [], "ids in good"),
            "removed": check(removed or [], "ids in removed"),
            "clear": check(clear or [], "ids in clear"),
        }
        touched = self._project.feedback.mark(**marks, bad_labels=[str(x) for x in (bad_labels or [])])
        if touched:
            self._project.events.emit("feedback", touched)
        return {
            "bad": len(marks["bad"]),
            "good": len(marks["good"]),
            "removed": len(marks["removed"]),
            "cleared": len(marks["clear"]),
        }

    def undo(self) -> list[str]:
        """Undo the last feedback action of this session (the widget's Undo button); returns the ids."""
        return self._step_feedback(redo=False)

    def redo(self) -> list[str]:
        """Redo the last undone feedback action; returns the ids."""
        return self._step_feedback(redo=True)

    def _step_feedback(self, *, redo: bool) -> list[str]:
        ids = self._project.feedback.step(redo=redo)
        self._project.events.emit("feedback", ids)
        return ids

    @property
    def can_undo(self) -> tuple[int, int]:
        """How many feedback actions can be undone and redone."""
        return self._project.feedback.can_undo

    # ---- prompts (prompt_book.py) -------------------------------------------------------------
    @property
    def prompts(self) -> dict[str, PromptEntry]:
        """class -> {current, negative_prompt, mixture, accepted, history}: evolved and edited prompts."""
        return self._project.prompts.entries()

    def set_prompt(self, cls: str, prompt: str, *, negative_prompt: str | None = None) -> dict[str, object]:
        """Use `prompt` for class `cls` from now on (crafter.generate_evolved uses it); kept in the history."""
        return self._project.prompts.set_prompt(cls, prompt, negative_prompt=negative_prompt)

    def accept_prompt(self, cls: str) -> dict[str, object]:
        """Accept class `cls`'s current (evolved) prompt; recorded in its history."""
        return self._project.prompts.accept(cls)

    def revert_prompt(self, cls: str, index: int = -2) -> dict[str, object]:
        """Go back to entry `index` of class `cls`'s prompt history (default: the previous prompt)."""
        return self._project.prompts.revert(cls, index)

    # ---- the map (map_service.py); the widget follows through the "view" event ----------------
    @property
    def selection(self) -> list[str]:
        """Sample ids selected (lasso in the widget, or set from Python)."""
        return self._map.selection

    @selection.setter
    def selection(self, ids: Iterable[str] | None) -> None:
        self._map.select(ids)

    @property
    def projection(self) -> pd.DataFrame:
        """kind (image | label), id, text, x, y (+ members on label rows): every sample and the content
        labels in one 2D map (M2M). Samples added since the last call are placed first,
        incrementally, when an embedder is available; without one, the last stored map is returned."""
        return self._map.projection()

    def update_projection(self, *, full: bool = False) -> pd.DataFrame:
        """Label and place new samples in the map (or, with full=True, lay everything out anew)."""
        return self._map.update(full=full)

    def set_projection(self, frame: pd.DataFrame) -> None:
        """Show a layout computed elsewhere (kind, id, text, x, y) and tell the views."""
        self._map.set_projection(frame)

    @property
    def map_is_current(self) -> bool:
        """True when `crafter.projection` returns without computing (every sample already placed, or no
        embedder to place them with); views compute a map that is not current in the background."""
        return self._map.is_current

    @property
    def labeler(self) -> Labeler:
        """The content labeler: models.labeler, or a CLIP vocabulary labeler built from the class names
        and the real captions; CLIP labelers are calibrated on the real images' embeddings."""
        return self._map.labeler

    def content_labels(self, ids: Sequence[str] | None = None) -> dict[str, list[str]]:
        """Content labels per sample id (computed and cached by image hash on first use)."""
        return self._map.content_labels(ids)

    def search(self, query: str, *, mode: str = "text", k: int = 24, select: bool = True) -> list[str]:
        """Ids matching `query`: mode="text" searches id, label, caption and prompt; mode="clip" embeds the
        query with the CLIP text encoder and returns the k nearest images. select=True selects them."""
        return self._map.search(query, mode=mode, k=k, select=select)

    def neighbors(self, sample_id: str, k: int = 12, *, select: bool = True) -> list[str]:
        """The k samples nearest to `sample_id` by image embedding; select=True selects it and them."""
        return self._map.neighbors(sample_id, k, select=select)

    def color_columns(self) -> list[str]:
        """What the map can be coloured by."""
        return self._map.color_columns()

    def color_codes(self, column: str) -> tuple[np.ndarray, list[str]]:
        """Per-sample category codes and names for colouring by `column`."""
        return self._map.color_codes(column)

    @property
    def view(self) -> ViewState:
        """What the map shows (colour column, filters); change it with color_by / filter / isolate."""
        return self._map.view

    def color_by(self, column: str) -> None:
        """Colour the map by a column: class, round, feedback, flag or any samples column (split, strategy...)."""
        self._map.set_view(color_by=column)

    def filter(
        self,
        *,
        show_test: bool | None = None,
        show_removed: bool | None = None,
        rounds: Iterable[int] | None | str = "keep",
        hide: Mapping[str, Iterable[Any]] | None | str = "keep",
        only: Mapping[str, Iterable[Any]] | None = None,
    ) -> None:
        """Show or hide the held-out test images and removed images, or only some rounds (rounds=None: all).

        hide={"label": ["3"], "content_label": ["stripes"]} hides those values of a field (a samples
        column, or "content_label"; an empty list shows the field's values again, hide=None every
        field's); only={"strategy": ["caption"]} shows that value alone. The map's legend and sidebar
        do the same; the filters are kept with the project."""
        self._map.set_view(show_test=show_test, show_removed=show_removed, rounds=rounds, hide=hide, only=only)

    def isolate(self, ids: Iterable[str] | None) -> None:
        """Show only these samples on the map (None shows everything again)."""
        self._map.set_view(isolate=ids)

    def zoom_to(self, ids: Iterable[str] | None = None) -> None:
        """Zoom the map to these samples (default: the selection)."""
        self._map.zoom_to(ids)

    # ---- student and metrics (evaluation.py) --------------------------------------------------
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
        data = {"keep_flagged": keep_flagged, "include_generated": include_generated}
        return self._evaluation.train_student(data, progress, cancel, options)

    @property
    def student(self) -> Student | None:
        """The current student (trained here, given in models, or saved in the project), or None."""
        return self._evaluation.student()

    def evaluate(self, ds: Dataset | None = None) -> Evaluation:
        """Accuracy, per-class accuracy and confusion matrix of the student on `ds` (default: the test split)."""
        return self._evaluation.evaluate(ds)

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per generation round: informativeness, class maintenance, diversity, distance (CMMD,
        metrics.py), with the strategies and flag / bad-feedback counts. Class probabilities come from
        the class filter's classifier (zero-shot when no classifier works on the real images)."""
        return self.metrics_table()

    def metrics_table(self, *, progress: bool = True, train: bool | Collection[int] = True) -> pd.DataFrame:
        """`crafter.metrics`; progress=False trains the held-out student without a tqdm bar (the view's
        background job: the widget shows its own progress, nothing is printed under it). train: which
        rounds' held-out students may be trained now (True: all; False: none, their student_acc is NaN
        until trained; or round numbers), so a view can show the round's metrics at once."""
        return self._evaluation.metrics_table(progress=progress, train=train)

    @property
    def heldout(self) -> Dataset | None:
        """The split `crafter.metrics` scores the per-round student on (student_acc); None: no student column.

        Default ("auto"): the dataset's test split when it has one. Set a Dataset to use another.
        """
        return self._evaluation.heldout

    @heldout.setter
    def heldout(self, value: Dataset | str | None) -> None:
        self._evaluation.heldout = value

    @property
    def heldout_options(self) -> dict[str, Any]:
        """Options for the per-round held-out student (student.train_student: seed=, steps=, kind=, ...)."""
        return self._evaluation.heldout_options

    @heldout_options.setter
    def heldout_options(self, value: dict[str, Any]) -> None:
        self._evaluation.heldout_options = dict(value)

    # ---- export and display (ui/display.py: one widget per crafter; text only outside a notebook) -------------------------------------------------------------------
    def export(
        self, out: str | os.PathLike[str], format: str = "imagefolder", **options: Unpack[ExportOptions]
    ) -> Path:
        """Write the expanded dataset: real train + accepted generated images (+ real test, kept apart).

        imagefolder: out/train/<class>/<id>.png, out/test/<class>/<id>.png, out/samples.csv;
        csv: out/images/<id>.png + out/samples.csv; hf: a `datasets` dataset saved with save_to_disk.
        Generated images marked bad/removed, or flagged, are left out unless asked for (options: include_bad=True,
        include_flagged=True; see ExportOptions).
        The target may not be, hold or lie inside the project; overwrite=True only replaces an earlier
        export, and only once the new one is complete (see export.py).
        """
        return export_project(self.store, self.classes, out, format, **options)

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

    # ---- lifetime -----------------------------------------------------------------------------
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

    def __enter__(self) -> DataCrafter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _checked(models: Models | None) -> Models:
    if models is not None and not isinstance(models, Models):
        raise TypeError(f"models must be a dc.Models (e.g. dc.starter.models()), got {type(models).__name__}")
    return models if models is not None else Models()

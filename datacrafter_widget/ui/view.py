"""Binds a CrafterWidget to a controller: the controller's events redraw the widget, the widget's
commands (ui/commands.py) call the controller's public methods.

The view owns nothing the controller owns: the selection is `crafter.selection` (the widget's
selection trait is its picture in the browser), prompts, feedback and view state are read back from
the controller after each change. Its own state is what drawing needs: the thumbnail cache, the
row order of the map, where content labels sit.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence, Union

import numpy as np
import pandas as pd
from PIL import Image

from ..controller.map_view import column_numbers
from ..loop.metrics import MetricsError
from .codecs import COLOR_MODES, png_bytes, feedback_codes, thumbnail
from .commands import COMMANDS, parse
from .widget import CrafterWidget

if TYPE_CHECKING:
    from ..controller.jobs import Job
    from ..controller.map_view import ViewState
    from ..controller.prompt_book import PromptEntry
    from ..controller.round_spec import RoundSpec
    from ..loop.evolution import EvolutionResult

__all__ = ["CrafterController", "CrafterView", "label_anchor"]

log = logging.getLogger(__name__)


_Ids = Union[Iterable[str], None]  # sample ids
_Labels = Union[Sequence[str], None]  # feedback labels


class CrafterController(Protocol):
    """What the view needs from a controller (`DataCrafter` implements it); the view uses nothing else."""

    classes: list[str]
    selection: list[str]

    @property
    def samples(self) -> pd.DataFrame: ...
    @property
    def projection(self) -> pd.DataFrame: ...
    @property
    def map_is_current(self) -> bool: ...
    @property
    def view(self) -> ViewState: ...
    @property
    def prompts(self) -> dict[str, PromptEntry]: ...
    @property
    def metrics(self) -> pd.DataFrame: ...
    def metrics_table(self, *, progress: bool = True, train: bool | Collection[int] = True) -> pd.DataFrame: ...
    @property
    def can_undo(self) -> tuple[int, int]: ...
    def on(self, event: str, fn: Callable[..., None]) -> None: ...
    def off(self, event: str, fn: Callable[..., None]) -> None: ...
    def update_projection(self, *, full: bool = False) -> pd.DataFrame: ...
    def image(self, sample_id: str) -> Image.Image: ...
    def regenerate(self, sample_id: str, *, alone: bool = False) -> Image.Image: ...
    def feedback(
        self, bad: _Ids = None, good: _Ids = None, bad_labels: _Labels = None, removed: _Ids = None, clear: _Ids = None
    ) -> dict[str, int]: ...
    def undo(self) -> list[str]: ...
    def redo(self) -> list[str]: ...
    def generate_background(self, spec: RoundSpec | None = None, **settings: Any) -> Job: ...
    def generate_evolved(self, per_class: int = 20, **options: Any) -> list[str]: ...
    def cancel(self) -> None: ...
    def evolve(self, **options: Any) -> EvolutionResult: ...
    def set_prompt(self, cls: str, prompt: str, *, negative_prompt: str | None = None) -> dict[str, object]: ...
    def accept_prompt(self, cls: str) -> dict[str, object]: ...
    def revert_prompt(self, cls: str, index: int = -2) -> dict[str, object]: ...
    def search(self, query: str, *, mode: str = "text", k: int = 24, select: bool = True) -> list[str]: ...
    def neighbors(self, sample_id: str, k: int = 12, *, select: bool = True) -> list[str]: ...
    def color_by(self, column: str) -> None: ...
    def filter(
        self,
        *,
        show_test: bool | None = None,
        show_removed: bool | None = None,
        rounds: Iterable[int] | None | str = "keep",
        hide: Mapping[str, Iterable[Any]] | None | str = "keep",
        only: Mapping[str, Iterable[Any]] | None = None,
    ) -> None: ...
    def isolate(self, ids: Iterable[str] | None) -> None: ...
    def color_codes(self, column: str) -> tuple[np.ndarray, list[str]]: ...
    def color_columns(self) -> list[str]: ...


THUMB_CACHE = 20_000  # thumbnails kept in the kernel, by image hash (~60 MB at 32 px)


def _strategies() -> tuple[str, ...]:
    """The strategy menu: the controller's one list of strategies a Generate can use ("evolved"
    generates from the prompts panel)."""
    from ..loop.strategies import GENERATE_STRATEGIES

    return tuple(GENERATE_STRATEGIES)


def metrics_svg(frame: pd.DataFrame, *, dark: bool = False, note: str = "") -> str:
    """The metrics chart (loop.metrics.metrics_chart) as SVG text, drawn by vl-convert in this process;
    `note` is its title (what is still computing)."""
    import vl_convert as vlc

    from ..loop.metrics import metrics_chart

    spec = metrics_chart(frame).to_dict()
    if note:
        spec["title"] = {"text": note, "anchor": "start", "fontSize": 12, "fontWeight": "normal"}
    if dark:
        spec.setdefault("config", {})["background"] = "transparent"
    return str(vlc.vegalite_to_svg(spec, theme="dark" if dark else None))


def students_pending(frame: pd.DataFrame) -> list[int]:
    """Rounds whose held-out student accuracy is not known yet (NaN), newest first."""
    if "student_acc" not in frame.columns or "round" not in frame.columns:
        return []
    rounds = frame.loc[frame["student_acc"].isna(), "round"].dropna().astype(int)
    return sorted(set(rounds.tolist()), reverse=True)


def _fallback_layout(samples: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """Positions before any projection exists: one block of a grid per class, so images show at once."""
    xy = np.zeros((len(samples), 2), np.float32)
    labels = samples["label"].astype(str).to_numpy()
    counts = [int((labels == c).sum()) for c in classes]
    cols = max(1, math.ceil(math.sqrt(max(counts, default=1))))  # one square block per class
    per_row = max(1, math.ceil(math.sqrt(len(classes))))  # blocks arranged in a square too
    for k, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        bx, by = (k % per_row) * (cols + 2), (k // per_row) * (cols + 2)
        xy[idx, 0] = bx + np.arange(len(idx)) % cols
        xy[idx, 1] = -(by + np.arange(len(idx)) // cols)
    return xy


def _label_members(label_xy: np.ndarray, image_xy: np.ndarray) -> list[np.ndarray]:
    """Images whose nearest content label is this one (used when the projection gives no memberships)."""
    if len(label_xy) == 0 or len(image_xy) == 0:
        return [np.zeros(0, np.int64) for _ in range(len(label_xy))]
    nearest = np.empty(len(image_xy), np.int64)
    for start in range(0, len(image_xy), 4096):  # bounded memory for 50,000 x labels
        block = image_xy[start : start + 4096]
        d = ((block[:, None, :] - label_xy[None, :, :]) ** 2).sum(axis=2)
        nearest[start : start + 4096] = d.argmin(axis=1)
    return [np.flatnonzero(nearest == j) for j in range(len(label_xy))]


def _contains(sorted_array: np.ndarray, value: int) -> bool:
    k = int(np.searchsorted(sorted_array, value))
    return k < len(sorted_array) and int(sorted_array[k]) == value


def label_anchor(
    member_xy: np.ndarray,
    bounds: tuple[float, float, float, float],
    bins: int = 12,
    previous: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """Where a content label goes: on the densest group of its members, not at their centroid (which
    lands in empty space when members sit in several clusters). A previous anchor is kept while its
    cell still holds at least half as many members as the densest one, so labels do not jump."""
    if len(member_xy) == 0:
        raise ValueError("a label anchor needs at least one member")
    x0, y0, x1, y1 = bounds
    w = h = max(x1 - x0, y1 - y0, 1e-9)  # square cells: a flat map must not make them slivers
    cx = np.clip(((member_xy[:, 0] - x0) / w * bins).astype(int), 0, bins - 1)
    cy = np.clip(((member_xy[:, 1] - y0) / h * bins).astype(int), 0, bins - 1)
    cell = cy * bins + cx
    # Members per 3x3 block of cells around each cell: a spread-out group is not outweighed by a small
    # tight pile that happens to fall in one cell (which made labels jump when images were added).
    grid = np.bincount(cell, minlength=bins * bins).reshape(bins, bins)
    padded = np.pad(grid, 1)
    counts = np.sum([padded[dy : dy + bins, dx : dx + bins] for dy in range(3) for dx in range(3)], axis=0).ravel()
    if previous is not None:
        px = min(bins - 1, max(0, int((previous[0] - x0) / w * bins)))
        py = min(bins - 1, max(0, int((previous[1] - y0) / h * bins)))
        if counts[py * bins + px] * 2 >= counts.max():
            return previous
    top = int(counts.argmax())
    ty, tx = divmod(top, bins)
    near = (np.abs(cy - ty) <= 1) & (np.abs(cx - tx) <= 1)
    best = member_xy[near & (grid.ravel()[cell] > 0)]
    med = np.median(best, axis=0)
    k = int(((best - med) ** 2).sum(axis=1).argmin())  # snap onto a member: never empty space
    return float(best[k, 0]), float(best[k, 1])


class CrafterView:
    """Binds a CrafterWidget to a controller (see `CrafterController`; `DataCrafter` is one).

    Controller -> widget: events "samples", "projection" redraw; "feedback" resends only the
    feedback (and hidden) arrays; "selection" highlights; "view" recolours, filters or zooms;
    "progress" (a Job) drives the one progress bar. Widget -> controller: the selection trait sets
    `crafter.selection` (its one owner, whose "selection" event draws it back: setting a trait to
    the value it holds sends nothing, so there is no echo); commands run the handlers of
    ui/commands.py. The first map of a project is computed in a background job while the images
    show in a grid per class.
    """

    def __init__(self, crafter: CrafterController, thumb_size: int = 32) -> None:
        self.crafter = crafter
        self.widget = CrafterWidget(thumb_size=thumb_size)
        self.ids: list[str] = []
        self._index: dict[str, int] = {}
        self._split: np.ndarray = np.zeros(0, dtype=object)
        self._visible: np.ndarray = np.zeros(0, dtype=bool)  # what the controller's view state shows
        self._rows = pd.DataFrame()  # the samples table the map shows, row i = point i (for hover)
        self._thumbs: OrderedDict[str, np.ndarray] = OrderedDict()  # by image hash, least recently used first
        self._thumb_hashes: np.ndarray = np.zeros(0, dtype=object)  # the hash of each point's image
        self._lock = threading.RLock()
        self._job: Any = None  # the view's own background work the user waits for (first map, evolve)
        # The metrics chart's computation (it may train a held-out student) runs apart and quietly: it never
        # blocks Evolve or Generate, and a request while it runs is served by one more run when it ends.
        self._metrics_job: Any = None  # held-out students, one round at a time
        self._quick_job: threading.Thread | None = None  # the rounds' metrics without training: shown at once
        self._student_error = ""
        self._metrics_again = False
        self._metrics_lock = threading.Lock()
        self._label_pos: dict[str, tuple[float, float]] = {}
        self._label_inputs: tuple[pd.DataFrame, list[np.ndarray], np.ndarray] | None = None
        self._members: dict[str, list[str]] = {}  # content label -> sample ids on the map, shown or not
        self._label_members: list[tuple[str, np.ndarray]] = []  # each shown label's sorted point indices
        self._metrics_frame: pd.DataFrame | None = None

        self.widget.strategies = list(_strategies())
        self.widget.color_options = list(crafter.color_columns())
        # The points show at once (a grid per class until the map exists; the map is computed in a
        # background job); thumbnails are read only when the browser zooms in on them.
        current = crafter.map_is_current
        self.refresh(compute=current)
        self.widget.on_command(self.command)
        self.widget.on_details(self._details)
        self.widget.on_sample(self._sample)
        self.widget.observe(self._widget_selection, names="selection")
        self.widget.observe(self._widget_color, names="color_by")
        self.widget.observe(lambda _change: self._render_chart(), names="theme")
        for event, fn in (
            ("samples", self._refresh_event),
            ("feedback", self._feedback_event),
            ("projection", self._refresh_event),
            ("selection", self._crafter_selection),
            ("progress", self._progress),
            ("view", self._view_event),
        ):
            crafter.on(event, fn)
        if not current:
            self._first_map()
        else:
            self._metrics_in_background()

    # ----------------------------------------------------------------- background work
    def _run(
        self,
        description: str,
        work: Callable[[Any], Any],
        done: Callable[[Any], None] | None = None,
        quiet: bool = False,
        finished: Callable[[Any], None] | None = None,
    ) -> Any:
        """Runs `work(ctx)` in a Job (the kernel stays free); progress and the final status go to the footer."""
        from ..controller.jobs import Job

        job = Job(work, total=0, description=description)

        def on_progress(j: Any) -> None:
            if not quiet:
                self.widget.set_progress(int(j.done), int(j.total), str(j.message or description), bool(j.running))
            if j.running:
                return
            if j.status == "failed" and quiet:
                log.warning("%s failed: %s", description, j.error)
            elif j.status == "failed":
                self.widget.status = f"{description} failed: {j.error}"
            elif not quiet or j.status != "done":
                self.widget.status = f"{description}: {j.status}"
            if j.status == "done" and done is not None:
                done(j.result)
            if finished is not None:
                finished(j)

        job.on_progress(on_progress)
        if quiet:  # the held-out students: nobody waits for them, so they yield the CPU (compute.py)
            self._metrics_job = job.start(low_priority=True)
            return job
        self.widget.set_progress(0, 0, description + " ...", True)
        self._job = job.start()
        return job

    def _first_map(self) -> None:
        n = len(self.ids)
        what = f"computing the map of {n} images"
        self.widget.status = f"computing the map of {n} images (embeddings, content labels, layout); the grid by class shows them meanwhile"

        def work(ctx: Any) -> None:
            ctx.report(0, 0, what)
            self.crafter.update_projection()  # its "projection" event redraws the view

        def done(_result: Any) -> None:
            self.widget.status = f"{n} images on the map"
            self._metrics_in_background()

        self._run(what, work, done=done)

    def _thumbnails(self, idx: np.ndarray) -> np.ndarray:
        """The thumbnail source the widget calls for the points the browser shows zoomed in: cached by
        image hash, else read from the project and shrunk (in the widget's worker thread)."""
        with self._lock:
            hashes, ids = self._thumb_hashes, self.ids
        size = self.widget.thumb_size
        out = np.empty((len(idx), size, size, 3), np.uint8)
        for k, i in enumerate(idx.tolist()):
            h = hashes[i]
            with self._lock:
                tile = self._thumbs.get(h)
                if tile is not None:
                    self._thumbs.move_to_end(h)
            if tile is None or tile.shape[0] != size:
                tile = thumbnail(self.crafter.image(ids[i]), size)
                with self._lock:
                    self._thumbs[h] = tile
                    while len(self._thumbs) > THUMB_CACHE:
                        self._thumbs.popitem(last=False)
            out[k] = tile
        return out

    def _metrics_in_background(self) -> None:
        """The chart after a change: every round's metrics at once, then the held-out students the
        chart lacks, newest round first. The metrics train nothing (a second or less), so they run in a
        thread of their own, not as a background job that would take its turn behind a training."""

        def run() -> None:
            try:
                frame = self.crafter.metrics_table(progress=False, train=False)
            except Exception as err:  # noqa: BLE001 - the chart must never break the view
                log.warning("metrics failed: %s", err)
                return
            self._show_metrics(frame)
            self._students_in_background()

        thread = threading.Thread(target=run, name="dc-metrics", daemon=True)
        thread.start()
        self._quick_job = thread  # started before wait() can see it

    def _students_in_background(self) -> None:
        """Trains the missing held-out students one round at a time, newest first, redrawing the chart
        after each; a round that finishes meanwhile is next."""
        with self._metrics_lock:
            if self._metrics_job is not None and self._metrics_job.running:
                self._metrics_again = True  # look again once the running one ends
                return
            self._metrics_again = False
        self._student_error = ""

        def work(ctx: Any) -> Any:
            tried: set[int] = set()
            while True:
                frame = self._metrics_frame
                pending = [r for r in students_pending(frame) if r not in tried] if frame is not None else []
                if not pending:
                    return None
                ctx.check()
                tried.add(pending[0])
                self._show_metrics(self.crafter.metrics_table(progress=False, train=[pending[0]]))

        def finished(job: Any) -> None:
            if job.status == "failed":
                self._student_error = f"held-out student failed: {job.error}"
                self._render_chart()
            with self._metrics_lock:
                again, self._metrics_again = self._metrics_again, False
            if again:
                self._students_in_background()

        self._run("held-out students", work, quiet=True, finished=finished)

    def wait(self, timeout: float | None = 600) -> None:
        """Waits for the view's background jobs (first map, evolve, then metrics); for scripts and tests."""
        seen: set[int] = set()
        while True:
            jobs = (self._job, self._quick_job, self._metrics_job)
            pending = [j for j in jobs if j is not None and id(j) not in seen]
            if not pending:
                break
            for job in pending:
                seen.add(id(job))
                if isinstance(job, threading.Thread):
                    job.join(timeout=timeout)
                    continue
                try:
                    job.wait(timeout=timeout)
                except Exception:  # noqa: BLE001 - reported in the status already
                    pass

    # ----------------------------------------------------------------- controller -> widget
    def _refresh_event(self, _payload: Any = None) -> None:
        self.refresh()

    def refresh(self, compute: bool = True) -> None:
        """Re-reads samples + projection and sends the points and labels (thumbnails go on demand).

        compute=False uses the grid per class instead of computing a projection that is not ready.
        """
        with self._lock:
            self._refresh(compute)

    def _refresh(self, compute: bool) -> None:
        crafter = self.crafter
        samples = crafter.samples.reset_index(drop=True)
        ids = samples["id"].astype(str)
        proj = crafter.projection if compute else pd.DataFrame()
        xy = None
        if len(proj):
            images = proj[proj["kind"] == "image"]
            pos = images.assign(id=images["id"].astype(str)).drop_duplicates("id", keep="last").set_index("id")
            aligned = pos[["x", "y"]].reindex(ids)
            if len(aligned) and not aligned.isna().to_numpy().any():
                xy = aligned.to_numpy(np.float32).reshape(-1, 2)
                labels_frame = proj[proj["kind"] == "label"]
        if xy is None:  # no projection yet (or it lags behind new samples): grid per class
            xy = _fallback_layout(samples, crafter.classes)
            labels_frame = pd.DataFrame(columns=["kind", "id", "text", "x", "y"])
        frame = samples.assign(x=xy[:, 0], y=xy[:, 1])
        self.ids = ids.tolist()
        self.widget.sample_ids = self.ids
        self._index = dict(zip(self.ids, range(len(self.ids))))
        self._split = samples["split"].astype(str).to_numpy()
        self._rows = samples
        members = self._label_points(labels_frame, xy)
        self._members = {
            str(t): [self.ids[i] for i in m.tolist()] for t, m in zip(labels_frame.get("text", []), members)
        }
        visible = self._visible_of(samples)
        self._label_inputs = (labels_frame, members, xy)
        labels = self._labels(labels_frame, members, xy, visible)
        hashes = samples["hash"].astype(str).to_numpy(dtype=object)
        # Feedback or projection changes keep the same images: the browser keeps the thumbnails it has.
        same_images = np.array_equal(hashes, self._thumb_hashes)
        self._thumb_hashes = hashes
        with self.widget.hold_sync():
            self.widget.set_frame(frame, class_names=list(crafter.classes), labels=labels)
            self._send_facets(samples)
            if not same_images or self.widget.thumbs.get("count") != len(hashes):
                self.widget.set_thumbnail_source(self._thumbnails if len(hashes) else None, len(hashes))
            self._send_hidden(visible)
            self._send_view_state(samples)
            self.widget.selected = [self._index[i] for i in crafter.selection if i in self._index]
            self.widget.prompts = dict(crafter.prompts)
            self._send_history()

    def _send_hidden(self, visible: np.ndarray) -> None:
        self._visible = np.asarray(visible, dtype=bool)
        self.widget.hidden = (~self._visible).astype(np.uint8).tobytes()

    def _visible_of(self, samples: pd.DataFrame) -> np.ndarray:
        """The controller's view state over these rows (content-label filters through the map's labels)."""
        return self.crafter.view.visible(samples, self._members)

    def _send_facets(self, samples: pd.DataFrame) -> None:
        """The filter sidebar's fields and counts source (see CrafterWidget.set_facets)."""
        self.widget.set_facets(samples, {t: [self._index[i] for i in ids] for t, ids in self._members.items()})

    def _label_points(self, labels_frame: pd.DataFrame, xy: np.ndarray) -> list[np.ndarray]:
        """Each content label's member points (indices into the map's rows), shown or not."""
        if len(labels_frame) == 0 or len(xy) == 0:
            return []
        if "members" in labels_frame.columns:  # explicit memberships (sample ids) from the projection
            return [
                np.array(
                    sorted(
                        self._index[i]
                        for i in (m if isinstance(m, (list, tuple, np.ndarray)) else [])
                        if i in self._index
                    ),
                    np.int64,
                )
                for m in labels_frame["members"]
            ]
        return _label_members(labels_frame[["x", "y"]].to_numpy(np.float32), xy)

    def _labels(
        self, labels_frame: pd.DataFrame, members: list[np.ndarray], xy: np.ndarray, visible: np.ndarray
    ) -> list[dict]:
        """Content labels on the densest group of their visible members; labels with none are dropped."""
        self._label_members = []
        if len(labels_frame) == 0 or len(xy) == 0:
            return []
        shown = xy[visible] if visible.any() else xy
        bounds = (
            float(shown[:, 0].min()),
            float(shown[:, 1].min()),
            float(shown[:, 0].max()),
            float(shown[:, 1].max()),
        )
        out, positions = [], {}
        for text, m in zip(labels_frame["text"].astype(str), members):
            m = m[visible[m]] if len(m) else m
            if len(m) == 0:
                continue  # e.g. a class name whose class has no image on the map
            x, y = label_anchor(xy[m], bounds, previous=self._label_pos.get(text))
            positions[text] = (x, y)
            self._label_members.append((text, np.sort(m)))
            out.append({"text": text, "x": x, "y": y, "n": int(len(m)), "members": m.tolist()})
        self._label_pos = positions
        return out

    def _send_view_state(self, samples: pd.DataFrame) -> None:
        state = self.crafter.view
        mode = state.color_by
        if mode not in COLOR_MODES:
            codes, names = self.crafter.color_codes(mode)
            self.widget.color_codes = codes.astype("<u2").tobytes()
            self.widget.color_names = names
            self.widget.set_color_values(column_numbers(samples, mode) if mode in samples.columns else None)
        self.widget.color_by = mode
        self.widget.filters = {
            "show_test": bool(state.show_test),
            "show_removed": bool(state.show_removed),
            "isolated": state.isolate is not None,
            "hide": state.hidden_values,
        }

    def _send_history(self) -> None:
        undo, redo = self.crafter.can_undo
        self.widget.history = {"undo": int(undo), "redo": int(redo)}

    def _feedback_event(self, _ids: Any = None) -> None:
        """Feedback changed: resend the feedback codes and the hidden mask only (not the points)."""
        with self._lock:
            samples = self.crafter.samples.reset_index(drop=True)
            if samples["id"].astype(str).tolist() != self.ids:
                self._refresh(True)
                return
            self._rows = samples
            with self.widget.hold_sync():
                self.widget.feedback = feedback_codes(samples)
                self._send_facets(samples)
                self._send_hidden(self._visible_of(samples))
                if self.crafter.view.color_by not in COLOR_MODES:
                    self._send_view_state(samples)
                self._send_history()

    def _view_event(self, payload: Mapping[str, Any]) -> None:
        if "zoom" in payload:
            idx = [self._index[i] for i in payload["zoom"] if i in self._index]
            if idx:
                self.widget.zoom_to(idx)
            return
        with self._lock:
            samples = self.crafter.samples.reset_index(drop=True)
            visible = self._visible_of(samples)
            with self.widget.hold_sync():
                self._send_hidden(visible)
                self._send_view_state(samples)
                if self._label_inputs is not None and len(samples) == len(self.ids):
                    # Labels follow what is shown: placed on their visible members, gone with them.
                    self.widget.set_labels(self._labels(*self._label_inputs, visible))

    def _crafter_selection(self, ids: Sequence[str]) -> None:
        self.widget.selected = [self._index[i] for i in ids if i in self._index]

    def _progress(self, job: Any) -> None:
        running = bool(getattr(job, "running", False))
        self.widget.set_progress(int(round(job.done)), int(job.total), str(job.message or job.description), running)
        if not running:
            kept = (
                f"; {len(job.result)} images kept" if job.status == "cancelled" and isinstance(job.result, list) else ""
            )
            error = f": {job.error}" if job.status == "failed" else ""
            self.widget.status = f"{job.description}: {job.status}{kept}{error}"
            self._metrics_in_background()

    def update_metrics(self) -> None:
        """Recomputes `crafter.metrics` and shows it (blocking; the view does it in the background)."""
        try:
            frame = self.crafter.metrics_table(progress=False)
        except Exception as err:  # noqa: BLE001 - metrics must never break the view
            log.warning("crafter.metrics failed: %s", err)
            return
        self._show_metrics(frame)

    def _show_metrics(self, frame: Any) -> None:
        """The metrics (one row per round) as a chart below the map, once there is a round."""
        if not isinstance(frame, pd.DataFrame) or frame.empty:
            return
        self._metrics_frame = frame
        self._render_chart()

    def _chart_note(self) -> str:
        """What the chart does not show yet: the held-out students still to train (or why they failed)."""
        if self._student_error:
            return self._student_error
        frame = self._metrics_frame
        pending = students_pending(frame) if frame is not None else []
        if not pending:
            return ""
        rounds = ", ".join(str(r) for r in sorted(pending))
        return f"held-out student accuracy of round{'s' if len(pending) > 1 else ''} {rounds}: training (the other panels are complete)"

    def _render_chart(self) -> None:
        """Renders the metrics chart kernel-side to SVG (vl-convert: no Vega in the browser, no CDN), in
        the host page's light or dark colours."""
        if self._metrics_frame is None:
            return
        try:
            self.widget.chart = metrics_svg(
                self._metrics_frame, dark=self.widget.theme == "dark", note=self._chart_note()
            )
        except MetricsError:
            self.widget.chart = ""  # nothing to plot yet (round 0's student still training): no empty box
        except Exception as err:  # noqa: BLE001 - the chart must never break the view
            self.widget.status = f"metrics chart unavailable: {err} (pip install vl-convert-python for offline charts)"

    # ----------------------------------------------------------------- widget -> controller
    def _widget_selection(self, _change: dict) -> None:
        """A lasso in the browser: the controller's selection becomes those images (unless it already is
        them, in whatever order the controller keeps them: search ranks, Similar puts the query first)."""
        ids = [self.ids[i] for i in self.widget.selected if i < len(self.ids)]
        if set(ids) != set(self.crafter.selection):
            self.crafter.selection = ids

    def _widget_color(self, change: dict) -> None:
        if change["new"] != self.crafter.view.color_by:
            self.crafter.color_by(str(change["new"]))

    # ----------------------------------------------------------------- what commands read
    def command(self, name: str, args: Mapping[str, Any]) -> str | None:
        """Runs one of ui/commands.py's commands with its arguments checked."""
        cmd = COMMANDS[name]
        return cmd.handler(self, parse(cmd, args))

    def markable(self, ids: Iterable[str]) -> tuple[list[str], int]:
        """The ids that may be marked, and how many held-out test images were left out."""
        out, test = [], 0
        for sid in ids:
            k = self._index.get(sid)
            if k is not None and self._split[k] == "test":
                test += 1
            else:
                out.append(sid)
        return out, test

    def row(self, sample_id: str) -> pd.Series:
        """One sample's row as the map shows it."""
        return self._rows.iloc[self._index[sample_id]]

    def visible(self, sample_id: str) -> bool:
        """Whether the controller's view state shows this image on the map."""
        k = self._index.get(sample_id)
        return k is not None and bool(self._visible[k])

    def visible_count(self) -> int:
        return int(self._visible.sum())

    def any_hidden(self) -> bool:
        return not bool(self._visible.all())

    def prompts_changed(self, cls: str, verb: str) -> str:
        prompts = dict(self.crafter.prompts)
        self.widget.prompts = prompts
        return f"prompt for {cls!r} {verb}: {prompts[cls]['current']!r}"

    def cancel(self) -> None:
        self.crafter.cancel()
        if self._job is not None and self._job.running:
            self._job.cancel()

    def evolve(self, ids: Sequence[str]) -> str | None:
        """Prompt evolution for the classes of the selected images, in a worker thread so the
        notebook stays responsive; progress and the new prompts come back through the traits."""
        if self._job is not None and self._job.running:
            return "background work is running (Cancel stops it)"
        classes = sorted({str(self.row(i)["label"]) for i in ids}) or None
        what = f"evolving prompts for {', '.join(classes)}" if classes else "evolving prompts"

        def work(ctx: Any) -> Any:
            return self.crafter.evolve(classes=classes, progress=False, cancel=ctx.cancel_event)

        def done(_result: Any) -> None:
            self.widget.prompts = dict(self.crafter.prompts)
            self.widget.status = f"{what}: done; review the prompts panel, then Generate with strategy 'evolved'"

        self._run(what, work, done=done)
        return None

    def _sample(self, index: int) -> dict:
        """The sample view: the image and its whole provenance, in reading order."""
        sid = self.ids[index]
        row = self._rows.iloc[index]
        out: dict[str, Any] = {"id": sid, "class": row.get("label", "")}
        generated = row.get("source") == "generated"
        names = ("round", "strategy", "prompt", "negative_prompt", "seed", "steps", "guidance", "parent_id")
        for col in ("split", "caption", *(names if generated else ()), "feedback", "feedback_labels", "flag_reason"):
            v = row.get(col)
            if v is None or (isinstance(v, float) and math.isnan(v)) or v in ("", "[]") or (col == "seed" and v == -1):
                continue
            out["parent" if col == "parent_id" else col.replace("_", " ")] = v
        labels = [text for text, m in self._label_members if _contains(m, index)]
        if labels:
            out["content labels"] = ", ".join(labels[:12])
        out["image"] = self.crafter.image(sid)
        return out

    def regenerate(self, sample_id: str) -> str | None:
        """Makes a generated image again from its stored provenance (a background job) and shows it beside
        the stored one in the sample view."""
        if self.row(sample_id).get("source") != "generated":
            return f"{sample_id} is a real image: only generated images can be regenerated"
        if self._job is not None and self._job.running:
            return "background work is running (Cancel stops it)"

        def work(_ctx: Any) -> Any:
            return self.crafter.regenerate(sample_id, alone=True)

        def done(image: Any) -> None:
            if self.widget.sample.get("id") == sample_id:
                self.widget.sample_regenerated = png_bytes(image) or b""
            self.widget.status = f"{sample_id} regenerated from its prompt and seed (shown beside the stored image)"

        self._run(f"regenerating {sample_id}", work, done=done)
        return None

    def _details(self, index: int) -> dict:
        """Compact hover details: what made the image, its content labels and marks (class, kind and
        round are already shown by the browser)."""
        sid = self.ids[index]
        row = self._rows.iloc[index]
        out: dict[str, Any] = {"id": sid}
        if row.get("source") == "generated":
            out["strategy"] = row.get("strategy", "")
            out["prompt"] = row.get("prompt", "")
        else:
            out["split"] = row.get("split", "")
            if row.get("caption"):
                out["caption"] = row["caption"]
        labels = [text for text, m in self._label_members if _contains(m, index)]
        if labels:
            out["labels"] = ", ".join(labels[:6])
        for col in ("feedback", "feedback_labels", "flag_reason"):
            v = row.get(col)
            if v not in (None, "", "[]") and not (isinstance(v, float) and math.isnan(v)):
                out[col] = v
        out["image"] = self.crafter.image(sid)
        return out

"""The map of a project: projection, content labels, search, neighbours, selection and what is visible.

Holds the map's state (the 2D layout through `ProjectMap`, the selection, the view state) and
tells the views through the project's events: "projection" (a new layout), "selection" (ids),
"view" (the view state, or a zoom request). The computations are pure functions in map_view.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..models.bundle import Models
from . import map_view
from .embeddings import Embeddings
from .map_cache import ProjectMap
from .project import Project

if TYPE_CHECKING:
    from ..loop.content_labels import Labeler

__all__ = ["MapService"]


VIEW_JSON = "view.json"  # what the map shows (filters, colour, isolate), kept across restarts


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (where a widget will ask for the map), not in scripts or tests."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class MapService:
    """The map of one project, for one model bundle."""

    def __init__(self, project: Project, models: Models, embeddings: Embeddings) -> None:
        self.project = project
        self.models = models
        self.embeddings = embeddings
        self.stored = ProjectMap(project.store)
        self.view = map_view.view_from_json(
            project.store.read_json(VIEW_JSON, None, derived=True), project.store.samples
        )
        self._selection: list[str] = []
        self._projection: pd.DataFrame | None = None
        self._labeler: Labeler | None = None
        self._lock = threading.RLock()
        if models.has("embedder") and self.stored.layout is None and _in_kernel():
            from ..loop import m2m

            m2m.warm_up()  # a notebook will show the map soon: its layout's compilation starts now

    @property
    def store(self) -> Any:
        return self.project.store

    # ---- selection -------------------------------------------------------------------------------
    @property
    def selection(self) -> list[str]:
        return list(self._selection)

    def select(self, ids: Iterable[str] | None) -> None:
        ids = [] if ids is None else self.project.check_ids(ids, "ids in the selection")
        self._selection = list(dict.fromkeys(ids))
        self.project.events.emit("selection", self.selection)

    # ---- projection ------------------------------------------------------------------------------
    def projection(self) -> pd.DataFrame:
        """Every sample and the content labels in one 2D map; new samples are placed first when an
        embedder can place them, else the last stored map is shown."""
        if self.models.has("embedder") and len(self.store) >= 2:
            self._update(full=False, emit=False)
        elif self._projection is None and self.stored.layout is not None:
            self._projection = self.stored.stored_frame(self.store.samples)
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

    def update(self, *, full: bool = False) -> pd.DataFrame:
        self.models.require("embedder", "the projection (content labels and the 2D map)")
        if len(self.store) < 2:
            raise ValueError("the projection needs at least two images: add real images or generate some first")
        return self._update(full=full, emit=True)

    def _update(self, *, full: bool, emit: bool) -> pd.DataFrame:
        with self._lock:
            s = self.store.samples
            ids = s["id"].astype(str).tolist()
            if not full and self._projection is not None and self.stored.ids == ids:
                return self._projection
            emb = self.embeddings(ids)
            labels = self.stored.labels(s, emb, self.labeler, self.store.image)
            embedder = self.models.embedder
            frame = self.stored.update(s, emb, labels, lambda texts: embedder.embed_texts(list(texts)), full=full)
            self._projection = frame
        if emit:
            self.project.events.emit("projection", frame.copy())
        return frame

    def set_projection(self, frame: pd.DataFrame) -> None:
        missing = [c for c in ("kind", "id", "text", "x", "y") if c not in frame.columns]
        if missing:
            raise ValueError(f"projection frame lacks columns {missing}: it needs kind, id, text, x, y")
        self._projection = frame.copy()
        self.project.events.emit("projection", self._projection.copy())

    @property
    def is_current(self) -> bool:
        """True when `projection()` returns without computing (every sample placed, or nothing to place with)."""
        if not self.models.has("embedder") or len(self.store) < 2:
            return True
        return self.stored.layout is not None and self.stored.ids == self.store.samples["id"].astype(str).tolist()

    # ---- content labels --------------------------------------------------------------------------
    @property
    def labeler(self) -> Labeler:
        """models.labeler, or a CLIP vocabulary labeler from the class names and the real captions;
        CLIP labelers are calibrated on the real images' embeddings."""
        if self._labeler is None:
            from ..loop.content_labels import ClipVocabularyLabeler

            embedder = self.models.require("embedder", "content labels")
            real = self.store.samples
            real = real[real["source"] == "real"]
            labeler = (
                self.models.labeler
                if self.models.has("labeler")
                else ClipVocabularyLabeler(
                    embedder, class_names=self.project.classes, captions=[c for c in real["caption"].astype(str) if c]
                )
            )
            if hasattr(labeler, "calibrate") and len(real):
                labeler.calibrate(self.embeddings(real["id"].tolist()))
            self._labeler = labeler
        return self._labeler

    def content_labels(self, ids: Sequence[str] | None = None) -> dict[str, list[str]]:
        s = self.store.samples
        if ids is not None:
            s = s.set_index("id").loc[self.project.check_ids(ids)].reset_index()
        emb = self.embeddings(s["id"].astype(str).tolist())
        labels = self.stored.labels(s, emb, self.labeler, self.store.image)
        return dict(zip(s["id"].astype(str), labels))

    # ---- search ----------------------------------------------------------------------------------
    def search(self, query: str, *, mode: str = "text", k: int = 24, select: bool = True) -> list[str]:
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
            self.select(ids)
        return ids

    def neighbors(self, sample_id: str, k: int = 12, *, select: bool = True) -> list[str]:
        sid = self.project.check_ids([sample_id])[0]
        ids = map_view.neighbors(self.embeddings(), self.store.samples["id"].astype(str).tolist(), sid, k)
        if select:
            self.select([sid, *ids])
        return ids

    # ---- what the map shows ----------------------------------------------------------------------
    def color_columns(self) -> list[str]:
        return map_view.color_columns(self.store.samples)

    def color_codes(self, column: str) -> tuple[np.ndarray, list[str]]:
        return map_view.column_codes(self.store.samples, column)

    def set_view(self, **changes: Any) -> None:
        """Changes what the map shows, keeps it in view.json (a reopened project shows the same map)
        and tells the views."""
        if changes.get("only"):
            changes["members"] = self.label_members()
        self.view = map_view.updated_view(self.view, self.store.samples, check_ids=self.project.check_ids, **changes)
        if not getattr(self.store, "readonly", False):
            self.store.write_json(VIEW_JSON, map_view.view_to_json(self.view))
        self.project.events.emit("view", {"state": self.view})

    def label_members(self) -> dict[str, list[str]]:
        """Content label -> member ids, from the map as last computed or stored (none before a map)."""
        frame = self._projection
        if frame is None and self.stored.layout is not None:
            frame = self.stored.stored_frame(self.store.samples)
        return map_view.label_members(frame) if frame is not None else {}

    def zoom_to(self, ids: Iterable[str] | None = None) -> None:
        ids = self.selection if ids is None else self.project.check_ids(ids)
        self.project.events.emit("view", {"zoom": list(ids)})

    def visible(self) -> np.ndarray:
        """Which samples (rows of crafter.samples) the view shows."""
        hides_labels = any(c == map_view.CONTENT_LABEL for c, _ in self.view.hide)
        return self.view.visible(self.store.samples, self.label_members() if hides_labels else None)

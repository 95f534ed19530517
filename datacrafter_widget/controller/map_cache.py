"""Keeps a project's map current: content labels per image and the M2M layout, persisted.

This is the "embed + label -> project" step of the loop. The first call lays out every image with
`projection.project`; later calls place only the new images with `projection.place`, so what the
person has already seen stays where it was. The layout, the image ids it covers and the labels
(cached by image hash, since labelling can be a slow VLM call) live in the project folder, so a
reopened project continues the same map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.store import SampleStore
from ..loop.m2m import Layout, load_layout, place, project, projection_frame, save_layout

LAYOUT_FILE = "layout.safetensors"
MAP_JSON = "map.json"  # {"ids": [...], "n": int}: the image ids covered by the layout, in order
LABELS_JSON = "content_labels.json"  # {hash: [label, ...]}


class ProjectMap:
    """The labels and the 2D layout of one project's samples."""

    def __init__(self, store: SampleStore) -> None:
        self.store = store
        self.layout: Layout | None = None
        self.ids: list[str] = []
        self._load()

    def _load(self) -> None:
        path = Path(self.store.path) / LAYOUT_FILE
        meta = self.store.read_json(MAP_JSON, None, derived=True)
        if not path.exists() or not meta:
            return
        try:
            layout = load_layout(str(path))
            ids = [str(i) for i in meta.get("ids", [])]
        except Exception:  # noqa: BLE001 - an unreadable layout or map.json is recomputed, never fatal
            return
        # The layout and map.json are two atomic writes; if a crash fell between them, start over.
        if layout.n_images == len(ids):
            self.layout, self.ids = layout, ids

    # ---- labels -----------------------------------------------------------------------------------
    def labels(
        self,
        samples: pd.DataFrame,
        embeddings: np.ndarray,
        labeler: Callable[..., list[list[str]]],
        image: Callable[[str], Any],
    ) -> list[list[str]]:
        """Content labels of each sample (cached by image hash)."""
        cache = self._label_cache()
        hashes = samples["hash"].astype(str).tolist()
        todo = [k for k, h in enumerate(hashes) if h not in cache]
        if todo:
            todo_ids = samples["id"].astype(str).to_numpy()[todo]
            images = _LazyImages(todo_ids, image)
            new = labeler(images, embeddings=embeddings[todo])
            for k, labs in zip(todo, new):
                cache[hashes[k]] = [str(x) for x in labs]
            if not self.store.readonly:
                self.store.write_json(LABELS_JSON, cache)
        return [list(cache[h]) for h in hashes]

    # ---- layout -----------------------------------------------------------------------------------
    def update(
        self,
        samples: pd.DataFrame,
        embeddings: np.ndarray,
        labels: Sequence[Sequence[str]],
        label_embedder: Callable[[list[str]], np.ndarray],
        *,
        full: bool = False,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Lay out all samples (new ones placed incrementally) and return the projection frame."""
        ids = samples["id"].astype(str).tolist()
        known = set(self.ids)
        layout = self.layout
        if full or layout is None or ids[: len(self.ids)] != self.ids:
            texts = sorted({t for labs in labels for t in labs})
            label_emb = label_embedder(texts) if texts else None
            layout = project(embeddings, texts, [list(l) for l in labels], label_emb, seed=seed)
            self.ids = ids
        else:
            new = [k for k, i in enumerate(ids) if i not in known]
            if new:
                layout = place(layout, embeddings[new], [list(labels[k]) for k in new])
                self.ids = ids
        self.layout = layout
        if not self.store.readonly:
            save_layout(layout, str(Path(self.store.path) / LAYOUT_FILE))
            self.store.write_json(MAP_JSON, {"ids": self.ids, "n": len(self.ids)})
        return self.frame(labels)

    def _label_cache(self) -> dict[str, list[str]]:
        """content_labels.json, or {} when it is missing, damaged or of the wrong shape (it is derived)."""
        cache = self.store.read_json(LABELS_JSON, {}, derived=True)
        if not isinstance(cache, dict):
            return {}
        return {str(h): [str(x) for x in v] for h, v in cache.items() if isinstance(v, list)}

    def stored_frame(self, samples: pd.DataFrame) -> pd.DataFrame | None:
        """The saved map with the cached labels, for browsing a project without models; None when the map
        covers samples the project no longer has (e.g. a lost commit): it is stale and laid out again."""
        by_id = samples.set_index("id")["hash"]
        if not set(self.ids) <= set(by_id.index):
            return None
        cache = self._label_cache()
        return self.frame([cache.get(h, []) for h in by_id.loc[self.ids].astype(str)])

    def frame(self, labels: Sequence[Sequence[str]]) -> pd.DataFrame:
        """`crafter.projection`: kind, id, text, x, y, plus `members` (sample ids) on label rows."""
        assert self.layout is not None
        out = projection_frame(self.layout, self.ids)
        members: dict[str, list[str]] = {t: [] for t in self.layout.label_texts}
        for sid, labs in zip(self.ids, labels):
            for t in labs:
                members.setdefault(t, []).append(sid)
        out["members"] = [None] * self.layout.n_images + [members.get(t, []) for t in self.layout.label_texts]
        return out


class _LazyImages(Sequence):
    """Images loaded on access, so an embedding-only labeler never reads a PNG."""

    def __init__(self, ids: Sequence[str], image: Callable[[str], Any]) -> None:
        self._ids, self._image = list(ids), image

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self._image(i) for i in self._ids[k]]
        return self._image(self._ids[k])

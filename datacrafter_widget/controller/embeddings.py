"""Image embeddings of a project's samples, computed once per image hash and kept in the store's cache.

The map, the class filter, search and the metrics all read embeddings through here, so each image
is embedded once per embedder whatever asks first. Missing ones are computed chunk by chunk
through the project's backend (on Ray workers when it is a RayBackend) and stored as they arrive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..models.bundle import Models
from .backends import Backend
from .project import Project

__all__ = ["Embeddings"]


class Embeddings:
    """`embeddings(ids)` for one project, one model bundle and one backend."""

    def __init__(self, project: Project, models: Models, backend: Backend) -> None:
        self.project = project
        self.models = models
        self.backend = backend

    def __call__(self, ids: Sequence[str] | None = None) -> np.ndarray:
        """float32 (n, d) embeddings of the samples (all by default), in the order of `ids`."""
        emb = self.models.require("embedder", "crafter.embeddings()")
        store = self.project.store
        s = store.samples
        if ids is None:
            hashes = s["hash"].astype(str).tolist()
            ids = s["id"].astype(str).tolist()
        else:
            ids = self.project.check_ids(ids)
            by_id = dict(zip(s["id"].astype(str), s["hash"].astype(str)))
            hashes = [by_id[i] for i in ids]
        missing = store.missing_embeddings(hashes, emb.name)
        if missing and not store.readonly:
            first_id: dict[str, str] = {}
            for i, h in zip(ids, hashes):
                first_id.setdefault(h, i)
            size = max(64, int(getattr(emb, "batch_size", 64)))  # the embedder's own batch: its fastest
            chunks = [missing[start : start + size] for start in range(0, len(missing), size)]
            images = ([store.image(first_id[h]) for h in chunk] for chunk in chunks)
            for chunk, arr in zip(chunks, self.backend.embed_images(self.models, images)):
                store.put_embeddings(chunk, emb.name, arr)
        elif missing:  # a browser cannot store them: computed for this call only
            out = store.embeddings(hashes, emb.name, partial=True)
            assert out is not None  # partial=True gives an array with rows for the missing hashes too
            missing_set = set(missing)
            rows = [k for k, h in enumerate(hashes) if h in missing_set]
            out[rows] = emb.embed_images([store.image(ids[k]) for k in rows])
            return out
        out = store.embeddings(hashes, emb.name)
        if out is None:
            return np.zeros((0, emb.dim), dtype=np.float32)
        return out

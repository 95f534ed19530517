"""One writable SampleStore per project folder per process, shared by every DataCrafter on it.

The store's lock keeps a second *process* out. Inside one process a second DataCrafter on the same
folder is usually the same person: marimo runs a notebook's cells again in the server's process
for every page load and every viewer, and a re-run notebook cell builds a new crafter while the
old one is still referenced by its widget. Those share the open store (its own lock serialises
writes) instead of failing with ProjectLockedError; the folder is released when the last of them
closes.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..data.store import SampleStore

__all__ = ["acquire", "release"]

_guard = threading.Lock()
_open: dict[Path, tuple[SampleStore, int]] = {}


def _key(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().absolute()


def acquire(path: str | os.PathLike, *, create: bool = True) -> SampleStore:
    """The process's writable store of this project, opened (and locked) if nobody here holds it."""
    key = _key(path)
    with _guard:
        held = _open.get(key)
        if held is not None and not held[0]._closed:
            _open[key] = (held[0], held[1] + 1)
            return held[0]
        store = SampleStore(key, create=create)
        _open[key] = (store, 1)
        return store


def release(store: SampleStore) -> None:
    """One user of the store is done; the last one closes it (releasing the folder's lock)."""
    key = _key(store.path)
    with _guard:
        held = _open.get(key)
        if held is None or held[0] is not store:
            store.close()  # not shared (opened readonly, or already replaced)
            return
        if held[1] > 1:
            _open[key] = (store, held[1] - 1)
            return
        del _open[key]
    store.close()

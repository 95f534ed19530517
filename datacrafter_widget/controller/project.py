"""One project: its folder (the store), its classes, its events and one owner per project file.

The services (round runner, map, evaluation) share a `Project` instead of reaching back into the
`DataCrafter` facade. Files and their owners: samples and images -> `SampleStore` (data/store.py);
project.json -> `Project.meta` / `update_meta`; rounds.json -> `RoundsLog`; prompts.json ->
`PromptBook`; feedback.json -> `FeedbackLog`; the map's files -> `ProjectMap` (map_cache.py).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from ..data.dataset import Dataset, DatasetError
from ..data.images import image_hash
from ..data.store import COLUMNS, SampleStore
from .feedback_log import FeedbackLog
from .prompt_book import PromptBook
from .recovery import import_counter, unfinished_import_message
from .rounds_log import RoundsLog

EVENTS = ("samples", "feedback", "selection", "progress", "projection", "view")
PROJECT_FILE = "project.json"

__all__ = ["EVENTS", "Events", "Project", "UnknownSampleError"]


class UnknownSampleError(KeyError):
    """Sample ids that are not in the project; the message lists them and where ids come from."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class Events:
    """Listeners per event name; a failing listener warns and never stops the work that emitted."""

    def __init__(self, names: Iterable[str] = EVENTS) -> None:
        self._listeners: dict[str, list[Callable[..., None]]] = {e: [] for e in names}

    def on(self, event: str, fn: Callable[..., None]) -> None:
        if event not in self._listeners:
            raise ValueError(f"unknown event {event!r}: use one of {list(self._listeners)}")
        self._listeners[event].append(fn)

    def off(self, event: str, fn: Callable[..., None]) -> None:
        if fn in self._listeners.get(event, []):
            self._listeners[event].remove(fn)

    def emit(self, event: str, payload: Any) -> None:
        for fn in list(self._listeners[event]):
            try:
                fn(payload)
            except Exception as err:  # noqa: BLE001 - a broken view must not break generation
                warnings.warn(f"a {event!r} listener failed: {err!r}", RuntimeWarning, stacklevel=3)


class Project:
    """A project folder opened for work: store, classes, events, rounds log, prompt book, feedback log."""

    def __init__(self, store: SampleStore, classes: Iterable[str]) -> None:
        self.store = store
        self.path = store.path
        self.classes = list(classes)
        # class filter: "auto" (the better of zero-shot and real-image prototypes, checked on the
        # real training images; off when neither works), "zero-shot" or "prototypes"; see class_filter.py
        self.filter_mode = "auto"
        self.events = Events()
        self.rounds = RoundsLog(store)
        self.prompts = PromptBook(store, self.classes)
        self.feedback = FeedbackLog(store, lambda: self.rounds.next_round() - 1)
        self.rounds.mark_interrupted()  # rounds a killed kernel left "running"

    # ---- opening -----------------------------------------------------------------------------------
    @classmethod
    def create(cls, store: SampleStore, ds: Dataset, models_info: dict[str, Any]) -> Project:
        """The project of `ds` in `store`: a new one imports the real images (resuming a cut-short
        import); an existing one must have been made for the same classes."""
        meta = store.read_json(PROJECT_FILE, {}) or {}
        if "classes" in meta:
            if list(meta["classes"]) != list(ds.classes):
                raise ValueError(
                    f"project {store.path} was created for classes {meta['classes']}, but this dataset has "
                    f"{ds.classes}: open it with dc.DataCrafter.open({str(store.path)!r}) or choose a new project folder"
                )
            return cls(store, meta["classes"])
        project = cls(store, ds.classes)
        project.import_real(ds)
        # the class list is written last: a folder without it is an import that did not finish
        project.update_meta(
            classes=project.classes, dataset=ds.name, models=models_info, generator="datacrafter-widget"
        )
        return project

    @classmethod
    def open(cls, store: SampleStore) -> Project:
        meta = store.read_json(PROJECT_FILE, {}) or {}
        if "classes" not in meta:
            raise ValueError(unfinished_import_message(store))
        return cls(store, meta["classes"])

    # ---- project.json ------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return dict(self.store.read_json(PROJECT_FILE, {}) or {})

    def update_meta(self, **fields: Any) -> None:
        self.store.write_json(PROJECT_FILE, {**self.meta(), **fields})

    # ---- ids ---------------------------------------------------------------------------------------
    def check_ids(self, ids: Iterable[str], what: str = "ids") -> list[str]:
        """The ids as strings, or UnknownSampleError naming the unknown ones (nothing is changed then)."""
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

    # ---- real images -------------------------------------------------------------------------------
    def import_real(self, ds: Dataset) -> None:
        """Store the dataset's train (and test) images; an import cut short earlier resumes."""
        parts: list[tuple[str, Dataset]] = []
        if ds.train is not None:
            parts.append(("train", ds.train))
        elif not ds.splits:
            parts.append(("train", ds))
        if ds.test is not None:
            parts.append(("test", ds.test))
        if not parts:
            raise ValueError(f"dataset {ds.name!r} has splits {sorted(ds.splits)} but no 'train' split: give it one")
        done = import_counter(self.store.samples)  # images already stored are skipped
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
                        f"{err}. Then run dc.DataCrafter(ds, project={str(self.path)!r}) again: the "
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

    def dataset(self) -> Dataset:
        """The real images as a Dataset (train / test splits), read back from the store."""
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
                splits[split] = Dataset(frame, classes=self.classes, name=f"{self.path.name}:{split}")
        whole = (
            pd.concat([d.frame for d in splits.values()], ignore_index=True)
            if splits
            else pd.DataFrame({"image": [], "label": [], "caption": []})
        )
        return Dataset(whole, classes=self.classes, splits=splits, name=self.path.name)


def _take(counts: Any, key: tuple[str, str, str]) -> bool:
    """True (and one fewer left) if `key` is still counted as already stored."""
    if counts.get(key, 0) > 0:
        counts[key] -= 1
        return True
    return False

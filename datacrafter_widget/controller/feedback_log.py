"""feedback.json, the feedback log, and the session's undo / redo: the only module that reads or writes it.

Every feedback action (the widget's buttons, `crafter.feedback`, undo, redo) is applied to the
samples table and appended to the log, which prompt evolution reads back: the wordless "bad"
actions are the lassos "fewer of these" rebalances from (`lassos`). The log is kept in memory
with the file's (size, mtime) as written: a click costs one atomic write and one stat, and the
file is read again only when someone else changed it (another crafter sharing the open project,
a browser, a person moving it aside).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..data.store import SampleStore
from .map_view import MapToolError

FEEDBACK_FILE = "feedback.json"

__all__ = ["FEEDBACK_FILE", "FeedbackLog", "FeedbackHistory", "FeedbackChange", "lassos"]


def feedback_shape(doc: Any) -> str:
    """feedback.json: a list of feedback actions, each a dict."""
    if not isinstance(doc, list):
        return f"it holds a {type(doc).__name__}, not a list of feedback actions"
    bad = next((k for k, e in enumerate(doc) if not isinstance(e, dict)), None)
    return "" if bad is None else f"entry {bad} is {str(doc[bad])[:40]!r}, not a feedback action"


@dataclass
class FeedbackChange:
    """One feedback action: the ids and their (feedback, feedback_labels) before and after."""

    ids: list[str]
    before: list[tuple[str, str]]
    after: list[tuple[str, str]]


class FeedbackHistory:
    """Undo / redo stacks of feedback changes (for the session; the feedback log keeps everything)."""

    def __init__(self, limit: int = 200) -> None:
        self.limit = limit
        self.undo_stack: list[FeedbackChange] = []
        self.redo_stack: list[FeedbackChange] = []
        self._lock = threading.Lock()

    @staticmethod
    def values(samples: pd.DataFrame, ids: Sequence[str]) -> list[tuple[str, str]]:
        rows = samples.set_index("id").loc[list(ids)]
        return list(zip(rows["feedback"].fillna("").astype(str), rows["feedback_labels"].fillna("[]").astype(str)))

    def record(self, ids: Sequence[str], before: list[tuple[str, str]], after: list[tuple[str, str]]) -> None:
        with self._lock:
            self.undo_stack.append(FeedbackChange(list(ids), before, after))
            del self.undo_stack[: -self.limit]
            self.redo_stack.clear()

    def pop(self, redo: bool = False) -> FeedbackChange:
        with self._lock:
            stack, other = (self.redo_stack, self.undo_stack) if redo else (self.undo_stack, self.redo_stack)
            if not stack:
                raise MapToolError(f"nothing to {'redo' if redo else 'undo'}")
            change = stack.pop()
            other.append(change)
            return change


def feedback_columns(values: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The store.update columns that set (feedback, feedback_labels) per id (one list of labels per id)."""
    return {"feedback": [v[0] for v in values], "feedback_labels": [list(json.loads(v[1] or "[]")) for v in values]}


def lassos(log: Iterable[Any]) -> list[list[str]]:
    """The images marked bad together without words, action by action ("fewer of these")."""
    return [e["bad"] for e in log if isinstance(e, dict) and e.get("bad") and not e.get("bad_labels")]


class FeedbackLog:
    """Applies feedback to a project's samples, logs it, and undoes / redoes it.

    `round_now()` gives the round an action belongs to (the last round generated)."""

    def __init__(self, store: SampleStore, round_now: Callable[[], int]) -> None:
        self.store = store
        self._round_now = round_now
        self.history = FeedbackHistory()
        self._log: list[dict[str, Any]] | None = None
        self._stamp: tuple[int, int] | None = None  # (size, mtime_ns) of the file the cache matches
        self._lock = threading.Lock()

    def entries(self) -> list[dict[str, Any]]:
        """Every action in order: {time, round, bad, good, removed, bad_labels, cleared} or {undo | redo}."""
        if self._log is not None and self._stamp == self._file_stamp():
            return list(self._log)
        stamp = self._file_stamp()
        log = list(self.store.read_json(FEEDBACK_FILE, [], shape=feedback_shape) or [])
        self._log, self._stamp = log, stamp
        return list(log)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.store.path / FEEDBACK_FILE).stat()
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns

    def lassos(self) -> list[list[str]]:
        return lassos(self.entries())

    def mark(
        self,
        *,
        bad: list[str],
        good: list[str],
        removed: list[str],
        clear: list[str],
        bad_labels: list[str],
    ) -> list[str]:
        """Apply one action (ids already checked) and log it; returns the ids it touched."""
        both = sorted(set(bad) & set(good))
        if both:
            raise ValueError(f"ids {both[:5]} are marked both bad and good: pass each id once")
        touched = list(dict.fromkeys(bad + good + removed + clear))
        if not touched:
            return []
        before = FeedbackHistory.values(self.store.samples, touched)
        if clear:
            self.store.update(clear, feedback="", feedback_labels="[]")
        if bad:
            self.store.update(bad, feedback="bad", feedback_labels=bad_labels)
        if good:
            self.store.update(good, feedback="good", feedback_labels=[])
        if removed:
            self.store.update(removed, feedback="removed")
        self.history.record(touched, before, FeedbackHistory.values(self.store.samples, touched))
        self._append(
            {"bad": bad, "good": good, "removed": removed, "bad_labels": bad_labels, "cleared": clear},
        )
        return touched

    def step(self, *, redo: bool) -> list[str]:
        """Undo (or redo) the last action of this session; returns the ids it changed back."""
        change = self.history.pop(redo=redo)
        if change.ids:
            self.store.update(list(change.ids), **feedback_columns(change.after if redo else change.before))
        self._append({"redo" if redo else "undo": change.ids})
        return list(change.ids)

    @property
    def can_undo(self) -> tuple[int, int]:
        return len(self.history.undo_stack), len(self.history.redo_stack)

    def _append(self, action: dict[str, Any]) -> None:
        with self._lock:
            log = self.entries()
            log.append({"time": time.time(), "round": self._round_now(), **action})
            self.store.write_json(FEEDBACK_FILE, log)
            self._log, self._stamp = log, self._file_stamp()

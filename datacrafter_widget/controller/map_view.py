"""What the map's tools do, for the widget and for Python alike (jupyter-scatter style: every
control of the widget is a `DataCrafter` method that delegates here).

- prompt edits: `set_prompt` / `accept_prompt` / `revert_prompt` turn the project's prompts.json
  document into the next one with a per-class history; the round runner (prompts.json's only writer)
  reads and writes it, so edits survive a kernel restart and `generate_evolved` uses them;
- feedback undo / redo: `FeedbackHistory` records what each feedback action changed;
- search (text over caption / prompt / id / label, or a CLIP text query), nearest neighbours;
- view state (colour by a column, filters, zoom requests) that the widget follows through the
  controller's "view" event.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

import numpy as np
import pandas as pd

PROMPT_ACTIONS = ("evolved", "edit", "accept", "revert")
#: Colour modes the front end computes itself; any other samples column is coloured from codes sent by Python.
BUILTIN_COLORS = ("class", "round", "feedback", "flag")
#: Columns offered in the colour menu besides the built-in modes.
COLOR_COLUMNS = ("split", "source", "strategy", "label", "model", "flag_reason", "background")
SEARCH_COLUMNS = ("id", "label", "caption", "prompt")
MAX_CATEGORIES = 20


class MapToolError(ValueError):
    """A map tool was called with something it cannot use; the message says what to pass."""


# ---- prompt edits (pure: a prompts.json document in, the changed document out) ---------------------------
class PromptEntry(TypedDict):
    """One class's prompt state as `crafter.prompts` shows it."""

    current: str
    negative_prompt: str
    mixture: list[str]  # the prompts a rebalanced class's images cycle through ([] when one prompt)
    accepted: bool
    history: list[dict[str, object]]


def prompts(doc: Mapping[str, object], classes: Sequence[str]) -> dict[str, PromptEntry]:
    """class -> {current, negative_prompt, accepted, history: [{action, prompt, time, ...}]} from a
    prompts.json document (the runner reads and writes the file)."""
    out: dict[str, PromptEntry] = {}
    entries = doc.get("classes")
    for c, e in entries.items() if isinstance(entries, Mapping) else ():
        if not isinstance(e, Mapping) or str(c) not in classes:
            continue
        history: list[dict[str, object]] = []
        for h in e.get("history", []):
            if isinstance(h, Mapping):
                history.append({**h, "action": str(h.get("action", "evolved")), "prompt": str(h.get("prompt", ""))})
        out[str(c)] = {
            "current": str(e.get("prompt", "")),
            "negative_prompt": str(e.get("negative_prompt") or ""),
            "mixture": [str(p) for p in e.get("mixture") or []],
            "accepted": bool(e.get("accepted", False)),
            "history": history,
        }
    return out


def _check_class(cls: str, classes: Sequence[str]) -> str:
    if str(cls) not in classes:
        raise MapToolError(f"unknown class {cls!r}: use one of {list(classes)}")
    return str(cls)


def set_prompt(
    doc: Mapping[str, object],
    classes: Sequence[str],
    cls: str,
    prompt: str,
    *,
    negative_prompt: str | None = None,
    action: str = "edit",
) -> tuple[dict[str, object], dict[str, object]]:
    """`doc` (a prompts.json document, left as it is) with `prompt` as the class's current prompt and
    the change appended to its history: returns (the new document, the history entry)."""
    cls = _check_class(cls, classes)
    if action not in PROMPT_ACTIONS:
        raise MapToolError(f"unknown prompt action {action!r}: use one of {PROMPT_ACTIONS}")
    if not isinstance(prompt, str) or not isinstance(negative_prompt, (str, type(None))):
        bad = prompt if not isinstance(prompt, str) else negative_prompt
        raise MapToolError(
            f"the prompt for {cls!r} is {bad!r} ({type(bad).__name__}), not text: give the prompt as a string, "
            f"e.g. 'a photo of a {cls}'"
        )
    prompt = prompt.strip()
    if not prompt:
        raise MapToolError(f"the prompt for {cls!r} is empty: type a prompt, e.g. 'a photo of a {cls}'")
    new: dict[str, Any] = json.loads(json.dumps(doc))
    new.setdefault("schema_version", 1)
    entry = new.setdefault("classes", {}).setdefault(cls, {"history": []})
    if negative_prompt is None:
        negative_prompt = str(entry.get("negative_prompt", ""))
    if action != "accept" and prompt != entry.get("prompt"):
        # A typed prompt no longer matches evolution's phrase genome: the next evolution starts from the text.
        entry.pop("phrases", None)
        entry.pop("negative", None)
        entry.pop("mixture", None)  # a typed prompt serves every image of the class
        entry.pop("balance", None)
    entry.update(prompt=prompt, negative_prompt=str(negative_prompt), accepted=action in ("accept", "revert", "edit"))
    item: dict[str, object] = {
        "action": action,
        "time": time.time(),
        "prompt": prompt,
        "negative_prompt": str(negative_prompt),
    }
    entry.setdefault("history", []).append(item)
    return new, item


def accept_prompt(
    doc: Mapping[str, object], classes: Sequence[str], cls: str
) -> tuple[dict[str, object], dict[str, object]]:
    """Accept the class's current (evolved) prompt as it is: (the new document, the history entry)."""
    cls = _check_class(cls, classes)
    current = prompts(doc, classes).get(cls)
    if not current or not current["current"]:
        raise MapToolError(f"class {cls!r} has no prompt to accept yet: run crafter.evolve() or crafter.set_prompt()")
    return set_prompt(doc, classes, cls, current["current"], action="accept")


def revert_prompt(
    doc: Mapping[str, object], classes: Sequence[str], cls: str, index: int = -2
) -> tuple[dict[str, object], dict[str, object]]:
    """Make history entry `index` (default: the one before the current prompt) current again:
    (the new document, the history entry)."""
    cls = _check_class(cls, classes)
    entry = prompts(doc, classes).get(cls)
    history = entry["history"] if entry else []
    if not history:
        raise MapToolError(f"class {cls!r} has no prompt history to revert to")
    try:
        old = history[int(index)]
    except IndexError:
        raise MapToolError(
            f"class {cls!r} has {len(history)} prompt(s) in its history; index {index} is out of range"
        ) from None
    negative = old.get("negative_prompt")
    return set_prompt(
        doc,
        classes,
        cls,
        str(old["prompt"]),
        negative_prompt=None if negative is None else str(negative),
        action="revert",
    )


# ---- feedback undo / redo ----------------------------------------------------------------------------
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


def feedback_columns(values: Sequence[tuple[str, str]]) -> dict[str, list[str] | list[list[str]]]:
    """The store.update columns that set (feedback, feedback_labels) per id (one list of labels per id)."""
    return {"feedback": [v[0] for v in values], "feedback_labels": [list(json.loads(v[1] or "[]")) for v in values]}


# ---- search and neighbours ---------------------------------------------------------------------------
def search_text(samples: pd.DataFrame, query: str, columns: Sequence[str] = SEARCH_COLUMNS) -> list[str]:
    """Ids of samples whose id, label, caption or prompt contains every word of `query` (case-insensitive)."""
    words = [w for w in str(query).lower().split() if w]
    if not words:
        return []
    cols = [c for c in columns if c in samples.columns]
    text = samples[cols].fillna("").astype(str).agg(" ".join, axis=1).str.lower()
    hit = np.ones(len(samples), bool)
    for w in words:
        hit &= text.str.contains(w, regex=False).to_numpy()
    return samples["id"].astype(str)[hit].tolist()


def search_embedding(query_vec: np.ndarray, embeddings: np.ndarray, ids: Sequence[str], k: int) -> list[str]:
    """The k ids whose embeddings are most similar (cosine) to `query_vec`, best first."""
    if len(ids) == 0:
        return []
    q = np.asarray(query_vec, np.float32).reshape(-1)
    e = np.asarray(embeddings, np.float32)
    sims = (e @ q) / (np.linalg.norm(e, axis=1) * (np.linalg.norm(q) or 1.0) + 1e-12)
    k = max(1, min(int(k), len(ids)))
    top = np.argpartition(-sims, k - 1)[:k]
    top = top[np.argsort(-sims[top], kind="stable")]
    return [str(ids[i]) for i in top]


def neighbors(embeddings: np.ndarray, ids: Sequence[str], sample_id: str, k: int) -> list[str]:
    """The k nearest other samples to `sample_id` by embedding (cosine), nearest first."""
    ids = [str(i) for i in ids]
    if sample_id not in ids:
        raise MapToolError(f"unknown sample id {sample_id!r}: use ids from crafter.samples['id']")
    j = ids.index(sample_id)
    others = [i for i in range(len(ids)) if i != j]
    return search_embedding(embeddings[j], embeddings[others], [ids[i] for i in others], k)


# ---- colour by a column -------------------------------------------------------------------------------
def color_columns(samples: pd.DataFrame) -> list[str]:
    """The colour menu: the built-in modes, then the columns present (the known ones first)."""
    extra = [c for c in COLOR_COLUMNS if c in samples.columns]
    skip = {
        "id",
        "hash",
        "file",
        "prompt",
        "negative_prompt",
        "caption",
        "created",
        "feedback_labels",
        "parent_id",
        "seed",
        *BUILTIN_COLORS,
        *extra,
    }
    extra += [c for c in samples.columns if c not in skip and samples[c].nunique(dropna=True) > 1]
    return [*BUILTIN_COLORS, *extra]


def column_codes(samples: pd.DataFrame, column: str) -> tuple[np.ndarray, list[str]]:
    """Per-sample category codes (uint16) and their names for colouring by `column`.

    Text columns keep their MAX_CATEGORIES - 1 most frequent values ("other" for the rest); numeric
    columns with many values are cut into up to 8 quantile bins named by their ranges.
    """
    if column not in samples.columns:
        raise MapToolError(f"no column {column!r} to colour by: use one of {color_columns(samples)}")
    values = samples[column]
    if pd.api.types.is_numeric_dtype(values) and values.nunique(dropna=True) > MAX_CATEGORIES:
        bins = pd.qcut(values.astype(float), q=8, duplicates="drop")
        names = [f"{iv.left:.3g} – {iv.right:.3g}" for iv in bins.cat.categories]
        codes = bins.cat.codes.to_numpy()
        missing = codes < 0
        if missing.any():
            names.append("missing")
            codes = np.where(missing, len(names) - 1, codes)
        return codes.astype(np.uint16), names
    text = values.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    counts = text.value_counts()
    keep = list(counts.index[: MAX_CATEGORIES - 1]) if len(counts) > MAX_CATEGORIES else list(counts.index)
    keep = sorted(keep, key=str)
    lookup = {v: k for k, v in enumerate(keep)}
    names = [v if v != "" else "(empty)" for v in keep]
    if len(counts) > len(keep):
        names.append("other")
    codes = text.map(lambda v: lookup.get(v, len(keep))).to_numpy()
    return codes.astype(np.uint16), names


# ---- view state ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewState:
    """What the map shows: the colour column and the filters (held by the controller, followed by views)."""

    color_by: str = "class"
    show_test: bool = False
    show_removed: bool = False
    rounds: tuple[int, ...] | None = None  # None: every round
    isolate: tuple[str, ...] | None = None  # only these ids (None: no isolation)
    extra: dict[str, Any] = field(default_factory=dict)

    def visible(self, samples: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the rows shown."""
        keep = np.ones(len(samples), bool)
        if not self.show_test and "split" in samples.columns:
            keep &= (samples["split"].astype(str) != "test").to_numpy()
        if not self.show_removed and "feedback" in samples.columns:
            keep &= (samples["feedback"].astype(str) != "removed").to_numpy()
        if self.rounds is not None:
            keep &= samples["round"].isin(list(self.rounds)).to_numpy()
        if self.isolate is not None:
            keep &= samples["id"].astype(str).isin(list(self.isolate)).to_numpy()
        return keep


def updated_view(
    state: ViewState,
    samples: pd.DataFrame,
    *,
    color_by: str | None = None,
    show_test: bool | None = None,
    show_removed: bool | None = None,
    rounds: Iterable[int] | None | str = "keep",
    isolate: Iterable[str] | None | str = "keep",
    check_ids: Callable[[Iterable[str]], list[str]] | None = None,
) -> ViewState:
    """A new ViewState with the given changes checked ("keep" leaves rounds / isolate as they are)."""
    changes: dict[str, Any] = {}
    if color_by is not None:
        if color_by not in color_columns(samples) and color_by not in samples.columns:
            raise MapToolError(f"cannot colour by {color_by!r}: use one of {color_columns(samples)}")
        changes["color_by"] = str(color_by)
    if show_test is not None:
        changes["show_test"] = bool(show_test)
    if show_removed is not None:
        changes["show_removed"] = bool(show_removed)
    if not isinstance(rounds, str):
        changes["rounds"] = None if rounds is None else tuple(sorted({int(r) for r in rounds}))
    if not isinstance(isolate, str):
        if isolate is None:
            changes["isolate"] = None
        else:
            ids = check_ids(isolate) if check_ids else [str(i) for i in isolate]
            changes["isolate"] = tuple(ids)
    return replace(state, **changes)

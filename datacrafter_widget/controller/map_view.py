"""What the map's tools compute, as pure functions over the samples table (the map service,
controller/map_service.py, holds the state and calls them for the widget and Python alike):

- search (text over caption / prompt / id / label, or a CLIP text query), nearest neighbours;
- view state (colour by a column, filters, zoom requests) that the widget follows through the
  controller's "view" event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

#: Colour modes the front end computes itself; any other samples column is coloured from codes sent by Python.
BUILTIN_COLORS = ("class", "round", "feedback", "flag")
#: Columns offered in the colour menu besides the built-in modes.
COLOR_COLUMNS = ("split", "source", "strategy", "label", "model", "flag_reason", "background")
SEARCH_COLUMNS = ("id", "label", "caption", "prompt")
MAX_CATEGORIES = 20


class MapToolError(ValueError):
    """A map tool was called with something it cannot use; the message says what to pass."""


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

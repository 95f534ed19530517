"""What the map's tools compute, as pure functions over the samples table (the map service,
controller/map_service.py, holds the state and calls them for the widget and Python alike):

- search (text over caption / prompt / id / label, or a CLIP text query), nearest neighbours;
- view state (colour by a column, filters, zoom requests) that the widget follows through the
  controller's "view" event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
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


# ---- fields to filter by --------------------------------------------------------------------------------
#: The sidebar's fields (samples columns) in order, with their titles; "content_label" is the labels'
#: memberships, any other samples column can be filtered too (a column coloured by, from the legend).
FILTER_FIELDS = {
    "label": "class",
    "round": "round",
    "strategy": "strategy",
    "feedback": "feedback",
    "split": "split",
    "flag": "flag",
    "content_label": "content label",
}
CONTENT_LABEL = "content_label"


def field_values(samples: pd.DataFrame, column: str) -> pd.Series:
    """Each row's value of `column` as the text filters compare ("" for missing; 3, not 3.0)."""

    def text(v: Any) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return str(int(v))
        return str(v)

    return samples[column].map(text)


def label_members(projection: pd.DataFrame) -> dict[str, list[str]]:
    """Content label -> member sample ids, from `crafter.projection`'s label rows."""
    if len(projection) == 0 or "members" not in projection.columns:
        return {}
    rows = projection[projection["kind"] == "label"]
    return {str(t): [str(i) for i in m] for t, m in zip(rows["text"], rows["members"]) if isinstance(m, (list, tuple))}


def column_numbers(samples: pd.DataFrame, column: str) -> np.ndarray | None:
    """float32 values of a numeric column with more than MAX_CATEGORIES values (NaN where missing), for a
    sequential colour scale; None for a column coloured by category."""
    if column not in samples.columns:
        raise MapToolError(f"no column {column!r} to colour by: use one of {color_columns(samples)}")
    values = samples[column]
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return None
    if values.nunique(dropna=True) <= MAX_CATEGORIES:
        return None
    return values.astype(np.float32).to_numpy()


# ---- view state ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewState:
    """What the map shows: the colour column and the filters (held by the controller, followed by views,
    kept in the project's view.json so a reopened project shows the same map)."""

    color_by: str = "class"
    show_test: bool = False
    show_removed: bool = False
    rounds: tuple[int, ...] | None = None  # None: every round
    isolate: tuple[str, ...] | None = None  # only these ids (None: no isolation)
    # Hidden values per field, e.g. (("label", ("3",)), ("content_label", ("stripes",))): the legend's
    # and the sidebar's filters.
    hide: tuple[tuple[str, tuple[str, ...]], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hidden_values(self) -> dict[str, list[str]]:
        """The hidden values per field, as `crafter.filter(hide=...)` takes them."""
        return {f: list(v) for f, v in self.hide}

    def visible(self, samples: pd.DataFrame, members: dict[str, list[str]] | None = None) -> np.ndarray:
        """Boolean mask of the rows shown; `members` (content label -> ids) for content-label filters."""
        keep = np.ones(len(samples), bool)
        for column, values in self.hide:
            if column == CONTENT_LABEL:
                gone = {i for v in values for i in (members or {}).get(v, [])}
                keep &= ~samples["id"].astype(str).isin(gone).to_numpy()
            elif column in samples.columns:
                keep &= ~field_values(samples, column).isin(values).to_numpy()
        if not self.show_test and "split" in samples.columns:
            keep &= (samples["split"].astype(str) != "test").to_numpy()
        if not self.show_removed and "feedback" in samples.columns:
            keep &= (samples["feedback"].astype(str) != "removed").to_numpy()
        if self.rounds is not None:
            keep &= samples["round"].isin(list(self.rounds)).to_numpy()
        if self.isolate is not None:
            keep &= samples["id"].astype(str).isin(list(self.isolate)).to_numpy()
        return keep


def _hide_changes(
    state: ViewState,
    samples: pd.DataFrame,
    hide: Mapping[str, Iterable[Any]] | None | str,
    only: Mapping[str, Iterable[Any]] | None,
    members: Mapping[str, Sequence[str]] | None,
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The view's hidden values after `hide` (per field: these values hidden; None clears every field)
    and `only` (per field: every other value hidden)."""
    current = {} if hide is None else state.hidden_values
    given = dict(hide) if isinstance(hide, Mapping) else {}
    for column, values in (only or {}).items():
        everything = set(members or {}) if column == CONTENT_LABEL else None
        if everything is None and column in samples.columns:
            everything = set(field_values(samples, column))
        keep = {_as_text(v) for v in values}
        given[column] = sorted((everything or set()) - keep)
    for column, values in given.items():
        if column != CONTENT_LABEL and column not in samples.columns:
            raise MapToolError(
                f"cannot filter by {column!r}: use a samples column ({', '.join(FILTER_FIELDS)}...) or "
                f"{CONTENT_LABEL!r}"
            )
        texts = sorted({_as_text(v) for v in ([values] if isinstance(values, (str, int)) else values)})
        if texts:
            current[column] = texts
        else:
            current.pop(column, None)
    return tuple((c, tuple(v)) for c, v in sorted(current.items()))


def _as_text(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def updated_view(
    state: ViewState,
    samples: pd.DataFrame,
    *,
    color_by: str | None = None,
    show_test: bool | None = None,
    show_removed: bool | None = None,
    rounds: Iterable[int] | None | str = "keep",
    isolate: Iterable[str] | None | str = "keep",
    hide: Mapping[str, Iterable[Any]] | None | str = "keep",
    only: Mapping[str, Iterable[Any]] | None = None,
    members: Mapping[str, Sequence[str]] | None = None,
    check_ids: Callable[[Iterable[str]], list[str]] | None = None,
) -> ViewState:
    """A new ViewState with the given changes checked ("keep" leaves rounds / isolate / hide as they are)."""
    changes: dict[str, Any] = {}
    if not isinstance(hide, str) or only:
        changes["hide"] = _hide_changes(state, samples, hide, only, members)
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


def view_to_json(state: ViewState) -> dict[str, Any]:
    """The view state as view.json keeps it."""
    return {
        "color_by": state.color_by,
        "show_test": state.show_test,
        "show_removed": state.show_removed,
        "rounds": None if state.rounds is None else list(state.rounds),
        "isolate": None if state.isolate is None else list(state.isolate),
        "hide": state.hidden_values,
    }


def view_from_json(doc: Any, samples: pd.DataFrame) -> ViewState:
    """view.json back as a ViewState; what no longer applies (a column or ids that are gone) is dropped."""
    if not isinstance(doc, dict):
        return ViewState()
    ids = set(samples["id"].astype(str)) if "id" in samples.columns else set()
    color_by = str(doc.get("color_by", "class"))
    if color_by not in BUILTIN_COLORS and color_by not in samples.columns:
        color_by = "class"
    rounds, isolate, hide = doc.get("rounds"), doc.get("isolate"), doc.get("hide")
    return ViewState(
        color_by=color_by,
        show_test=bool(doc.get("show_test", False)),
        show_removed=bool(doc.get("show_removed", False)),
        rounds=tuple(int(r) for r in rounds) if isinstance(rounds, list) else None,
        isolate=tuple(str(i) for i in isolate if str(i) in ids) if isinstance(isolate, list) else None,
        hide=tuple(
            (str(c), tuple(str(v) for v in vs))
            for c, vs in sorted((hide or {}).items() if isinstance(hide, dict) else [])
            if isinstance(vs, list) and vs and (c == CONTENT_LABEL or c in samples.columns)
        ),
    )

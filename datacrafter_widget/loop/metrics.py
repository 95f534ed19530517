"""Per-round numbers that say whether generation is going well (GIF criteria + CMMD distance).

Everything here works on arrays the controller already has (class probabilities from the zero-shot
or student classifier, CLIP embeddings); no model is called, so metrics are cheap and testable.

- informativeness (GIF): entropy of a generated image's prediction minus the entropy of its seed
  image's prediction: positive = the expansion carries information the seed did not. Text-to-image
  images have no seed; for them the baseline is the mean entropy of the real images of the intended
  class (the "typical seed" of that class).
- class maintenance (GIF): probability of the intended class; and, where a seed exists, probability
  of the class the classifier predicted for the seed (GIF's definition).
- diversity (GIF): mean KL(p_i || p_mean) of each prediction from the batch mean, computed within
  each intended class (otherwise the mix of classes alone would read as diversity) and averaged
  over images; plus embedding spread: mean pairwise cosine distance of CLIP embeddings, within class.
- distance (CMMD, Jayasumana et al. 2024; DataCrafter's "distance"): MMD^2 with a Gaussian RBF
  kernel, sigma = 10, between generated and real CLIP embeddings, x1000. Like the reference
  implementation it is the biased (V-statistic) estimate, so identical sets give exactly 0.
- student accuracy (student_acc): held-out accuracy of a student trained from scratch on the real
  images plus the images accepted up to that round (round 0: real only). It is computed by the
  controller (controller/heldout.py), not here; the chart shows it like the others.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "MetricsError",
    "METRICS",
    "CHART_METRICS",
    "entropy",
    "informativeness",
    "class_maintenance",
    "seed_class_maintenance",
    "prediction_diversity",
    "embedding_spread",
    "cmmd",
    "round_metrics",
    "metrics_chart",
    "accepted_per_class",
    "round_changes",
]

METRICS = (
    "informativeness",
    "class_maintenance",
    "seed_class_maintenance",
    "diversity",
    "embedding_spread",
    "distance",
)
# What the chart shows: the criteria above, then the held-out student accuracy the controller adds.
CHART_METRICS = (*METRICS, "student_acc")

_EPS = 1e-12


class MetricsError(ValueError):
    """Input the metrics cannot use; the message names the input and the fix."""


# ----------------------------------------------------------------------------- checks


def _probs(p, name: str, *, allow_nan_rows: bool = False) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 2:
        raise MetricsError(f"{name} must be a 2D array (n_images, n_classes) of probabilities; got shape {arr.shape}.")
    if arr.shape[0] == 0:
        raise MetricsError(f"{name} is empty: there are no images to measure.")
    if arr.shape[1] < 2:
        raise MetricsError(f"{name} has {arr.shape[1]} class column(s); probabilities need at least 2 classes.")
    rows = np.isnan(arr).all(axis=1) if allow_nan_rows else np.zeros(len(arr), dtype=bool)
    body = arr[~rows]
    if not np.isfinite(body).all():
        raise MetricsError(f"{name} has NaN or inf values; recompute the predictions for those images.")
    if (body < 0).any() or (np.abs(body.sum(axis=1) - 1.0) > 1e-3).any():
        raise MetricsError(
            f"{name} rows must be probabilities (non-negative, summing to 1); pass softmax outputs, not logits."
        )
    return arr


def _emb(e, name: str) -> np.ndarray:
    arr = np.asarray(e, dtype=np.float64)
    if arr.ndim != 2:
        raise MetricsError(f"{name} must be a 2D array (n_images, dim); got shape {arr.shape}.")
    if arr.shape[0] == 0:
        raise MetricsError(f"{name} is empty: there are no images to measure.")
    if not np.isfinite(arr).all():
        raise MetricsError(f"{name} has NaN or inf values; re-embed those images.")
    return arr


def _labels(labels, n: int, k: int | None, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or len(arr) != n:
        raise MetricsError(f"{name} must have one class index per image ({n}); got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise MetricsError(
            f"{name} must be integer class indices (column order of the probabilities); got {arr.dtype}."
        )
    if k is not None and n and (arr.min() < 0 or arr.max() >= k):
        raise MetricsError(f"{name} has class indices outside 0..{k - 1}.")
    return arr.astype(np.int64)


# ----------------------------------------------------------------------------- criteria


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)
    return -(p * np.log(p)).sum(axis=-1)


def informativeness(
    probs: np.ndarray,
    seed_probs: np.ndarray | None = None,
    *,
    labels: np.ndarray | None = None,
    real_probs: np.ndarray | None = None,
    real_labels: np.ndarray | None = None,
) -> np.ndarray:
    """Per image: entropy(prediction) - entropy(seed's prediction). Rows of seed_probs that are all
    NaN (or seed_probs None) mean "no seed": the mean entropy of real images of the intended class
    stands in (needs labels, real_probs and real_labels)."""
    p = _probs(probs, "probs")
    n, k = p.shape
    h = entropy(p)
    if seed_probs is None:
        base = np.full(n, np.nan)
    else:
        sp_ = _probs(seed_probs, "seed_probs", allow_nan_rows=True)
        if sp_.shape != p.shape:
            raise MetricsError(f"seed_probs has shape {sp_.shape} but probs has {p.shape}; one seed row per image.")
        base = np.where(np.isnan(sp_).all(axis=1), np.nan, entropy(np.nan_to_num(sp_)))
    missing = np.isnan(base)
    if missing.any():
        if labels is None or real_probs is None or real_labels is None:
            raise MetricsError(
                f"{int(missing.sum())} image(s) have no seed; pass labels, real_probs and real_labels so "
                "that the class-mean entropy of the real images can stand in for the seed."
            )
        lab = _labels(labels, n, k)
        rp = _probs(real_probs, "real_probs")
        if rp.shape[1] != k:
            raise MetricsError(f"real_probs has {rp.shape[1]} classes but probs has {k}.")
        rl = _labels(real_labels, len(rp), k, "real_labels")
        rh = entropy(rp)
        overall = rh.mean()
        class_mean = np.array([rh[rl == c].mean() if (rl == c).any() else overall for c in range(k)])
        base[missing] = class_mean[lab[missing]]
    return h - base


def class_maintenance(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image: probability of the intended class."""
    p = _probs(probs, "probs")
    lab = _labels(labels, len(p), p.shape[1])
    return p[np.arange(len(p)), lab]


def seed_class_maintenance(probs: np.ndarray, seed_probs: np.ndarray) -> np.ndarray:
    """Per image: probability of the class predicted for its seed (GIF); NaN where no seed."""
    p = _probs(probs, "probs")
    sp_ = _probs(seed_probs, "seed_probs", allow_nan_rows=True)
    if sp_.shape != p.shape:
        raise MetricsError(f"seed_probs has shape {sp_.shape} but probs has {p.shape}; one seed row per image.")
    has = ~np.isnan(sp_).all(axis=1)
    out = np.full(len(p), np.nan)
    out[has] = p[has, np.argmax(sp_[has], axis=1)]
    return out


def _groups(n: int, labels) -> list[np.ndarray]:
    if labels is None:
        return [np.arange(n)]
    lab = np.asarray(labels)
    return [np.flatnonzero(lab == c) for c in np.unique(lab)]


def prediction_diversity(probs: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Mean KL(p_i || mean p) within each class group; NaN if no group has 2 images."""
    p = np.clip(_probs(probs, "probs"), _EPS, 1.0)
    if labels is not None:
        _labels(labels, len(p), p.shape[1])
    kls = []
    for idx in _groups(len(p), labels):
        if len(idx) < 2:
            continue
        g = p[idx]
        mean = g.mean(axis=0)
        kls.append((g * (np.log(g) - np.log(mean))).sum(axis=1))
    return float(np.concatenate(kls).mean()) if kls else float("nan")


def embedding_spread(emb: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Mean pairwise cosine distance within each class group (pairs pooled); NaN if no pairs."""
    e = _emb(emb, "emb")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    if (norms == 0).any():
        raise MetricsError("emb has all-zero rows; re-embed those images.")
    e = e / norms
    if labels is not None:
        _labels(labels, len(e), None)
    total, pairs = 0.0, 0
    for idx in _groups(len(e), labels):
        m = len(idx)
        if m < 2:
            continue
        s = e[idx].sum(axis=0)
        # sum over i != j of cos = |sum e|^2 - m, without the m x m matrix
        cos_sum = float(s @ s) - m
        total += m * (m - 1) - cos_sum
        pairs += m * (m - 1)
    return total / pairs if pairs else float("nan")


def _mean_rbf(x: np.ndarray, y: np.ndarray, gamma: float, block: int = 2048) -> float:
    from sklearn.metrics.pairwise import rbf_kernel

    acc = 0.0
    for s in range(0, len(x), block):
        acc += float(rbf_kernel(x[s : s + block], y, gamma=gamma).sum())
    return acc / (len(x) * len(y))


def cmmd(gen_emb: np.ndarray, real_emb: np.ndarray, *, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """CMMD: scale * MMD^2 (Gaussian RBF, bandwidth sigma) between generated and real embeddings."""
    x, y = _emb(gen_emb, "gen_emb"), _emb(real_emb, "real_emb")
    if x.shape[1] != y.shape[1]:
        raise MetricsError(
            f"gen_emb has dimension {x.shape[1]} but real_emb has {y.shape[1]}; embed both with the same model."
        )
    gamma = 1.0 / (2.0 * sigma**2)
    value = _mean_rbf(x, x, gamma) + _mean_rbf(y, y, gamma) - 2.0 * _mean_rbf(x, y, gamma)
    return float(scale * max(value, 0.0))


def round_metrics(
    gen_probs: np.ndarray,
    gen_labels: np.ndarray,
    gen_emb: np.ndarray,
    real_emb: np.ndarray,
    *,
    seed_probs: np.ndarray | None = None,
    real_probs: np.ndarray | None = None,
    real_labels: np.ndarray | None = None,
    round: int | None = None,
) -> dict:
    """One row of `crafter.metrics` for a round's generated images.

    gen_probs (n, k) class probabilities of the generated images; gen_labels (n,) intended class
    indices; gen_emb (n, d) and real_emb (m, d) CLIP embeddings; seed_probs (n, k) predictions for
    each image's seed (all-NaN row: no seed); real_probs / real_labels: the real images'
    predictions and classes, the stand-in seed for text-to-image images.
    """
    p = _probs(gen_probs, "gen_probs")
    n, k = p.shape
    lab = _labels(gen_labels, n, k, "gen_labels")
    e = _emb(gen_emb, "gen_emb")
    if len(e) != n:
        raise MetricsError(f"gen_emb has {len(e)} rows but gen_probs has {n}; one row per generated image.")
    info = informativeness(p, seed_probs, labels=lab, real_probs=real_probs, real_labels=real_labels)
    seed_cm = seed_class_maintenance(p, seed_probs) if seed_probs is not None else np.full(n, np.nan)
    return {
        "round": round,
        "n_generated": int(n),
        "informativeness": float(info.mean()),
        "class_maintenance": float(class_maintenance(p, lab).mean()),
        "seed_class_maintenance": float(np.nanmean(seed_cm)) if np.isfinite(seed_cm).any() else float("nan"),
        "diversity": prediction_diversity(p, lab),
        "embedding_spread": embedding_spread(e, lab),
        "distance": cmmd(e, real_emb),
    }


# Each panel's title says which way is better (the chart is read to decide the next round).
_TITLES = {
    "informativeness": "informativeness, entropy gain (↑ better)",
    "class_maintenance": "p of intended class (↑; low: mark bad, Evolve)",
    "seed_class_maintenance": "p of seed's class (↑ better)",
    "diversity": "diversity, KL from mean (↑; low: try caption)",
    "embedding_spread": "embedding spread, cosine (↑ better)",
    "distance": "distance to real, CMMD (↓ better)",
    "student_acc": "student accuracy, held-out (↑ better)",
}

# What a panel's line will show once it has more than one round (said while it has one point).
_NEXT = {
    "informativeness": "whether new images still teach the student",
    "class_maintenance": "whether images keep their class",
    "seed_class_maintenance": "whether edits keep the seed's class",
    "diversity": "whether rounds keep varying",
    "embedding_spread": "whether images spread out",
    "distance": "whether images come closer to the real ones",
    "student_acc": "whether each round helps the student",
}


def metrics_chart(df: pd.DataFrame, metrics: Sequence[str] | None = None):
    """Small multiples: one line chart per metric over rounds, each with its own y scale (the
    metrics live on different scales). Works as `alt.JupyterChart(chart)` too."""
    import altair as alt

    if not isinstance(df, pd.DataFrame) or df.empty:
        raise MetricsError("metrics_chart needs a non-empty DataFrame (crafter.metrics); run a round first.")
    if "round" not in df.columns:
        raise MetricsError("metrics_chart needs a 'round' column; pass crafter.metrics.")
    cols = [c for c in (metrics or CHART_METRICS) if c in df.columns]
    if not cols:
        raise MetricsError(f"none of the metric columns {list(metrics or CHART_METRICS)} are in the DataFrame.")
    long = df[["round", *cols]].melt(id_vars="round", var_name="metric", value_name="value")
    long = long.dropna(subset=["value"])
    if long.empty:
        raise MetricsError(
            "no metric has a value yet: run a round (round 0's held-out student accuracy shows once it is trained)."
        )
    if long["round"].isna().any():
        raise MetricsError("the 'round' column has missing values; give every row its round number.")
    long["round"] = long["round"].astype("int64")
    # A panel with one point says which round it is and what the next rounds will show there.
    points = long.groupby("metric")["round"].transform("size")
    long["note"] = [
        f"round {r} only ({v:.3g}): more rounds show\n{_NEXT.get(m, 'its trend')}" if k == 1 else ""
        for m, r, v, k in zip(long["metric"], long["round"], long["value"], points)
    ]
    long["metric"] = long["metric"].map(lambda c: _TITLES.get(c, c))
    line = (
        alt.Chart()
        .mark_line(point=True)
        .encode(
            x=alt.X("round:O", title="round"),
            y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False), axis=alt.Axis(format=".3~g")),
            tooltip=["metric:N", "round:O", alt.Tooltip("value:Q", format=".4f")],
        )
    )
    note = (
        alt.Chart()
        .transform_filter(alt.datum.note != "")
        .mark_text(align="left", baseline="top", fontSize=10, lineBreak="\n", opacity=0.8)
        .encode(x=alt.value(4), y=alt.value(4), text="note:N")
    )
    base = alt.layer(line, note, data=long).properties(width=200, height=120)
    return base.facet(facet=alt.Facet("metric:N", title=None), columns=3).resolve_scale(y="independent")


def accepted_per_class(samples: pd.DataFrame) -> pd.DataFrame:
    """Generated images kept for training (not flagged, not marked bad or removed): rounds x classes."""
    if samples.empty or "round" not in samples:
        return pd.DataFrame()
    gen = samples[samples["source"] == "generated"]
    flag = gen["flag"].fillna("").astype(str) if "flag" in gen else pd.Series("", index=gen.index)
    fb = gen["feedback"].fillna("").astype(str) if "feedback" in gen else pd.Series("", index=gen.index)
    kept = gen[(flag == "") & ~fb.isin(["bad", "removed"])]
    made = gen.groupby(["round", "label"]).size().unstack(fill_value=0)
    return kept.groupby(["round", "label"]).size().unstack(fill_value=0).reindex_like(made).fillna(0).astype(int)


def _count(value: object) -> int:
    """A count from a metrics cell: missing or NaN (round 0 has no generated images) is 0."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0
    return 0 if math.isnan(v) else int(v)


def round_changes(metrics: pd.DataFrame, samples: pd.DataFrame, short: float = 0.6) -> pd.DataFrame:
    """Each round's student accuracy against the round before it, with the causes the project records.

    The student of round r trains on the real images and the accepted images of rounds 1..r, so a
    round that hurt shows as a negative change. Known causes are named: a class whose accepted
    images fall below `short` of the round's median class (the class filter or the feedback took
    them), and a round of which a quarter or more was left out of training.
    """
    if metrics.empty or "student_acc" not in metrics:
        raise MetricsError("round_changes needs crafter.metrics with a student_acc column (a test split)")
    kept = accepted_per_class(samples)
    rows = []
    prev = None
    for _, m in metrics.sort_values("round").iterrows():
        r, acc = int(m["round"]), float(m["student_acc"])
        why: list[str] = []
        if r in kept.index:
            counts = kept.loc[r]
            median = float(counts.median())
            low = counts[counts < short * median]
            if len(low):
                few = ", ".join(f"{c} ({int(k)})" for c, k in low.items())
                why.append(f"fewer accepted images of class {few} against {median:.0f} for the median class")
        n_gen, flagged, bad = (_count(m.get(k)) for k in ("n_generated", "flagged", "bad"))
        if n_gen and flagged + bad >= 0.25 * n_gen:
            why.append(
                f"{flagged + bad} of its {n_gen} images left out of training "
                f"({flagged} by the class filter, {bad} marked bad)"
            )
        change = float("nan") if prev is None or pd.isna(acc) else acc - prev
        if not why and not pd.isna(change) and change < 0:
            why.append("no cause the project records")
        rows.append(
            {
                "round": r,
                "strategies": m.get("strategies", ""),
                "student_acc": acc,
                "change": change,
                "why": "; ".join(why),
            }
        )
        prev = acc if not pd.isna(acc) else prev
    return pd.DataFrame(rows)

"""Rebalancing a class's images from "fewer of these" lassos: a mixture of prompts per class.

A lasso without words on images that are fine one by one says "too many of these". No single prompt
can act on that: adding "on a pink background" to a class's prompt pins every image of the class to
pink (a new class <-> attribute shortcut), and a negative prompt removes the lassoed attribute from
the class altogether (benchmarks/results/NOTES.md, loop track). A *mixture* can: each image of the
class gets one phrase per attribute axis, drawn with weights that match a target histogram.

The steps, per attribute axis (a group of mutually exclusive phrases, e.g. the backgrounds):

1. Read the axis value of every image the person judged, by CLIP zero-shot over the axis phrases.
2. The target: a lasso that sits mostly in one cell (say the black backgrounds) caps that cell at
   what the person kept of it; without such lassos, a cell lassoed clearly more often than the
   axis's other cells is capped. The target is the most even histogram under the caps (maximum
   entropy). An axis without a capped cell has no signal and is left alone.
3. Measure how the generator follows each phrase (a small batch per phrase, read the same way), and
   how often the class filter keeps that batch's images as their class, and solve for mixture
   weights whose expected histogram is closest to the target (non-negative least squares, weights
   summing to 1), with a penalty on phrases that cost class fidelity. "No phrase" is a component
   too: the generator's own histogram.
4. Spread the weights over an ordered list of prompts, so that any prefix of the list is balanced on
   every axis and the combinations of the axes' phrases vary (no colour tied to a background).

This module computes only; the embedder and the generator come in as callables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import nnls

__all__ = [
    "AxisBalance",
    "read_axis",
    "axis_target",
    "axis_targets",
    "measure_following",
    "mixture_weights",
    "spread",
    "spread_joint",
]

NONE = ""  # the mixture component without a phrase for this axis: the generator's own choice
MIN_IMAGES = 10  # fewer judged images than this on an axis: no histogram to read


@dataclass
class AxisBalance:
    """One axis: the histogram the person saw, the one their lassos ask for, and the mixture weights."""

    axis: str
    phrases: list[str]
    seen: np.ndarray  # share of each phrase among the judged images
    target: np.ndarray
    capped: list[str]  # phrases the lassos asked for fewer of
    weights: dict[str, float] = field(default_factory=dict)  # phrase (or NONE) -> mixture weight
    expected: np.ndarray | None = None  # the mixture's histogram, from the measured prompt following
    keep: dict[str, float] = field(default_factory=dict)  # phrase (or NONE) -> share the class filter kept

    def describe(self) -> str:
        was = ", ".join(f"{p} {s:.2f}" for p, s in zip(self.phrases, self.seen))
        now = ", ".join(f"{p} {w:.2f}" for p, w in self.weights.items() if w >= 0.005 and p)
        own = self.weights.get(NONE, 0.0)
        tail = f", no {self.axis} word {own:.2f}" if own >= 0.005 else ""
        lost = ", ".join(f"{p or 'no word'} {k:.2f}" for p, k in self.keep.items() if k < 0.8)
        fidelity = f"; kept as their class less often: {lost}" if lost else ""
        return (
            f"~ balanced {self.axis} (lassoed more than the rest: {', '.join(self.capped)}): "
            f"prompts now {now}{tail} (the judged images were {was}{fidelity})"
        )


def read_axis(image_emb: np.ndarray, phrase_emb: np.ndarray) -> np.ndarray:
    """Index of the nearest phrase for each (normalised) image embedding: CLIP zero-shot over the axis."""
    if len(image_emb) == 0:
        return np.zeros(0, dtype=int)
    return np.asarray((image_emb @ phrase_emb.T).argmax(axis=1), dtype=int)


def axis_targets(
    cells: Mapping[str, tuple[np.ndarray, int]],
    lassoed: np.ndarray,
    min_excess: float = 1.0,
    z: float = 2.0,
    groups: np.ndarray | None = None,
    dominant: float = 0.6,
) -> dict[str, tuple[np.ndarray, np.ndarray, list[int]]]:
    """Per axis with a signal: (seen share, target share, capped cells).

    `cells` maps each axis to the judged images' cells on it (0..k-1) and k; `lassoed` says whether
    the person lassoed each image as "fewer of these". `groups` (optional) numbers the lasso action
    each lassoed image came from (-1: none known). A lasso whose images sit mostly (`dominant`) in
    one cell of an axis, say the black backgrounds, asks for fewer of that cell: its images there
    count against the cell, and the cell's cap is what is left of it. On an axis no lasso dominates,
    the lassos are read together, statistically. An image can be lassoed for any of its cells,
    so the chance of keeping it is modelled as a product of one factor per axis and cell (fitted
    jointly, by iterative proportional fitting): lassos made for the background do not read as a
    signal on the foreground. On each axis, a cell is capped when it keeps fewer images than the
    other cells' factor predicts, by more than `z` standard deviations (a rare cell with a few
    lassos is not capped); what it keeps, relative to the others, is its cap. The target is the
    most even histogram under the caps (maximum entropy): t = min(cap, level), the level chosen so
    that t sums to 1. The lassos say only which cells are too common; of every histogram that
    respects them, the even one assumes least. Axes without a capped cell are left out.
    """
    names = list(cells)
    vals = [np.asarray(cells[a][0], dtype=int) for a in names]
    ks = [int(cells[a][1]) for a in names]
    kept = ~np.asarray(lassoed, dtype=bool)
    n = len(kept)
    if n < MIN_IMAGES or kept.all() or not kept.any():
        return {}
    factors = [np.ones(k) for k in ks]

    def others(a: int) -> np.ndarray:
        out = np.ones(n)
        for b in range(len(ks)):
            if b != a:
                out = out * factors[b][vals[b]]
        return out

    for _ in range(100):
        for a in range(len(ks)):
            num = np.bincount(vals[a], weights=kept.astype(float), minlength=ks[a])
            den = np.bincount(vals[a], weights=others(a), minlength=ks[a])
            factors[a] = np.divide(num, den, out=np.zeros(ks[a]), where=den > 0)
    out: dict[str, tuple[np.ndarray, np.ndarray, list[int]]] = {}
    for a, (name, k) in enumerate(zip(names, ks)):
        counts = np.bincount(vals[a], minlength=k).astype(float)
        own = _dominated(vals[a], k, groups, dominant) if groups is not None else np.zeros(k)
        if own.sum() > 0:
            asked = [j for j in range(k) if own[j] >= min_excess]
            if asked and len(asked) < k:
                cap = np.ones(k)
                cap[asked] = (counts[asked] - own[asked]) / n
                out[name] = (counts / n, _even_under(cap), asked)
            continue
        other = others(a)
        num = np.bincount(vals[a], weights=kept.astype(float), minlength=k)
        den = np.bincount(vals[a], weights=other, minlength=k)
        capped: list[int] = []
        base = 1.0
        for _ in range(k):  # grow the capped set until the factor of the rest explains the rest
            rest = [j for j in range(k) if j not in capped and counts[j] > 0]
            if not rest:
                break
            base = float(num[rest].sum() / max(den[rest].sum(), 1e-12))
            p = np.clip(base * other, 0.0, 1.0)
            expect = np.bincount(vals[a], weights=p, minlength=k)
            sd = np.sqrt(np.maximum(np.bincount(vals[a], weights=p * (1 - p), minlength=k), 1e-12))
            under = [j for j in rest if (expect[j] - num[j]) / sd[j] > z]
            if not under:
                break
            capped += under
        keep = np.clip(np.divide(num, den * base, out=np.ones(k), where=den > 0), 0.0, 1.0)
        capped = sorted(j for j in capped if (1 - keep[j]) * counts[j] >= min_excess)
        if not capped or len(capped) == k:
            continue
        cap = np.ones(k)
        cap[capped] = counts[capped] * keep[capped] / n
        out[name] = (counts / n, _even_under(cap), capped)
    return out


def _dominated(values: np.ndarray, k: int, groups: np.ndarray, dominant: float) -> np.ndarray:
    """Per cell: lassoed images in lasso groups that sit mostly (>= dominant) in that cell."""
    own = np.zeros(k)
    for g in np.unique(groups[groups >= 0]):
        members = values[groups == g]
        hist = np.bincount(members, minlength=k)
        j = int(hist.argmax())
        if len(members) >= 2 and hist[j] >= dominant * len(members):
            own[j] += hist[j]
    return own


def _even_under(cap: np.ndarray) -> np.ndarray:
    """The most even histogram with t <= cap: t = min(cap, level), the level found by bisection."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        level = (lo + hi) / 2
        if np.minimum(cap, level).sum() > 1.0:
            hi = level
        else:
            lo = level
    target = np.minimum(cap, lo)
    return target / target.sum()


def axis_target(
    values: np.ndarray, lassoed: np.ndarray, k: int, min_excess: float = 1.0, z: float = 2.0
) -> tuple[np.ndarray, np.ndarray, list[int]] | None:
    """axis_targets for a single axis: (seen share, target share, capped cells), or None without a signal."""
    return axis_targets({"axis": (values, k)}, lassoed, min_excess, z).get("axis")


def mixture_weights(
    follow: np.ndarray,
    target: np.ndarray,
    diffuse: float = 0.3,
    keep: np.ndarray | None = None,
    fidelity: float = 1.0,
) -> np.ndarray:
    """Weights w >= 0, sum 1, minimising |follow.T @ w - target|^2 + sum_i (p_i * w_i)^2:
    row i of `follow` is the histogram that component i's images land in (measured on a few images).
    The penalty p_i = sqrt((diffuse * d_i)^2 + (fidelity * (1 - keep_i / max(keep)))^2) has two
    parts. d_i = sqrt(1 - sum_j follow_ij^2) is how spread component i is: of the mixtures that hit
    the target, the one made of components that land in one cell wins (a spread histogram read off
    a few images, the generator's own choice typically, is the least sure). keep_i is the share of
    component i's images the class filter kept as their class: a phrase that makes the generator
    lose the class costs more than it balances."""
    m = follow.shape[0]
    big = 100.0  # the sum-to-one constraint as a heavily weighted extra row
    spread_of = np.sqrt(np.clip(1.0 - (follow**2).sum(axis=1), 0.0, 1.0))
    penalty = diffuse * spread_of
    if keep is not None:
        keep = np.asarray(keep, dtype=float)
        loss = 1.0 - keep / max(float(keep.max()), 1e-12)
        penalty = np.sqrt(penalty**2 + (fidelity * loss) ** 2)
    a = np.vstack([follow.T, np.diag(penalty), big * np.ones((1, m))])
    b = np.concatenate([target, np.zeros(m), [big]])
    w, _ = nnls(a, b)
    w = np.maximum(w, 0)
    return w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)


def spread(weights: Mapping[str, float], n: int, rng: np.random.Generator) -> list[str]:
    """`n` component names in an order where every prefix follows `weights` as closely as counts allow
    (the component furthest behind its share goes next; ties broken at random)."""
    names = [p for p, w in weights.items() if w > 0]
    w = np.array([weights[p] for p in names], dtype=float)
    w = w / w.sum()
    counts = np.zeros(len(names))
    out = []
    for k in range(n):
        deficit = w * (k + 1) - counts
        best = np.flatnonzero(deficit >= deficit.max() - 1e-9)
        j = int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])
        counts[j] += 1
        out.append(names[j])
    return out


def spread_joint(
    weights: Sequence[Mapping[str, float]], n: int, rng: np.random.Generator, slack: float = 0.3
) -> list[tuple[str, ...]]:
    """`n` combinations (one component per axis) where every prefix follows each axis's weights, as
    `spread` does for one axis, and the combinations are as varied as those weights allow.

    Spreading each axis on its own pairs the axes up: with five even phrases on two axes both orders
    cycle with period five, so a class's images repeat five (colour, background) pairs, a new shortcut
    inside the class. Here each slot takes, on every axis, a component that is not ahead of its share
    and within `slack` of the one furthest behind, and among those combinations the one used least
    so far (ties at random): every prefix stays within about one image of each axis's weights."""
    if len(weights) == 1:  # nothing to pair: the one axis's own spread
        return [(p,) for p in spread(weights[0], n, rng)]
    axes = []
    for wts in weights:
        names = [p for p, w in wts.items() if w > 0]
        w = np.array([wts[p] for p in names], dtype=float)
        axes.append((names, w / w.sum()))
    counts = [np.zeros(len(names)) for names, _ in axes]
    used: dict[tuple[int, ...], int] = {}
    out: list[tuple[str, ...]] = []
    for k in range(n):
        eligible = []
        for (_, w), c in zip(axes, counts):
            deficit = w * (k + 1) - c
            # not ahead of its share and close to the most behind (which always qualifies)
            eligible.append(np.flatnonzero(deficit >= max(0.0, float(deficit.max()) - slack) - 1e-9))
        combos = np.array(np.meshgrid(*eligible, indexing="ij")).reshape(len(axes), -1).T
        least = min(used.get(tuple(c), 0) for c in combos)
        pick = [c for c in combos if used.get(tuple(c), 0) == least]
        choice = tuple(int(j) for j in pick[int(rng.integers(len(pick)))])
        used[choice] = used.get(choice, 0) + 1
        for a, j in enumerate(choice):
            counts[a][j] += 1
        out.append(tuple(axes[a][0][j] for a, j in enumerate(choice)))
    return out


def measure_following(
    phrases: Sequence[str],
    generate_read: Callable[[str], tuple[np.ndarray, np.ndarray]],
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(follow, keep): follow is (len(phrases) + 1, k) histograms, row 0 the images without a
    phrase, then one row per phrase; keep is the share of each row's images kept as their class.
    `generate_read(phrase)` renders a small batch with the phrase (NONE: without) and returns the
    cells its images are read as and whether the class filter kept each one. The histogram is read
    off the kept images (those are the ones a round keeps), or all of them when none was kept."""
    rows, keep = [], []
    for p in [NONE, *phrases]:
        cells, kept = generate_read(p)
        cells, kept = np.asarray(cells, dtype=int), np.asarray(kept, dtype=bool)
        use = cells[kept] if kept.any() else cells
        rows.append(np.bincount(use, minlength=k) / max(len(use), 1))
        keep.append(float(kept.mean()) if len(kept) else 1.0)
    return np.asarray(rows, dtype=float), np.asarray(keep, dtype=float)

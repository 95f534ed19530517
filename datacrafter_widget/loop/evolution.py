"""Prompt evolution from sample-level feedback (DataCrafter's loop, done for real).

The released DataCrafter code only appends fixed strings to prompts. Here each class keeps a
population of prompt *genomes*: a list of positive phrases (content labels, attributes, styles)
plus a list of negative phrases. Candidates are evaluated by actually generating a small batch
(common seeds across candidates, so differences come from the prompt, not the noise) and scoring
the images against the person's feedback with CLIP:

    fitness = sim(images, good) - sim(images, bad) - sim(images, unwanted labels)
              + w_class * p(intended class) + w_div * diversity

Mutation adds / drops / swaps phrases drawn from the vocabulary and from the content labels of
good images (biased towards phrases whose text embedding sits near the good images and far from
the bad ones), and moves phrases near the bad images, or labels marked unwanted, into the negative
prompt. Crossover mixes the phrase sets of two parents. The winner of each class becomes its
current prompt; a readable diff says what changed and why, and is kept in the prompt book.

This module computes only: candidate images come from a `generate(prompts, negatives, seeds)`
callable and the vocabulary and prompt grammar are arguments (the starter kit supplies its own in
starter/prompts.py); the controller renders the candidates (controller/rounds.py) and keeps the
result in prompts.json (controller/prompt_book.py).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from .. import compute
from ..seeds import image_seed
from .balance import NONE, AxisBalance, axis_targets, measure_following, mixture_weights, read_axis, spread_joint


__all__ = [
    "EvolutionError",
    "Genome",
    "Candidate",
    "ClassResult",
    "EvolutionResult",
    "evolve_prompts",
    "default_compose",
    "DEFAULT_STYLES",
    "GenerateFn",
]

DEFAULT_TEMPLATE = "a photo of a {class}"
DEFAULT_STYLES = [
    "a close-up photo",
    "bright lighting",
    "a plain background",
    "high detail",
    "centered",
    "natural light",
    "a cartoon",
    "a sketch",
]

GenerateFn = Callable[[list[str], list[str], list[int]], list[Image.Image]]


class EvolutionError(ValueError):
    """Evolution cannot run (no feedback yet, unknown class, no generator); names the fix."""


@dataclass(frozen=True)
class Genome:
    """One prompt: the class, its positive phrases and its negative phrases (order kept)."""

    label: str
    phrases: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()

    def key(self) -> tuple:
        return (self.label, tuple(sorted(self.phrases)), tuple(sorted(self.negative)))

    def negative_prompt(self) -> str:
        return ", ".join(self.negative)


def default_compose(template: str = DEFAULT_TEMPLATE) -> Callable[[Genome], str]:
    """'a photo of a {class}, phrase, phrase' (the captions-as-prompts shape)."""

    def compose(g: Genome) -> str:
        base = template.replace("{class}", g.label).replace("{}", g.label)
        return ", ".join([base, *g.phrases]) if g.phrases else base

    return compose


@dataclass
class Candidate:
    genome: Genome
    prompt: str
    fitness: float = -math.inf
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class ClassResult:
    label: str
    ranked: list[Candidate]
    previous: Genome
    diff: list[str]
    mixture: list[str] = field(default_factory=list)  # prompts cycled per image when the class is rebalanced
    balance: list[AxisBalance] = field(default_factory=list)

    @property
    def best(self) -> Candidate:
        return self.ranked[0]


@dataclass
class EvolutionResult:
    """Per class: the ranked candidates, the diff of the winner against the previous prompt."""

    classes: dict[str, ClassResult]
    round: int

    @property
    def prompts(self) -> dict[str, str]:
        return {c: r.best.prompt for c, r in self.classes.items()}

    @property
    def negative_prompts(self) -> dict[str, str]:
        return {c: r.best.genome.negative_prompt() for c, r in self.classes.items()}

    @property
    def mixtures(self) -> dict[str, list[str]]:
        """The prompts each image of a class cycles through (the winner alone where nothing was rebalanced)."""
        return {c: list(r.mixture) or [r.best.prompt] for c, r in self.classes.items()}

    def ranked_frame(self) -> pd.DataFrame:
        rows = []
        for c, r in self.classes.items():
            for rank, cand in enumerate(r.ranked):
                rows.append(
                    {
                        "class": c,
                        "rank": rank,
                        "prompt": cand.prompt,
                        "negative_prompt": cand.genome.negative_prompt(),
                        "fitness": cand.fitness,
                        **cand.parts,
                    }
                )
        return pd.DataFrame(rows)

    def report(self) -> str:
        lines = []
        for c, r in self.classes.items():
            lines.append(
                f"class {c}: {r.best.prompt!r}  negative: {r.best.genome.negative_prompt()!r}  fitness {r.best.fitness:.3f}"
            )
            lines += [f"  {d}" for d in r.diff] or ["  (unchanged)"]
            if len(set(r.mixture)) > 1:
                lines.append(
                    f"  {len(set(r.mixture))} prompts cycled over its images, e.g. {r.mixture[0]!r}, {r.mixture[1]!r}"
                )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"EvolutionResult(round={self.round})\n{self.report()}"


# ---- feedback --------------------------------------------------------------------------------
def _labels_of(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if not isinstance(value, str) or not value.strip():
        return []
    try:
        parsed = json.loads(value)
    except ValueError:
        return [value]
    return [str(v) for v in parsed] if isinstance(parsed, list) else [str(parsed)]


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class _Feedback:
    good: dict[str, np.ndarray]  # class -> (n, d) embeddings of good images (or accepted ones)
    bad: dict[str, np.ndarray]
    good_count: dict[str, int]
    bad_all: np.ndarray
    unwanted: dict[str, list[str]]  # class -> labels marked unwanted
    good_labels: dict[str, list[str]]  # class -> content labels of good images
    fewer: dict[str, np.ndarray]  # class -> lassoed images without words ("fewer of these")
    fewer_ids: dict[str, list[str]]


def _collect(
    samples: pd.DataFrame,
    classes: Sequence[str],
    load_image: Callable[[str], Image.Image],
    embed_images: Callable[[list[Image.Image]], np.ndarray],
    bad_labels: Sequence[str],
    content_labels: Mapping[str, Sequence[str]] | None,
) -> _Feedback:
    fb = samples["feedback"].fillna("").astype(str)
    good_rows = samples[fb == "good"]
    bad_rows = samples[fb.isin(["bad", "removed"])]
    if len(good_rows) == 0 and len(bad_rows) == 0 and not bad_labels:
        raise EvolutionError(
            "no feedback yet: mark images first with crafter.feedback(bad=ids, good=ids, "
            "bad_labels=[...]) or by lassoing them in the widget, then evolve"
        )
    ids = list(good_rows["id"]) + list(bad_rows["id"])
    emb = _norm(np.asarray(embed_images([load_image(i) for i in ids]), dtype=np.float32)) if ids else np.zeros((0, 1))
    by_id = dict(zip(ids, emb))
    # Without explicit good marks, the class's unmarked generated images (shown, not lassoed, not
    # flagged off-class) are the reference; the real train images only when there are none. A small
    # real train split carries its shortcuts (a background tied to the class), and using it as the
    # reference made evolution add that background to the prompt (benchmarks/results/NOTES.md).
    flag = samples["flag"].fillna("").astype(str) if "flag" in samples else pd.Series("", index=samples.index)
    unmarked_generated = samples[(fb == "") & (flag == "") & (samples["source"] == "generated")]
    real_train = samples[(fb == "") & (samples["source"] == "real") & (samples["split"] == "train")]
    good, bad, good_count, unwanted, good_labels, fewer, fewer_ids = {}, {}, {}, {}, {}, {}, {}
    wordless = (
        bad_rows["feedback_labels"].map(lambda v: not _labels_of(v))
        if "feedback_labels" in bad_rows
        else pd.Series(True, index=bad_rows.index)
    )
    for c in classes:
        g_ids = good_rows[good_rows["label"] == c]["id"].tolist()
        b_ids = bad_rows[bad_rows["label"] == c]["id"].tolist()
        good_count[c] = len(g_ids)
        if g_ids:
            good[c] = np.stack([by_id[i] for i in g_ids])
        else:
            ref = (
                unmarked_generated[unmarked_generated["label"] == c]["id"].tolist()[:REFERENCE_MAX]
                or real_train[real_train["label"] == c]["id"].tolist()[:REFERENCE_MAX]
            )
            good[c] = (
                _norm(np.asarray(embed_images([load_image(i) for i in ref]), dtype=np.float32))
                if ref
                else np.zeros((0, emb.shape[1] if len(emb) else 1))
            )
        bad[c] = np.stack([by_id[i] for i in b_ids]) if b_ids else np.zeros((0, good[c].shape[1]))
        f_ids = bad_rows[(bad_rows["label"] == c) & wordless]["id"].tolist()
        fewer[c] = np.stack([by_id[i] for i in f_ids]) if f_ids else np.zeros((0, good[c].shape[1]))
        fewer_ids[c] = f_ids
        labels = list(bad_labels)
        for v in bad_rows[bad_rows["label"] == c].get("feedback_labels", pd.Series(dtype=str)):
            labels += _labels_of(v)
        unwanted[c] = list(dict.fromkeys(l.strip() for l in labels if l and l.strip()))
        gl: list[str] = []
        for i in g_ids:
            gl += list((content_labels or {}).get(i, ()))
        good_labels[c] = gl
    bad_all = np.stack([by_id[i] for i in bad_rows["id"]]) if len(bad_rows) else np.zeros((0, 1))
    return _Feedback(good, bad, good_count, bad_all, unwanted, good_labels, fewer, fewer_ids)


REFERENCE_MAX = 128  # unmarked images per class that stand for "what the person kept"


# ---- the evolutionary search -------------------------------------------------------------------
@dataclass
class _Context:
    label: str
    vocabulary: list[str]
    affinity: dict[str, float]  # phrase -> sim to good - sim to bad (text-image)
    near_good: dict[str, int]  # phrase -> number of good images it sits closer to than to the bad ones
    near_bad: dict[str, int]
    unwanted: list[str]
    label_counts: dict[str, int]  # content label -> number of good images with it
    may_add: bool = True  # positive phrases only come from images marked good
    negate_unwanted: bool = True  # labels marked unwanted go to the negative prompt (measured: _unwanted_test)
    kept_share: dict[str, float] = field(default_factory=dict)  # phrase -> share of kept images it describes

    def may_negate(self, phrase: str) -> bool:
        """A phrase that describes at least KEPT_SHARE_MAX of the images the person kept is content
        they accepted: lassoing the rest of it says "fewer", and a negative prompt would remove it
        from the whole class (a class-specific gap, i.e. a new shortcut: benchmarks/results/NOTES.md)."""
        return self.kept_share.get(phrase, 0.0) < KEPT_SHARE_MAX


KEPT_SHARE_MAX = 0.1


def _phrase_stats(
    vocab: list[str], text_emb: np.ndarray, good: np.ndarray, bad: np.ndarray
) -> tuple[dict, dict, dict, dict]:
    """Per phrase: affinity (mean text-image similarity to good minus bad), how many good images sit
    above the bad mean, how many bad images above the good mean, and the share of good images on
    the bad side of the midpoint (the kept images the phrase describes as well as the lassoed ones)."""
    aff, near_good, near_bad, kept_share = {}, {}, {}, {}
    for p, t in zip(vocab, text_emb):
        sg = good @ t if len(good) else np.zeros(0)
        sb = bad @ t if len(bad) else np.zeros(0)
        mg = float(sg.mean()) if len(sg) else 0.0
        mb = float(sb.mean()) if len(sb) else 0.0
        aff[p] = mg - mb if len(sb) and len(sg) else (mg if len(sg) else -mb)
        near_good[p] = int((sg > mb).sum()) if len(sb) else 0
        near_bad[p] = int((sb > mg).sum()) if len(sg) else int(len(sb))
        kept_share[p] = float((sg > (mg + mb) / 2).mean()) if len(sg) and len(sb) and mb > mg else 0.0
    return aff, near_good, near_bad, kept_share


def _mutate(g: Genome, ctx: _Context, rng: np.random.Generator, max_phrases: int) -> Genome:
    phrases, negative = list(g.phrases), list(g.negative)
    pool = [p for p in ctx.vocabulary if p not in phrases and p not in negative and not _mentions(p, ctx.unwanted)]
    op = rng.choice(["add", "drop", "swap", "neg_add", "neg_drop"], p=[0.35, 0.15, 0.25, 0.15, 0.10])
    if not ctx.may_add and op in ("add", "swap"):
        op = "neg_add"
    if op in ("add", "swap") and pool:
        # Phrases near the good images (and the good images' own labels) are drawn more often.
        w = np.array([math.exp(8.0 * ctx.affinity.get(p, 0.0)) * (1 + ctx.label_counts.get(p, 0)) for p in pool])
        new = pool[int(rng.choice(len(pool), p=w / w.sum()))]
        if op == "swap" and phrases:
            phrases[int(rng.integers(len(phrases)))] = new
        elif len(phrases) < max_phrases:
            phrases.append(new)
    elif op == "drop" and phrases:
        phrases.pop(int(rng.integers(len(phrases))))
    elif op == "neg_add":
        neg_pool = [
            p
            for p in ctx.vocabulary
            if p not in negative and p not in phrases and ctx.affinity.get(p, 0.0) < 0 and ctx.may_negate(p)
        ]
        if neg_pool:
            w = np.array([math.exp(-8.0 * ctx.affinity[p]) for p in neg_pool])
            negative.append(neg_pool[int(rng.choice(len(neg_pool), p=w / w.sum()))])
    elif op == "neg_drop":
        removable = [p for p in negative if p not in ctx.unwanted]
        if removable:
            negative.remove(removable[int(rng.integers(len(removable)))])
    return Genome(g.label, tuple(dict.fromkeys(phrases)), tuple(dict.fromkeys(negative)))


def _crossover(a: Genome, b: Genome, rng: np.random.Generator, max_phrases: int) -> Genome:
    phrases = [p for p in dict.fromkeys(a.phrases + b.phrases) if rng.random() < 0.5]
    negative = [
        p for p in dict.fromkeys(a.negative + b.negative) if rng.random() < 0.5 or p in a.negative and p in b.negative
    ]
    return Genome(a.label, tuple(phrases[:max_phrases]), tuple(negative))


def _mentions(phrase: str, words: Sequence[str]) -> bool:
    low = f" {phrase.lower()} "
    return any(f" {w.lower()} " in low or w.lower() == phrase.lower() for w in words if w)


def _enforce(g: Genome, ctx: _Context) -> Genome:
    """Unwanted labels always sit in the negative prompt and never in the positive phrases."""
    phrases = tuple(p for p in g.phrases if not _mentions(p, ctx.unwanted))
    if ctx.negate_unwanted:
        negative = tuple(dict.fromkeys([*g.negative, *ctx.unwanted]))
    else:
        negative = tuple(p for p in g.negative if p not in ctx.unwanted)
    return Genome(g.label, phrases, negative)


def _unwanted_test(
    g: Genome,
    unwanted: Sequence[str],
    compose: Callable[[Genome], str],
    generate: GenerateFn,
    embedder: Any,
    seeds: list[int],
) -> tuple[bool, str]:
    """Does the negative prompt of the labels marked unwanted make the class's images read as the
    class (CLIP zero-shot against those labels) more often than without it? On a small model a
    negative prompt can cost the content itself (the starter's 8s and 9s: benchmarks/results/NOTES.md)."""
    names = [g.label, *[u for u in unwanted if u != g.label]]
    without = Genome(g.label, g.phrases, tuple(p for p in g.negative if p not in unwanted))
    with_neg = Genome(g.label, g.phrases, tuple(dict.fromkeys([*without.negative, *unwanted])))
    n = len(seeds)
    both = (without, with_neg)  # rendered in one call
    images = generate(
        [compose(g) for g in both for _ in seeds], [g.negative_prompt() for g in both for _ in seeds], seeds * 2
    )
    hits = []
    for k in range(2):
        probs = np.asarray(
            embedder.zero_shot(_norm(np.asarray(embedder.embed_images(images[k * n : (k + 1) * n]))), names)
        )
        hits.append(int((probs.argmax(axis=1) == 0).sum()))
    words = ", ".join(repr(u) for u in unwanted)
    # Strictly more: a negative prompt costs more than what it names (the starter's images are
    # worse and fewer pass the class filter with one), so it must earn its place.
    if hits[1] > hits[0]:
        return True, f"  ({words} as negative: {hits[1]}/{n} images read as {g.label!r}; without: {hits[0]}/{n})"
    return False, (
        f"~ {words} marked unwanted but kept out of the negative prompt: with it {hits[1]}/{n} images "
        f"read as {g.label!r}, without it {hits[0]}/{n}"
    )


def _diff(old: Genome, new: Genome, ctx: _Context, n_good: int) -> list[str]:
    lines = []
    for p in new.phrases:
        if p not in old.phrases:
            why = []
            if ctx.label_counts.get(p):
                why.append(f"content label of {ctx.label_counts[p]} good image(s)")
            if ctx.near_good.get(p):
                why.append(f"close to {ctx.near_good[p]} {'good' if n_good else 'accepted'} image(s)")
            if not why:
                why.append(f"raised fitness (affinity {ctx.affinity.get(p, 0.0):+.3f})")
            lines.append(f"+ {p!r} ({'; '.join(why)})")
    for p in old.phrases:
        if p not in new.phrases:
            if _mentions(p, ctx.unwanted):
                lines.append(f"- {p!r} (mentions a label marked unwanted)")
            elif p in new.negative:
                lines.append(f"- {p!r} moved to negative (close to {ctx.near_bad.get(p, 0)} bad image(s))")
            else:
                lines.append(f"- {p!r} (dropped: fitness was higher without it)")
    for p in new.negative:
        if p not in old.negative and p not in old.phrases:
            if p in ctx.unwanted:
                lines.append(f"- {p!r} moved to negative: marked unwanted")
            else:
                lines.append(f"- {p!r} moved to negative (close to {ctx.near_bad.get(p, 0)} bad image(s))")
    for p in old.negative:
        if p not in new.negative:
            lines.append(f"+ {p!r} no longer negative (fitness was higher without it)")
    return lines


def _fitness(
    images: list[Image.Image],
    g: Genome,
    embed_images,
    embedder: Any,
    label: str,
    classes: Sequence[str],
    good: np.ndarray,
    bad: np.ndarray,
    unwanted_emb: np.ndarray,
    weights: Mapping[str, float],
) -> dict[str, float]:
    e = _norm(np.asarray(embed_images(images), dtype=np.float32))
    parts: dict[str, float] = {}
    # Nearest-neighbour similarity: an image should resemble *some* good image (not their average,
    # which would reward collapsing onto one mode) and resemble no bad image.
    parts["good"] = float((e @ good.T).max(axis=1).mean()) if len(good) else 0.0
    parts["bad"] = float((e @ bad.T).max(axis=1).mean()) if len(bad) else 0.0
    parts["unwanted"] = float((e @ unwanted_emb.T).max(axis=1).mean()) if len(unwanted_emb) else 0.0
    if hasattr(embedder, "zero_shot") and len(classes) > 1:
        probs = np.asarray(embedder.zero_shot(e, list(classes)))
        parts["class_prob"] = float(probs[:, list(classes).index(label)].mean())
    else:
        parts["class_prob"] = 0.0
    if len(e) > 1:
        sim = e @ e.T
        parts["diversity"] = float(1.0 - (sim.sum() - np.trace(sim)) / (len(e) * (len(e) - 1)))
    else:
        parts["diversity"] = 0.0
    parts["fitness"] = (
        weights["good"] * parts["good"]
        - weights["bad"] * parts["bad"]
        - weights["unwanted"] * parts["unwanted"]
        + weights["class_prob"] * parts["class_prob"]
        + weights["diversity"] * parts["diversity"]
    )
    return parts


DEFAULT_WEIGHTS = {"good": 1.0, "bad": 1.0, "unwanted": 1.0, "class_prob": 0.5, "diversity": 0.2}


def evolve_prompts(
    samples: pd.DataFrame,
    *,
    classes: Sequence[str],
    generate: GenerateFn,
    embedder: Any,
    load_image: Callable[[str], Image.Image],
    current: Mapping[str, Genome] | None = None,
    vocabulary: Sequence[str] | None = None,
    content_labels: Mapping[str, Sequence[str]] | None = None,
    bad_labels: Sequence[str] = (),
    only_classes: Sequence[str] | None = None,
    compose: Callable[[Genome], str] | None = None,
    population: int = 6,
    generations: int = 2,
    batch: int = 4,
    max_phrases: int = 4,
    weights: Mapping[str, float] | None = None,
    seed: int = 0,
    round: int = 1,
    progress: bool | Callable[[int, int], None] = False,
    should_stop: Callable[[], bool] | None = None,
    axes: Mapping[str, Sequence[str]] | None = None,
    mixture_size: int = 24,
    test_negatives: bool = True,
    lassos: Sequence[Sequence[str]] = (),
    render_batch: int = 64,
) -> EvolutionResult:
    """Evolve each class's prompt from the feedback in `samples` (the store's samples table).

    generate(prompts, negative_prompts, seeds) -> images produces candidate batches; `embedder`
    gives CLIP image/text embeddings (embed_images, embed_texts, zero_shot). Classes with feedback
    (or all, when unwanted labels are given) are evolved; `only_classes` narrows that. Cancelling
    keeps the best candidate found so far for every class already started.

    `axes` (attribute name -> mutually exclusive phrases, e.g. the backgrounds) lets evolution act
    on lassos without words ("fewer of these"): each class then gets a mixture of `mixture_size`
    prompts whose attribute histogram matches what the lassos ask for (loop/balance.py); `lassos`
    (the ids of each feedback action, from feedback.json) tells which images were lassoed together.
    Measuring how the generator follows each phrase costs (phrases + 1) x max(2 x batch, classes)
    images per axis. With `test_negatives`, labels marked unwanted become a negative prompt only
    where that makes more images read as the class (measured on max(16, 4 x batch) images with and
    without).

    A population's new candidates, the negative-prompt test and an axis's phrase measurements each
    render in one batch, passed to `generate` in calls of at most `render_batch` images (the
    generator's batch size: fewer, larger calls render faster; each call may report progress).
    """
    classes = [str(c) for c in classes]
    if only_classes is not None:
        unknown = [c for c in only_classes if str(c) not in classes]
        if unknown:
            raise EvolutionError(f"unknown class(es) {unknown}: the classes are {classes}")
    if generate is None:
        raise EvolutionError(
            "evolution generates candidate batches and needs a generator: pass models=dc.starter.models() or a Stable Diffusion model"
        )
    if embedder is None:
        raise EvolutionError(
            "evolution scores candidates with CLIP and needs an embedder: pass models with an embedder"
        )
    if int(render_batch) < 1:
        raise EvolutionError(f"render_batch={render_batch} must be at least 1")
    if population < 2 or generations < 1 or batch < 1:
        raise EvolutionError(
            f"population={population}, generations={generations}, batch={batch}: use population >= 2, generations >= 1, batch >= 1"
        )
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    compose = compose or default_compose()
    fb = _collect(samples, classes, load_image, embedder.embed_images, bad_labels, content_labels)
    current = dict(current or {})
    vocab_base = list(dict.fromkeys(list(vocabulary) if vocabulary is not None else DEFAULT_STYLES))
    fbcol = samples["feedback"].fillna("").astype(str)
    with_feedback = set(samples[fbcol != ""]["label"].astype(str))
    targets = [c for c in (only_classes or classes) if str(c) in with_feedback or bad_labels]
    if not targets:
        raise EvolutionError(
            f"no feedback yet for the class(es) {list(only_classes or classes)}: mark some of their images good or bad first"
        )

    rng = np.random.default_rng(seed)
    seeds = [image_seed(seed, k) for k in range(batch)]  # common random numbers across candidates (the round's seeds)
    bar = None
    total = len(targets) * generations + len(axes or {})
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="evolving prompts", leave=False)
    done = 0
    render = generate
    rendered = [0, time.monotonic()]  # batches rendered, time of the last report

    def ticking(prompts: list[str], negatives: list[str], seeds: list[int]) -> list[Image.Image]:
        # every rendered call (at most render_batch images) may report: a busy CPU still ticks
        images: list[Image.Image] = []
        for at in range(0, len(prompts), int(render_batch)):
            end = at + int(render_batch)
            images += render(prompts[at:end], negatives[at:end], seeds[at:end])
            rendered[0] += 1
            if time.monotonic() - rendered[1] >= compute.HEARTBEAT_S:
                rendered[1] = time.monotonic()
                if bar is not None:
                    bar.set_postfix_str(f"{rendered[0]} batches rendered")
                elif callable(progress):
                    progress(done, total)
        return images

    generate = ticking
    results: dict[str, ClassResult] = {}
    cancelled = False
    for c in targets:
        labels_here = list(dict.fromkeys(fb.good_labels[c]))
        vocab = list(dict.fromkeys(vocab_base + [l for l in labels_here if not _mentions(l, fb.unwanted[c])]))
        text_emb = _norm(np.asarray(embedder.embed_texts(vocab), dtype=np.float32)) if vocab else np.zeros((0, 1))
        bad_ref = fb.bad[c] if len(fb.bad[c]) else fb.bad_all
        aff, near_good, near_bad, kept_share = _phrase_stats(vocab, text_emb, fb.good[c], bad_ref)
        # Lassoed images say what is unwanted, not what is wanted: without good marks, evolution
        # only moves phrases to the negative prompt. One prompt serves a whole class, so an added
        # attribute ("blue", "on a gray background") pins it for every image of the class: a new
        # shortcut (benchmarks/results/NOTES.md, loop track: accuracy 0.62 -> 0.34).
        previous = current.get(c, Genome(c))
        negate, unwanted_note = True, ""
        if fb.unwanted[c] and test_negatives and hasattr(embedder, "zero_shot"):
            test_seeds = [image_seed(seed, 10_000 + k) for k in range(max(16, 4 * batch))]
            negate, unwanted_note = _unwanted_test(previous, fb.unwanted[c], compose, generate, embedder, test_seeds)
        ctx = _Context(
            c,
            vocab,
            aff,
            near_good,
            near_bad,
            fb.unwanted[c],
            {l: fb.good_labels[c].count(l) for l in labels_here},
            may_add=fb.good_count[c] > 0,
            kept_share=kept_share,
            negate_unwanted=negate,
        )
        unwanted_emb = (
            _norm(np.asarray(embedder.embed_texts(fb.unwanted[c]), dtype=np.float32))
            if fb.unwanted[c]
            else np.zeros((0, 1))
        )
        seen: dict[tuple, Candidate] = {}

        def score(genomes: Sequence[Genome]) -> list[Candidate]:
            # A population's new candidates render in one call (a small model's images/s grows with
            # the batch); each candidate keeps its own `batch` images on the round's seeds.
            gs = [_enforce(g, ctx) for g in genomes]
            new: list[Genome] = []
            for g in gs:  # the first genome of a key is the one kept, as when each was scored in turn
                if g.key() not in seen and all(g.key() != k.key() for k in new):
                    new.append(g)
            if new:
                prompts = [compose(g) for g in new]
                images = generate(
                    [p for p in prompts for _ in range(batch)],
                    [g.negative_prompt() for g in new for _ in range(batch)],
                    [s for _ in new for s in seeds],
                )
                for k, (g, prompt) in enumerate(zip(new, prompts)):
                    parts = _fitness(
                        images[k * batch : (k + 1) * batch],
                        g,
                        embedder.embed_images,
                        embedder,
                        c,
                        classes,
                        fb.good[c],
                        bad_ref,
                        unwanted_emb,
                        weights,
                    )
                    seen[g.key()] = Candidate(g, prompt, parts.pop("fitness"), parts)
            return [seen[g.key()] for g in gs]

        firsts: dict[tuple, Genome] = {}  # enforced key -> the first genome of it, which scoring keeps

        def first(g: Genome) -> Genome:
            e = _enforce(g, ctx)
            return firsts.setdefault(e.key(), e)

        start = [previous]
        # Directed seeds: the phrase nearest the bad images into the negative, the one nearest the good ones added.
        ranked_vocab = sorted((p for p in vocab if p not in previous.phrases), key=lambda p: aff[p])
        negatable = [p for p in ranked_vocab if ctx.may_negate(p)]
        if negatable and aff[negatable[0]] < 0 and near_bad.get(negatable[0], 0):
            start.append(Genome(c, previous.phrases, tuple(dict.fromkeys([*previous.negative, negatable[0]]))))
        if (
            ctx.may_add
            and ranked_vocab
            and aff[ranked_vocab[-1]] > 0
            and len(previous.phrases) < max_phrases
            and len(start) < population
        ):
            start.append(Genome(c, (*previous.phrases, ranked_vocab[-1]), previous.negative))
        while len(start) < population:
            for g in start:
                first(g)
            base = previous if rng.random() < 0.7 else first(start[-1])
            start.append(_mutate(base, ctx, rng, max_phrases))
        pop = score(start)
        for gen in range(generations):
            if should_stop is not None and should_stop():
                cancelled = True
                break
            pop.sort(key=lambda k: -k.fitness)
            parents = pop[: max(2, population // 2)]
            children: list[Genome] = []
            while len(children) < population - len(parents):
                a, b = rng.choice(len(parents), size=2, replace=False)
                child = (
                    _crossover(parents[a].genome, parents[b].genome, rng, max_phrases)
                    if rng.random() < 0.5
                    else parents[a].genome
                )
                children.append(_mutate(child, ctx, rng, max_phrases))
            pop = parents + score(children)
            done += 1
            if bar is not None:
                bar.update(1)
            elif callable(progress):
                progress(done, total)
        ranked = sorted({k.genome.key(): k for k in pop}.values(), key=lambda k: -k.fitness)
        diff = _diff(previous, ranked[0].genome, ctx, fb.good_count[c])
        if unwanted_note:
            diff = [*diff, unwanted_note] if negate else [unwanted_note, *diff]
        results[c] = ClassResult(c, ranked, previous, diff)
        if cancelled:
            break
    if axes and results and not cancelled:

        def tick() -> None:
            nonlocal done
            done += 1
            if bar is not None:
                bar.update(1)
            elif callable(progress):
                progress(done, total)

        keeps = _class_keeper(samples, classes, load_image, embedder)
        _rebalance(
            results, fb, axes, lassos, compose, generate, embedder, keeps, seed, batch, mixture_size, should_stop, tick
        )
    if bar is not None:
        bar.close()
    return EvolutionResult(results, int(round))


KeepFn = Callable[[np.ndarray, Sequence[str]], np.ndarray]  # (image embeddings, classes) -> kept as the class


def _class_keeper(
    samples: pd.DataFrame,
    classes: Sequence[str],
    load_image: Callable[[str], Image.Image],
    embedder: Any,
    per_class: int = 32,
) -> KeepFn | None:
    """The class filter a round applies (loop/class_filter.py), fitted on up to `per_class` real
    train images of each class: whether each candidate image would be kept as its class."""
    from .class_filter import ClassFilter

    real = samples[(samples["source"] == "real") & (samples["split"] == "train")]
    real = real.groupby("label", sort=False).head(per_class)
    if real.empty:
        return None
    emb = np.asarray(embedder.embed_images([load_image(i) for i in real["id"]]), dtype=np.float32)
    flt = ClassFilter(embedder, [str(c) for c in classes]).fit(emb, real["label"].astype(str).tolist())

    def keeps(image_emb: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        return np.array([flag == "" for flag, _ in flt.check(image_emb, [str(l) for l in labels])], dtype=bool)

    return keeps


def _rebalance(
    results: dict[str, ClassResult],
    fb: _Feedback,
    axes: Mapping[str, Sequence[str]],
    lassos: Sequence[Sequence[str]],
    compose: Callable[[Genome], str],
    generate: GenerateFn,
    embedder: Any,
    keeps: KeepFn | None,
    seed: int,
    batch: int,
    mixture_size: int,
    should_stop: Callable[[], bool] | None,
    tick: Callable[[], None],
) -> None:
    """Give each evolved class a mixture of prompts whose attribute histogram follows the lassos
    without words (loop/balance.py). The histogram is read from the judged images of all evolved
    classes together: a class's own 10-30 images are too few to read one from."""
    evolved = list(results)
    kept = [fb.good[c] for c in evolved if len(fb.good[c])]
    fewer = [fb.fewer[c] for c in evolved if len(fb.fewer[c])]
    if not kept or not fewer:
        return
    emb = np.concatenate([*kept, *fewer]).astype(np.float32)
    lassoed = np.r_[np.zeros(sum(map(len, kept)), bool), np.ones(sum(map(len, fewer)), bool)]
    action = {i: k for k, ids in enumerate(lassos) for i in ids}  # the last action that lassoed an id
    groups = np.r_[
        np.full(int((~lassoed).sum()), -1), [action.get(i, -1) for c in evolved for i in fb.fewer_ids[c]]
    ].astype(int)
    n_follow = max(2 * batch, len(evolved))
    follow_seeds = [image_seed(seed, 20_000 + j) for j in range(n_follow)]
    balances: list[AxisBalance] = []
    read: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
    for axis, phrases_in in axes.items():
        phrases = list(dict.fromkeys(str(p) for p in phrases_in))
        phrase_emb = _norm(np.asarray(embedder.embed_texts(phrases), dtype=np.float32))
        read[axis] = (phrases, phrase_emb, read_axis(emb, phrase_emb))
    targets = axis_targets({a: (v, len(p)) for a, (p, _, v) in read.items()}, lassoed, groups=groups)
    for axis, (phrases, phrase_emb, _) in read.items():
        if should_stop is not None and should_stop():
            return
        if axis not in targets:
            tick()
            continue
        seen, target, capped = targets[axis]

        # Every phrase's follow-up batch (and the one without a phrase) renders in one call.
        genomes = []
        for phrase in [NONE, *phrases]:
            for j in range(n_follow):
                g = results[evolved[j % len(evolved)]].best.genome
                rest = tuple(p for p in g.phrases if p not in phrases)
                genomes.append(Genome(g.label, rest + ((phrase,) if phrase else ()), g.negative))
        images = generate(
            [compose(g) for g in genomes], [g.negative_prompt() for g in genomes], follow_seeds * (len(phrases) + 1)
        )
        found = np.asarray(embedder.embed_images(images), dtype=np.float32)
        kept_all = keeps(found, [g.label for g in genomes]) if keeps is not None else np.ones(len(images), bool)
        cells_all = read_axis(_norm(found), phrase_emb)
        rows = {p: slice(k * n_follow, (k + 1) * n_follow) for k, p in enumerate([NONE, *phrases])}

        def generate_read(
            phrase: str, rows: dict[str, slice] = rows, cells: np.ndarray = cells_all, kept: np.ndarray = kept_all
        ) -> tuple[np.ndarray, np.ndarray]:
            return cells[rows[phrase]], kept[rows[phrase]]

        follow, keep = measure_following(phrases, generate_read, len(phrases))
        w = mixture_weights(follow, target, keep=keep)
        names = [NONE, *phrases]
        balances.append(
            AxisBalance(
                axis,
                phrases,
                seen,
                target,
                [phrases[j] for j in capped],
                {names[i]: float(w[i]) for i in range(len(names))},
                follow.T @ w,
                {names[i]: float(keep[i]) for i in range(len(names))},
            )
        )
        tick()
    if not balances:
        return
    balanced = {p for b in balances for p in b.phrases}
    for i, c in enumerate(evolved):
        rng = np.random.default_rng([seed, i])
        combos = spread_joint([b.weights for b in balances], mixture_size, rng)
        r = results[c]
        g = r.best.genome
        rest = tuple(p for p in g.phrases if p not in balanced)
        # The mixture owns a balanced axis: a phrase of it left in the negative prompt would fight the
        # prompts that name it (and remove that cell from the class, a new shortcut).
        dropped = [p for p in g.negative if p in balanced]
        negative = tuple(p for p in g.negative if p not in balanced)
        if dropped:
            r.ranked[0] = replace(r.best, genome=Genome(c, g.phrases, negative))
        mixture = []
        for m in range(mixture_size):
            extra = tuple(p for p in combos[m] if p)
            mixture.append(compose(Genome(c, rest + extra, negative)))
        r.mixture, r.balance = mixture, balances
        notes = [f"'{p}' taken out of the negative prompt: the mixture balances that axis" for p in dropped]
        r.diff = [*r.diff, *(b.describe() for b in balances), *notes]

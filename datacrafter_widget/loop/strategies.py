"""Prompt strategies: turn "N images per class" into a flat list of generation requests.

Strategies only decide *what* to generate (prompt, negative prompt, seed, parent image, strength);
the controller then runs all requests of all classes and strategies together through the
pipeline in full batches. Each request carries everything its provenance row needs.

- "class":   "a photo of a {class}" templates (the class-name baseline).
- "caption": caption each real image, prompt "a photo of {class}, {caption}" (captions as prompts).
- "perturb": image-to-image from each real image with GIF-style latent perturbation, strength 0.5-0.9.
- "custom":  prompts the user gives per class (or templates with {class}).
- "evolved": like custom, with the prompts prompt evolution kept in prompts.json (the controller fills them in).
- "gap":     learned prompt tokens against the student (loop/gap.py); run by crafter.adversarial, not here.

`STRATEGIES` is the one list of strategy names a round or a row can carry; the widget reads it
from Python (`datacrafter_widget.loop.strategies.STRATEGIES`, and `GENERATE_STRATEGIES` for the
ones its Generate button offers) instead of keeping its own copy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..seeds import image_seed

GENERATE_STRATEGIES = ("class", "caption", "perturb", "custom", "evolved")  # crafter.generate / build_requests
STRATEGIES = GENERATE_STRATEGIES + ("gap",)  # every strategy a row can record
CLASS_TEMPLATES = (
    "a photo of a {class}",
    "a close-up photo of a {class}",
    "a bright photo of a {class}",
    "a photo of the {class}",
)
CAPTION_TEMPLATE = "a photo of {class}, {caption}"
PERTURB_STRENGTHS = (0.5, 0.7, 0.9)  # GIF's range 0.5-0.9, in levels so batches stay full
PERTURB_SCALE = 0.3  # scale of e ~ U(0,1) and b ~ N(0,1) in z' = z(1+e)+b


class StrategyError(ValueError):
    """Bad strategy input (unknown class, empty prompt, unknown strategy); names the fix."""


@dataclass
class GenerationRequest:
    """One image to generate, with the provenance it will be stored with."""

    prompt: str
    label: str
    seed: int
    strategy: str
    negative_prompt: str = ""
    parent_id: str = ""
    strength: float = math.nan  # NaN: text-to-image
    latent_perturbation: float = 0.0
    caption: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_img2img(self) -> bool:
        return bool(self.parent_id) and not math.isnan(self.strength)

    def group_key(self) -> tuple:
        """Requests with equal keys can share one pipeline call."""
        if self.is_img2img:
            return ("img2img", round(self.strength, 6), round(self.latent_perturbation, 6))
        return ("txt2img", 0.0, 0.0)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def fill(template: str, label: str, caption: str = "") -> str:
    """Put the class (and caption) into a template; {class} or {} for the class, {caption} for the caption.

    Plain replacement, not str.format, so user prompts with other braces stay as written.
    """
    text = template.replace("{class}", label).replace("{}", label).replace("{caption}", caption)
    return " ".join(text.split()).strip(" ,")


def spread_first(embeddings: np.ndarray) -> list[int]:
    """An order of texts (or images) in which every prefix covers their spread: farthest-point order.

    Starts at the item nearest the mean, then repeatedly takes the item farthest (cosine) from those
    taken. With more captions than images to make, the first k captions of this order span the
    contexts of all of them, where the first k of a random order can miss a whole context (a
    background no early caption names) at small k.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    if len(e) == 0:
        return []
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    first = int(np.argmax(e @ e.mean(0)))
    order = [first]
    nearest = 1.0 - e @ e[first]
    nearest[first] = -np.inf
    for _ in range(len(e) - 1):
        j = int(np.argmax(nearest))
        order.append(j)
        nearest = np.minimum(nearest, 1.0 - e @ e[j])
        nearest[order] = -np.inf
    return order


def check_classes(requested: Sequence[str] | None, classes: Sequence[str]) -> list[str]:
    if requested is None:
        return list(classes)
    requested = [requested] if isinstance(requested, str) else [str(c) for c in requested]
    unknown = [c for c in requested if c not in classes]
    if unknown:
        raise StrategyError(f"unknown class(es) {unknown}: the dataset's classes are {list(classes)}")
    return requested


def negatives_by_class(negative_prompts: str | Mapping[str, str] | None, classes: Sequence[str]) -> dict[str, str]:
    """One negative prompt per class from None, a single string, or a {class: negative} dict."""
    if negative_prompts is None:
        return {c: "" for c in classes}
    if isinstance(negative_prompts, str):
        return {c: negative_prompts for c in classes}
    if isinstance(negative_prompts, Mapping):
        unknown = [k for k in negative_prompts if str(k) not in classes]
        if unknown:
            raise StrategyError(f"negative_prompts names unknown class(es) {unknown}: the classes are {list(classes)}")
        return {c: str(negative_prompts.get(c, "") or "") for c in classes}
    raise StrategyError("negative_prompts must be a string or a {class: negative prompt} dict")


def _prompts_by_class(prompts: Any, classes: Sequence[str], what: str) -> dict[str, list[str]]:
    """User prompts -> {class: [prompt, ...]}; a list / str applies to every class as a template."""
    if prompts is None:
        raise StrategyError(
            f"{what} needs prompts: pass prompts={{'cat': ['a cat on a sofa', ...]}} or a list of templates with {{class}}"
        )
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, Mapping):
        unknown = [k for k in prompts if str(k) not in classes]
        if unknown:
            raise StrategyError(f"prompts name unknown class(es) {unknown}: the classes are {list(classes)}")
        out = {}
        for k, v in prompts.items():
            v = [v] if isinstance(v, str) else list(v)
            out[str(k)] = [fill(p, str(k)) for p in v]
    else:
        templates = list(prompts)
        out = {c: [fill(t, c) for t in templates] for c in classes}
    for c, ps in out.items():
        if not ps:
            raise StrategyError(f"no prompts given for class {c!r}: give at least one non-empty prompt")
        for i, p in enumerate(ps):
            if not p.strip():
                raise StrategyError(f"prompt {i} for class {c!r} is empty: give a non-empty prompt")
    return out


def _parents(real: pd.DataFrame, label: str, n: int) -> list[pd.Series]:
    rows = real[real["label"] == label]
    if len(rows) == 0:
        raise StrategyError(
            f"class {label!r} has no real training image to start from: add images of it or use strategy='class'"
        )
    return [rows.iloc[i % len(rows)] for i in range(n)]


def build_requests(
    strategy: str,
    *,
    classes: Sequence[str],
    per_class: int,
    seed: int,
    real: pd.DataFrame | None = None,
    captions: Mapping[str, str] | None = None,
    prompts: Any = None,
    negative_prompts: str | Mapping[str, str] | None = None,
    strength: float | None = None,
    latent_perturbation: float | None = None,
    caption_template: str = CAPTION_TEMPLATE,
) -> list[GenerationRequest]:
    """The requests for one strategy; request k gets image_seed(seed, k) (the seed policy, seeds.py).

    `real` holds the real training rows (id, label, caption) that image-based strategies start
    from; `captions` maps their ids to captions (the controller fills it from the dataset or the
    captioner).
    """
    if strategy not in GENERATE_STRATEGIES:
        raise StrategyError(f"unknown strategy {strategy!r}: use one of {list(GENERATE_STRATEGIES)}")
    if int(per_class) < 1:
        raise StrategyError(f"per_class={per_class}: ask for at least 1 image per class")
    per_class = int(per_class)
    classes = list(classes)
    negs = negatives_by_class(negative_prompts, classes)
    captions = dict(captions or {})
    requests: list[GenerationRequest] = []

    def add(**kw: Any) -> None:
        requests.append(GenerationRequest(seed=image_seed(seed, len(requests)), strategy=strategy, **kw))

    if strategy == "class":
        templates = (
            list(CLASS_TEMPLATES) if prompts is None else ([prompts] if isinstance(prompts, str) else list(prompts))
        )
        by_class = _prompts_by_class(templates, classes, "strategy='class'")
        for c in classes:
            for k in range(per_class):
                ps = by_class[c]
                add(prompt=ps[k % len(ps)], label=c, negative_prompt=negs[c])
    elif strategy in ("custom", "evolved"):
        by_class = _prompts_by_class(prompts, classes, f"strategy={strategy!r}")
        for c in classes:
            if c not in by_class:
                continue
            ps = by_class[c]
            for k in range(per_class):
                add(prompt=ps[k % len(ps)], label=c, negative_prompt=negs[c])
    else:
        if real is None or len(real) == 0:
            raise StrategyError(
                f"strategy={strategy!r} starts from real images, but the project has none in its train split"
            )
        if strategy == "perturb":
            levels = [float(strength)] if strength is not None else list(PERTURB_STRENGTHS)
            for s in levels:
                if not 0.0 < s <= 1.0:
                    raise StrategyError(f"strength={s}: image-to-image strength must be in (0, 1]")
            scale = PERTURB_SCALE if latent_perturbation is None else float(latent_perturbation)
        for c in classes:
            for k, parent in enumerate(_parents(real, c, per_class)):
                cap = str(captions.get(parent["id"], "") or "").strip()
                if strategy == "caption":
                    prompt = fill(caption_template, c, cap) if cap else fill(CLASS_TEMPLATES[0], c)
                    add(prompt=prompt, label=c, negative_prompt=negs[c], parent_id=str(parent["id"]), caption=cap)
                else:
                    prompt = fill(caption_template, c, cap) if cap else fill(CLASS_TEMPLATES[0], c)
                    add(
                        prompt=prompt,
                        label=c,
                        negative_prompt=negs[c],
                        parent_id=str(parent["id"]),
                        caption=cap,
                        strength=levels[k % len(levels)],
                        latent_perturbation=scale,
                    )
    if not requests:
        raise StrategyError(f"strategy={strategy!r} produced no requests: check prompts and classes")
    return requests


def group_requests(requests: Sequence[GenerationRequest]) -> list[list[int]]:
    """Indices of requests grouped so that each group can go through one pipeline call per batch.

    Order inside a group is the request order, so batches mix classes and strategies freely.
    """
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.group_key(), []).append(i)
    return list(groups.values())

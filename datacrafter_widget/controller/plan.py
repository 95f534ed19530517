"""A round resolved once: its number, seeds, sampler settings, requests and rounds-log entry.

`plan_round` turns a validated `RoundSpec` into a `RoundPlan` and `plan_gap` does the same for a
GAP round; nothing after them resolves a seed, a step count or a guidance scale again. The plan's
`image_requests()` are what a backend receives (backends.py); `requests` keep each image's
provenance for its stored row; `entry` is what rounds.json records for the round.

Seed policy (seeds.py): image k of a round gets `first_seed + k`, where `first_seed` is the
spec's seed, or round * ROUND_SEED_STRIDE; checked here, once, so the last seed fits int64.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from PIL import Image

from .. import limits
from ..loop.strategies import GenerationRequest, build_requests, check_classes
from ..seeds import image_seed, round_seed
from .backends import GeneratedBatch, ImageRequest
from .round_spec import MAX_SEED, RoundSpec, RoundSpecError, _whole

__all__ = ["RoundPlan", "plan_round", "plan_gap", "check_seed_range", "gap_seeds", "source_images"]


def check_seed_range(base: int, n_images: int, seed: int | None) -> None:
    """The seeds base .. base + n - 1 must fit int64 (the store's seed column)."""
    if base + max(0, n_images - 1) > MAX_SEED:
        raise RoundSpecError(
            f"seed={seed}: the round's {n_images} images need seeds up to "
            f"{base + n_images - 1}, above {MAX_SEED} (int64): use a smaller seed"
        )


@dataclass
class RoundPlan:
    """One round, every setting resolved (see the module docstring)."""

    round: int
    seed: int  # the first image's seed; image k has image_seed(seed, k)
    steps: int
    guidance: float
    batch_size: int
    filter: bool
    model: str
    entry: dict[str, Any]  # the rounds.json entry, status "running"
    requests: list[GenerationRequest] = field(default_factory=list)
    #: captions of the real images the requests start from, by sample id
    captions: dict[str, str] = field(default_factory=dict)
    #: ids of the real images whose captions the requests still need (captioned in the round's job)
    uncaptioned: list[str] = field(default_factory=list)
    #: rebuilds `requests` from captions (same seeds, same order): for a round captioned in its job
    build: Callable[[Mapping[str, str]], list[GenerationRequest]] | None = None

    def with_captions(self, new: Mapping[str, str]) -> None:
        """Fill in captions made after planning; the requests keep their count, order and seeds."""
        self.captions.update(new)
        self.uncaptioned = [i for i in self.uncaptioned if i not in new]
        if self.build is not None:
            self.requests = self.build(self.captions)

    def image_requests(self, sources: Mapping[str, Image.Image] | None = None) -> list[ImageRequest]:
        """What the backend gets: request k of the round is index k; requests that can share a pipeline
        call (same mode and strength) share a group, numbered in order of first appearance."""
        groups: dict[tuple[Any, ...], int] = {}
        out = []
        for k, r in enumerate(self.requests):
            img2img = r.is_img2img
            out.append(
                ImageRequest(
                    index=k,
                    group=groups.setdefault(r.group_key(), len(groups)),
                    prompt=r.prompt,
                    negative_prompt=r.negative_prompt,
                    seed=int(r.seed),
                    steps=self.steps,
                    guidance=self.guidance,
                    strength=float(r.strength) if img2img else None,
                    latent_perturbation=float(r.latent_perturbation) if img2img else 0.0,
                    source=(sources or {}).get(r.parent_id) if img2img else None,
                )
            )
        return out

    def batch_id(self, batch: GeneratedBatch) -> str:
        """A batch's provenance name: round, group, first request; its images are replayed together."""
        return f"{self.round}-{batch.group}-{batch.indices[0]}"


def plan_round(
    spec: RoundSpec,
    *,
    round_number: int,
    classes: Sequence[str],
    samples: pd.DataFrame,
    evolved: Callable[[Sequence[str]], tuple[dict[str, list[str]], dict[str, str]]],
    captions: Callable[[pd.DataFrame, bool], tuple[dict[str, str], list[str]]],
    generator: Any,
    batch_size: int,
    backend: Mapping[str, object],
) -> RoundPlan:
    """Resolve a validated spec: classes, prompts (evolved ones from the prompt book), round number,
    seeds, steps, guidance, batch size and the requests; every input is checked here.

    `captions(real rows, required)` gives the captions known now and the ids still without one;
    `evolved(classes)` the prompt book's prompts and negatives."""
    strategies = list(spec.strategies)
    use = check_classes(None if spec.classes is None else list(spec.classes), classes)
    prompts: Any = spec.prompts
    negatives: Any = spec.negative_prompts
    if "evolved" in strategies:
        if len(strategies) > 1 or prompts is not None:
            raise RoundSpecError(
                "strategy='evolved' takes its prompts from prompts.json: run it alone, without prompts="
            )
        prompts, evolved_negs = evolved(use)
        use = [c for c in use if c in prompts]
        negatives = evolved_negs if negatives is None else negatives
    limits.check_round(images=spec.per_class * len(strategies) * len(use))  # before any request is built
    real = samples[(samples["source"] == "real") & (samples["split"] == "train") & samples["label"].isin(use)]
    known: dict[str, str] = {}
    missing: list[str] = []
    if any(x in ("caption", "perturb") for x in strategies):
        known, missing = captions(real, "caption" in strategies)
    extra = {"caption_template": spec.caption_template} if spec.caption_template else {}
    base = round_seed(round_number, spec.seed)

    def build(caps: Mapping[str, str]) -> list[GenerationRequest]:
        requests: list[GenerationRequest] = []
        for strat in strategies:
            requests += build_requests(
                strat,
                classes=use,
                per_class=spec.per_class,
                seed=image_seed(base, len(requests)),
                real=real[["id", "label", "caption"]],
                captions=caps,
                prompts=prompts,
                negative_prompts=negatives,
                strength=spec.strength,
                latent_perturbation=spec.latent_perturbation,
                **extra,
            )
        return requests

    requests = build(known)
    check_seed_range(base, len(requests), spec.seed)
    steps = int(spec.steps or generator.default_steps)
    guidance = float(generator.default_guidance if spec.guidance is None else spec.guidance)
    bs = int(spec.batch_size or batch_size)
    res = int(getattr(generator, "resolution", 512))
    limits.check_round(steps=steps, batch_size=bs, images=len(requests))
    limits.check("resolution", res, "the generator's resolution")
    limits.note_memory(
        f"round {round_number} ({len(requests)} images at {res}px, batches of {bs})",
        limits.estimate_round_mb(len(requests), bs, res),
    )
    entry = {
        **spec.to_dict(),
        "round": round_number,
        "classes": use,
        "seed": base,
        "requested": len(requests),
        "steps": steps,
        "guidance": guidance,
        "batch_size": bs,
        "model": generator.name,
        "filter": bool(spec.filter),
        "status": "running",
        "started": time.time(),
        "stored": 0,
        "backend": dict(backend),
    }
    return RoundPlan(
        round=round_number,
        seed=base,
        steps=steps,
        guidance=guidance,
        batch_size=bs,
        filter=bool(spec.filter),
        model=str(generator.name),
        entry=entry,
        requests=requests,
        captions=known,
        uncaptioned=missing,
        build=build,
    )


def plan_gap(
    classes: Sequence[str],
    *,
    per_class: int,
    round_number: int,
    seed: int | None,
    steps: int,
    guidance: float,
    model: str,
    target: str | Sequence[str] | Mapping[str, Sequence[str]] | None = None,
) -> RoundPlan:
    """A GAP round: class i's image j gets seed image_seed(first, i * per_class + j); its requests
    are made once its tokens are learned (their prompt is the learned one)."""
    per_class = int(_whole("per_class", per_class, minimum=1) or 0)
    seed = _whole("seed", seed, minimum=0, maximum=MAX_SEED, none="round * 100000")
    classes = [str(c) for c in classes]
    limits.check_round(images=per_class * len(classes))
    base = round_seed(round_number, seed)
    check_seed_range(base, per_class * len(classes), seed)
    entry = {
        "round": round_number,
        "strategies": ["gap"],
        "per_class": per_class,
        "classes": classes,
        "target": target
        if isinstance(target, str)
        else (json.dumps(target if isinstance(target, Mapping) else list(target)) if target else ""),
        "seed": base,
        "requested": per_class * len(classes),
        "steps": int(steps),
        "guidance": float(guidance),
        "model": model,
        "status": "running",
        "started": time.time(),
        "stored": 0,
    }
    return RoundPlan(
        round=round_number,
        seed=base,
        steps=int(steps),
        guidance=float(guidance),
        batch_size=per_class,
        filter=False,
        model=model,
        entry=entry,
    )


def gap_seeds(plan: RoundPlan, classes: Sequence[str]) -> dict[str, list[int]]:
    """Each class's image seeds in a GAP plan."""
    per_class = int(plan.entry["per_class"])
    return {c: [image_seed(plan.seed, ci * per_class + j) for j in range(per_class)] for ci, c in enumerate(classes)}


def source_images(requests: Sequence[GenerationRequest], load: Callable[[str], Image.Image]) -> dict[str, Image.Image]:
    """The parent image of every image-to-image request, each loaded once."""
    return {r.parent_id: load(r.parent_id) for r in {r.parent_id: r for r in requests if r.is_img2img}.values()}

"""Rounds over a store alone (no DataCrafter): GAP rounds, prompt evolution, regeneration, and
candidate images for evolution. The round runner (runner.py) calls these for a project; benchmarks
and tests call them directly on a `SampleStore`.

Rows are written by rows.store_generated (their one writer), prompts.json by the prompt book and
GAP's token and mask files here, under the project's gap/ folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from PIL import Image

from .. import limits
from ..data.files import atomic_write_bytes, slug
from ..data.store import SampleStore
from ..loop.strategies import GenerationRequest
from ..models.bundle import Models
from .backends import Backend, ImageRequest
from .feedback_log import FeedbackLog
from .jobs import Cancel, stop_check
from .plan import RoundPlan, gap_seeds, plan_gap
from .prompt_book import PromptBook
from .rows import scheduler_name, store_generated

if TYPE_CHECKING:
    from ..loop.evolution import EvolutionResult
    from ..loop.gap import GapConfig, GapResult
    from ..loop.student import Student
    from ..models.embedder import Embedder
    from ..models.generator import Generator

#: GAP source images: "train" (each class's real train images) or {class: [sample ids]}
Sources = Union[str, Mapping[str, Sequence[str]], None]
#: GAP object masks: "plain-background", a function image -> mask, or {sample id: mask}
Masks = Union[str, Callable[[Image.Image], np.ndarray], Mapping[str, np.ndarray], None]
Progress = Union[bool, Callable[[int, int], None]]

__all__ = ["gap_round", "evolve_store", "regenerate", "image_fn", "Sources", "Masks"]


def image_fn(
    models: Models,
    backend: Backend,
    *,
    steps: int | None = None,
    guidance: float | None = None,
    batch_size: int = 8,
) -> Callable[[list[str], list[str], list[int]], list[Image.Image]]:
    """`generate(prompts, negatives, seeds) -> images` through the backend, nothing stored:
    prompt evolution's candidate batches."""
    generator = models.require("generator", "rendering candidate prompts")
    steps = int(steps or generator.default_steps)
    guidance = float(generator.default_guidance if guidance is None else guidance)

    def generate(prompts: list[str], negatives: list[str], seeds: list[int]) -> list[Image.Image]:
        reqs = [
            ImageRequest(index=k, group=0, prompt=p, negative_prompt=n, seed=int(s), steps=steps, guidance=guidance)
            for k, (p, n, s) in enumerate(zip(prompts, negatives, seeds))
        ]
        out: dict[int, Image.Image] = {}
        for batch in backend.generate(models, reqs, batch_size=int(batch_size)):
            out.update(zip(batch.indices, batch.images))
        return [out[i] for i in sorted(out)]

    return generate


def evolve_store(
    store: SampleStore,
    *,
    classes: Sequence[str],
    generate: Callable[..., list[Image.Image]],
    embedder: "Embedder",
    vocabulary: Sequence[str] | None = None,
    round: int | None = None,
    **options: Any,
) -> "EvolutionResult":
    """Evolve the prompts from the store's feedback and keep the result in the prompt book."""
    from ..loop.evolution import evolve_prompts

    book = PromptBook(store, classes)
    samples = store.samples
    if round is None:
        round = int(samples["round"].max()) if len(samples) else 0
    if "lassos" not in options:  # which images were lassoed together, without words
        options["lassos"] = FeedbackLog(store, lambda: int(round or 0)).lassos()
    result = evolve_prompts(
        samples,
        classes=classes,
        generate=generate,
        embedder=embedder,
        load_image=store.image,
        current=book.genomes(classes),
        vocabulary=vocabulary,
        round=round,
        **options,
    )
    book.apply_evolution(result)
    return result


def _target_text(res: "GapResult", k: int) -> str:
    """The target description token set `k` was guided toward (its caption in the store)."""
    if not res.target.startswith("["):
        return res.target
    descs = [str(d) for d in json.loads(res.target)]
    return descs[k % len(descs)] if descs else ""


def gap_round(
    store: SampleStore,
    generator: "Generator",
    student: "Student",
    classes: Sequence[str],
    *,
    target: str | Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    target_images: Sequence[Image.Image] | None = None,
    embedder: "Embedder | None" = None,
    per_class: int = 10,
    round: int = 1,
    seed: int | None = None,
    config: "GapConfig | None" = None,
    progress: Progress = False,
    cancel: Cancel = None,
    shared: bool = False,
    sources: Sources = None,
    masks: Masks = None,
    results: dict[str, "GapResult"] | None = None,
    on_stored: Callable[[list[str]], object] | None = None,
    plan: RoundPlan | None = None,
    **overrides: Any,
) -> tuple[list[str], dict[str, "GapResult"]]:
    """Learn tokens per class, generate `per_class` final images each, store them (without a DataCrafter).

    Rows carry strategy "gap", the readable prompt, seed (the seed policy: round_seed(round, seed) + k),
    steps, guidance and `embeddings_file` (the learned tokens, relative to the project), so each
    can be regenerated. sources: None = text-to-image; "train" = the real train images of each
    class; or {class: [sample ids]}; final image j of a class starts from its source j mod n.
    masks (with sources): None = img2img only; "plain-background"; a callable image -> mask; or
    {sample id: mask}; stored as PNG under gap/masks/ (row: mask_file). Each class's tokens land in
    `results` (when given) and its stored ids go to `on_stored(ids)` as soon as they are stored, so a
    cancelled or failed round keeps the classes it finished. `plan` (plan.plan_gap) is the round
    as the runner resolved it; without one it is resolved here from `round` and `seed`.
    """
    from ..loop.gap import GapConfig, GapError, gap_images, mask_for

    config = config if config is not None else GapConfig()
    results = {} if results is None else results
    classes = [str(c) for c in classes]
    if not classes:
        raise GapError("no classes given: pass the classes to generate GAP images for")
    if int(per_class) < 1:
        raise GapError(f"per_class={per_class}: ask for at least 1 image per class")
    per_class = int(per_class)
    if plan is None:
        plan = plan_gap(
            classes,
            per_class=per_class,
            round_number=round,
            seed=seed,
            steps=int(config.final_steps),
            guidance=float(config.guidance),
            model=str(getattr(generator, "name", "")),
            target=target,
        )
    base = Path(store.path)
    src_ids = _source_ids(store, classes, sources) if sources is not None else None
    if masks is not None and src_ids is None:
        raise GapError("masks need source images: pass sources='train' (or {class: [sample ids]}) too")
    src_images = {i: store.image(i) for ids_of_class in (src_ids or {}).values() for i in ids_of_class}
    src_masks = {i: mask_for(masks, i, im) for i, im in src_images.items()} if masks is not None else None
    mask_files = {i: _save_mask(base, i, m) for i, m in src_masks.items()} if src_masks is not None else {}
    seeds = gap_seeds(plan, classes)
    ids: list[str] = []
    for label, res, images in gap_images(
        generator,
        student,
        classes,
        seeds=seeds,
        target=target,
        target_images=target_images,
        embedder=embedder,
        config=config,
        progress=progress,
        should_stop=stop_check(cancel),
        shared=shared,
        sources={c: [src_images[i] for i in src_ids[c]] for c in classes} if src_ids else None,
        masks={c: [src_masks[i] for i in src_ids[c]] for c in classes} if src_ids and src_masks is not None else None,
        **overrides,
    ):
        digest = hashlib.sha256(res.embeddings.numpy().tobytes()).hexdigest()[:12]
        rel = f"gap/gap-r{int(round):03d}-{slug(label)}-{digest}.safetensors"
        res.save(base / rel)
        res.file = rel
        results[label] = res
        parents = [src_ids[label][j % len(src_ids[label])] for j in range(per_class)] if src_ids else []
        reqs = [
            GenerationRequest(
                prompt=res.prompt,
                label=label,
                seed=s,
                strategy="gap",
                caption=_target_text(res, res.set_of(s, j)),
                parent_id=parents[j] if parents else "",
                strength=float(res.config.strength) if parents else math.nan,
                extra={"embeddings_file": rel, "mask_file": mask_files.get(parents[j], "") if parents else ""},
            )
            for j, s in enumerate(seeds[label])
        ]
        new = store_generated(
            store,
            images,
            reqs,
            [],
            round=round,
            steps=int(res.config.final_steps),
            guidance=float(res.config.guidance),
            model=res.model,
            scheduler=scheduler_name(generator),
            embedder=embedder,
            batch_id=f"{round}-gap-{slug(label)}",
        )
        ids += new
        if on_stored is not None:
            on_stored(new)
    return ids, results


def _source_ids(
    store: SampleStore, classes: list[str], sources: str | Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """Sample ids of the source images per class, checked against the store."""
    from ..loop.gap import GapError

    s = store.samples
    if isinstance(sources, str):
        if sources != "train":
            raise GapError(
                f"sources={sources!r}: use 'train' (the real train images of each class) or {{class: [sample ids]}}"
            )
        real = s[(s["source"] == "real") & (s["split"] == "train")]
        out = {c: real.loc[real["label"] == c, "id"].astype(str).tolist() for c in classes}
    else:
        out = {c: [str(i) for i in sources.get(c, [])] for c in classes}
        known = set(s["id"].astype(str))
        missing = sorted({i for v in out.values() for i in v} - known)
        if missing:
            raise GapError(f"source ids {missing[:5]} are not in the project: pass ids from crafter.samples")
    empty = [c for c, v in out.items() if not v]
    if empty:
        raise GapError(
            f"no source images for class(es) {empty}: GAP with sources needs at least one real train "
            "image per class (or sources=None for text-to-image)"
        )
    return out


def _save_mask(base: Path, sample_id: str, mask: np.ndarray) -> str:
    """Store a mask as PNG (content-addressed, written atomically); returns its path relative to the project."""
    from ..loop.masks import mask_to_image

    buf = io.BytesIO()
    mask_to_image(mask).save(buf, format="PNG", optimize=False, compress_level=6)  # 8-bit L, no metadata
    data = buf.getvalue()
    rel = f"gap/masks/{slug(sample_id)}-{hashlib.sha256(data).hexdigest()[:12]}.png"
    if not (base / rel).is_file():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(base / rel, data)
    return rel


def regenerate(store: SampleStore, gen: "Generator", sample_id: str, *, alone: bool = False) -> Image.Image:
    """Regenerate a generated image from its stored provenance (see DataCrafter.regenerate)."""
    row = store.row(sample_id)
    if row["source"] != "generated":
        raise ValueError(f"{sample_id} is a real image: only generated samples can be regenerated")
    if str(row["model"]) != gen.name:
        raise ValueError(
            f"{sample_id} was generated with model {row['model']!r}, but the current generator is {gen.name!r}: "
            f"open the project with models that load {row['model']!r} to regenerate it"
        )
    scheduler = row.get("scheduler")
    current = scheduler_name(gen)
    if isinstance(scheduler, str) and scheduler and scheduler != current:
        raise ValueError(
            f"{sample_id} was generated with scheduler {scheduler}, the generator now uses {current}: "
            f"set it back (generator.set_scheduler / scheduler=...) to regenerate"
        )
    limits.check("steps", row["steps"], f"sample {sample_id}: its stored steps")
    tokens_file = row.get("embeddings_file")
    if isinstance(tokens_file, str) and tokens_file:
        return _regenerate_gap(store, row, gen, alone)
    batch_id = row.get("batch_id")
    members = [row]
    if not alone and isinstance(batch_id, str) and batch_id:
        s = store.samples
        same = s[s["batch_id"] == batch_id].sort_values("batch_index")
        members = same.to_dict("records")
    position = next(k for k, m in enumerate(members) if m["id"] == sample_id)
    strength = float(row["strength"])
    img2img = not math.isnan(strength)
    lp = row.get("latent_perturbation", 0.0)
    lp = 0.0 if lp is None or (isinstance(lp, float) and math.isnan(lp)) else float(lp)
    # The guidance floor the image was made with (rows from before the column: the generator's own).
    floor = row.get("guidance_min_sigma", None)
    extra: dict[str, Any] = {}  # only for generators that have a floor (test doubles may not)
    if floor is not None and hasattr(gen, "guidance_min_sigma"):
        extra["guidance_min_sigma"] = None if math.isnan(float(floor)) else float(floor)
    out = gen(
        [str(m["prompt"]) for m in members],
        negative_prompt=[str(m["negative_prompt"]) for m in members],
        seed=[int(m["seed"]) for m in members],
        steps=int(row["steps"]),
        guidance=float(row["guidance"]),
        image=[store.image(str(m["parent_id"])) for m in members] if img2img else None,
        strength=strength if img2img else 0.5,
        latent_perturbation=lp if img2img else 0.0,
        batch_size=len(members),
        **extra,
    )
    return out[position]


def _regenerate_gap(store: SampleStore, row: dict[str, Any], gen: "Generator", alone: bool) -> Image.Image:
    """GAP images: learned prompt tokens (safetensors in the project) + seed, replayed in the
    same call that made them (all seeds of that token file, in order) unless `alone`."""
    from ..loop.gap import generate_with_tokens, load_mask, load_tokens

    if alone:
        members, position = [row], 0
    else:
        s = store.samples
        same = s[s["embeddings_file"] == row["embeddings_file"]]
        members = same.to_dict("records")
        position = same["id"].tolist().index(row["id"])
    # Every path from the table is checked to lie inside the project before anything is read.
    tokens_path = store.project_file(row["embeddings_file"], f"sample {row['id']}: its embeddings_file")
    seeds = [int(m["seed"]) for m in members]
    # Masked / img2img GAP rows name their source (parent_id), strength and stored mask.
    parent = row.get("parent_id")
    sources = masks = strength = None
    mask_file = row.get("mask_file")
    mask_paths = (
        [store.project_file(m["mask_file"], f"sample {m['id']}: its mask_file") for m in members]
        if isinstance(parent, str) and parent and isinstance(mask_file, str) and mask_file
        else None
    )
    tokens = load_tokens(tokens_path)
    if isinstance(parent, str) and parent:
        sources = [store.image(str(m["parent_id"])) for m in members]
        strength = float(row["strength"])
        if mask_paths is not None:
            masks = [load_mask(path) for path in mask_paths]
    out = generate_with_tokens(
        gen,
        tokens,
        seeds,
        steps=int(row["steps"]),
        guidance=float(row["guidance"]),
        negative_prompt=str(row["negative_prompt"]),
        sources=sources,
        masks=masks,
        strength=strength,
    )
    return out[position]

"""The one writer of generated rows: `store_generated` flags, embeds and commits a finished batch,
and `generated_row` is the row schema of every generated image (every strategy, GAP included).

The round runner (runner.py) and the store-level rounds (rounds.py: GAP) both store through here,
so a generated row has one shape whatever made it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image

from ..data.images import image_hash
from ..data.store import SampleStore
from ..loop.class_filter import ClassFilter
from ..loop.strategies import GenerationRequest

if TYPE_CHECKING:
    from ..models.embedder import Embedder
    from ..models.generator import Generator

__all__ = ["FLAG_REASONS", "generated_row", "store_generated", "scheduler_name"]

FLAG_REASONS = {
    "nan": "the pipeline produced NaN pixels (often fp16 overflow in the VAE): try float32, another seed or fewer steps",
    "black": "the image is all black (a failed decode or the safety checker): try another seed or prompt",
    "nsfw": "the pipeline's safety checker blanked this image",
}


def generated_row(
    r: GenerationRequest,
    *,
    round: int,
    steps: int,
    guidance: float,
    model: str,
    scheduler: str,
    guidance_min_sigma: float | None,
    flag: str = "",
    flag_reason: str = "",
    batch_id: str = "",
    batch_index: int = 0,
) -> dict[str, object]:
    """The row schema of every generated image (all strategies, GAP included)."""
    return {
        "label": r.label,
        "split": "generated",
        "source": "generated",
        "prompt": r.prompt,
        "negative_prompt": r.negative_prompt,
        "seed": int(r.seed),
        "steps": int(steps),
        "guidance": float(guidance),
        "strength": r.strength if r.parent_id else math.nan,
        "parent_id": r.parent_id,
        "round": int(round),
        "strategy": r.strategy,
        "model": model,
        "caption": r.caption,
        "flag": flag,
        "flag_reason": flag_reason,
        "latent_perturbation": float(r.latent_perturbation),
        "scheduler": scheduler,
        "guidance_min_sigma": math.nan if guidance_min_sigma is None else float(guidance_min_sigma),
        "batch_id": batch_id,
        "batch_index": int(batch_index),
        "embeddings_file": str(r.extra.get("embeddings_file", "")),
        "mask_file": str(r.extra.get("mask_file", "")),
    }


def store_generated(
    store: SampleStore,
    images: list[Image.Image],
    requests: Sequence[GenerationRequest],
    flags: Sequence[str],
    *,
    round: int,
    steps: int,
    guidance: float,
    model: str,
    scheduler: str = "",
    guidance_min_sigma: float | None = None,
    embedder: "Embedder | None" = None,
    class_filter: ClassFilter | None = None,
    batch_id: str = "",
) -> list[str]:
    """Flag (NaN / black / off-class), embed and store one finished batch in one atomic commit.

    The batch's composition (batch_id + batch_index) is part of the provenance: CPU and GPU
    kernels may pick other algorithms for other batch sizes, so an image is only guaranteed
    bit-exact when its whole batch is replayed (what `regenerate` does).
    """
    flags = list(flags) or [""] * len(images)
    reasons = [FLAG_REASONS.get(f, "") for f in flags]
    emb = None
    if embedder is not None:
        emb = embedder.embed_images(images)
        if class_filter is not None:
            for k, (flag, why) in enumerate(class_filter.check(emb, [r.label for r in requests])):
                if flag and not flags[k]:
                    flags[k], reasons[k] = flag, why
    rows = [
        generated_row(
            r,
            round=round,
            steps=steps,
            guidance=guidance,
            model=model,
            scheduler=scheduler,
            guidance_min_sigma=guidance_min_sigma,
            flag=f,
            flag_reason=why,
            batch_id=batch_id,
            batch_index=k,
        )
        for k, (r, f, why) in enumerate(zip(requests, flags, reasons))
    ]
    ids = store.add(images, rows)
    if emb is not None and embedder is not None:
        store.put_embeddings([image_hash(im) for im in images], embedder.name, emb)
    return ids


def scheduler_name(generator: "Generator") -> str:
    """The class name of the generator's scheduler, recorded per row (regenerate checks it)."""
    return type(getattr(getattr(generator, "pipe", None), "scheduler", None)).__name__

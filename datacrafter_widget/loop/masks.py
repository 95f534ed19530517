"""Object masks: which pixels of a source image are the labelled object (kept) and which are context.

GAP keeps the label of its images by changing only the context around a real object (the GAP
paper inpaints outside the object mask). Real data needs masks from the user or a segmenter;
images with a plain background (the starter's coloured digits, product shots, scans) get one
from `plain_background_mask` without any model.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["plain_background_mask", "mask_to_image", "mask_from_image"]


def plain_background_mask(
    image: Image.Image, *, threshold: float = 0.12, dilate: int = 0, border: int = 1
) -> np.ndarray:
    """Object mask (float32 H x W, 1 = object) for an image on a plain background.

    The background colour is the median of the outer `border` pixels; a pixel is object when any
    channel differs from it by more than `threshold` (0..1), so anti-aliased edges (blends with at
    least that much object colour) count as object. `dilate` grows the mask by whole pixels; it is
    off by default because a kept ring of pure background would carry the source's background
    colour into the new image, the very context GAP is meant to change.
    """
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold={threshold}: use a colour distance between 0 and 1 (e.g. 0.12)")
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    h, w, _ = arr.shape
    b = max(1, min(int(border), h // 2, w // 2))
    ring = np.concatenate(
        [arr[:b].reshape(-1, 3), arr[-b:].reshape(-1, 3), arr[:, :b].reshape(-1, 3), arr[:, -b:].reshape(-1, 3)]
    )
    background = np.median(ring, axis=0)
    mask = np.abs(arr - background).max(axis=-1) > float(threshold)
    for _ in range(max(0, int(dilate))):
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        mask = grown
    return mask.astype(np.float32)


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """8-bit grayscale PNG-able image of a mask in [0, 1] (how masks are stored: no pickle)."""
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H x W), got shape {m.shape}")
    return Image.fromarray(np.uint8(np.round(np.clip(m, 0.0, 1.0) * 255.0)), mode="L")


def mask_from_image(image: Image.Image) -> np.ndarray:
    """The float32 mask in [0, 1] back from `mask_to_image`'s image."""
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0

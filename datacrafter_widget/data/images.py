"""Image helpers shared by the loaders, the store and the widget.

Every image that enters the product goes through `to_rgb`, so the rest of the code can assume
8-bit RGB; every stored image is keyed by `content_hash`, so identical images are stored once.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

# Images with a longer side are downscaled on import (aspect kept). Diffusion models work at 512 to
# 1024 px and CLIP at 224, so 2048 loses nothing the product uses, while a 12000 x 12000 photo would
# cost ~0.4 GB of PNG and half a minute per read in the project.
MAX_IMAGE_SIDE = 2048


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, P, RGBA, CMYK, I;16, I, F, LA, ...) to 8-bit RGB.

    Transparent pixels are composited on white, the way a viewer shows them; 16-bit and
    float images are scaled by their value range rather than clipped, so they do not turn white.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            scaled = array / 65535.0
        else:
            lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
            if mode == "I" and lo >= 0 and hi <= 65535:
                scaled = array / (65535.0 if hi > 255 else 255.0)
            else:
                scaled = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
        gray = np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    """Encode as PNG deterministically (no timestamps or text chunks), so hashes are stable."""
    buffer = io.BytesIO()
    to_rgb(image).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def content_hash(data: bytes) -> str:
    """Short, stable key for an image's bytes (sha256, 16 hex digits)."""
    return hashlib.sha256(data).hexdigest()[:16]


def image_hash(image: Image.Image) -> str:
    return content_hash(png_bytes(image))


def downscaled(image: Image.Image, max_side: int = MAX_IMAGE_SIDE) -> Image.Image:
    """The image with its longer side at most `max_side` (Lanczos, aspect kept); small ones unchanged."""
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)

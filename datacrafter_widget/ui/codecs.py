"""Pure functions that turn project data into the widget's binary traits and back.

Large data moves as binary buffers, never JSON lists: float32 coordinates, small integer attribute
arrays, a uint32 selection, and thumbnails in pages (sprite sheets) the browser asks for. Nothing here knows the
widget or the controller, so each codec is tested on its own.
"""

from __future__ import annotations

import io
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

__all__ = [
    "COLOR_MODES",
    "FEEDBACK_CODES",
    "KIND_CODES",
    "KIND_TEST",
    "build_atlas",
    "codes",
    "facets_from_frame",
    "feedback_codes",
    "png_bytes",
    "points_from_frame",
    "selection_from_bytes",
    "selection_to_bytes",
    "thumbnail",
]

COLOR_MODES = ("class", "round", "feedback", "flag")  # computed in the browser; other columns arrive as codes
FEEDBACK_CODES = {"": 0, "good": 1, "bad": 2, "removed": 3}
KIND_CODES = {"real": 0, "generated": 1}  # 2: a held-out test image (real, split "test"): shown apart, never marked
KIND_TEST = 2
MAX_ATLAS_SIDE = 8192  # WebGL texture limit the projector convention assumes
MAX_FACET_VALUES = 200  # a field with more distinct values (ids, prompts) is not offered as a filter
PNG_ATLAS_MAX = 10_000  # above this many thumbnails, format="auto" sends the atlas as JPEG


def selection_to_bytes(indices: Iterable[int] | np.ndarray, n: int | None = None) -> bytes:
    """Sorted, unique uint32 bytes of point indices; raises if an index is out of range."""
    arr = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
    if arr.size == 0:
        return b""
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"selection must be integer point indices, got dtype {arr.dtype}")
    arr = np.unique(arr.astype(np.int64).ravel())
    if arr[0] < 0 or (n is not None and arr[-1] >= n):
        raise IndexError(f"selection index out of range 0..{(n or 0) - 1}: {arr[0] if arr[0] < 0 else arr[-1]}")
    return arr.astype("<u4").tobytes()


def selection_from_bytes(data: bytes | memoryview | None) -> np.ndarray:
    """uint32 array of point indices from the synced selection buffer."""
    if not data:
        return np.zeros(0, dtype=np.uint32)
    return np.frombuffer(bytes(data), dtype="<u4").astype(np.uint32)


def thumbnail(img: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """uint8 (size, size, 3): the image's centre square, shrunk.

    A large image is first box-reduced by an integer factor to about twice the size (a cheap C
    pass), so a 512 px photo costs little more than its decoding; JPEG files not yet loaded are
    decoded at reduced size (`Image.draft`)."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img.astype(np.uint8))
    if img.format == "JPEG" and min(img.size) >= 4 * size:
        img.draft("RGB", (2 * size, 2 * size))
    factor = min(img.size) // (2 * size)
    if factor >= 2:
        img = img.reduce(factor)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (size, size):
        img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def build_atlas(
    images: Sequence[Image.Image] | np.ndarray,
    size: int = 32,
    max_side: int = MAX_ATLAS_SIDE,
    format: str = "auto",
) -> tuple[bytes, dict]:
    """One PNG sprite sheet of square thumbnails, row-major (image i at col i % cols, row i // cols).

    The widget sends thumbnails as such sheets, one page at a time (see CrafterWidget.thumbnail_page);
    a sheet's side stays within `max_side`, the tile size shrinks when `size` would not fit. Returns the PNG
    bytes and the grid info the front end needs: cols, rows, tile, count, width, height.
    `images` is a list of PIL images (any mode or size) or a uint8 array (n, size, size, 3).
    format: "png" (lossless), "jpeg" (several times smaller for photos: 50,000 noisy 32 px
    thumbnails are ~120 MB as PNG, ~22 MB as JPEG, and encode 20x faster) or "auto" (PNG up to
    PNG_ATLAS_MAX images, JPEG above).
    """
    if format not in ("png", "jpeg", "auto"):
        raise ValueError(f"atlas format must be 'png', 'jpeg' or 'auto', got {format!r}")
    n = len(images)
    if format == "auto":
        format = "png" if n <= PNG_ATLAS_MAX else "jpeg"
    if n == 0:
        return b"", {"cols": 0, "rows": 0, "tile": int(size), "count": 0, "width": 0, "height": 0, "format": format}
    if size < 1:
        raise ValueError(f"thumbnail size must be positive, got {size}")
    cols = math.ceil(math.sqrt(n))
    tile = min(int(size), max_side // cols)
    if tile < 4:
        raise ValueError(
            f"{n} thumbnails do not fit a {max_side}px atlas even at 4px; show fewer images or raise max_side"
        )
    rows = math.ceil(n / cols)
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:] == (tile, tile, 3):
        stack = images.astype(np.uint8, copy=False)
    else:
        stack = np.stack([thumbnail(im, tile) for im in images])
    grid = np.zeros((rows * cols, tile, tile, 3), dtype=np.uint8)
    grid[:n] = stack
    sheet = grid.reshape(rows, cols, tile, tile, 3).transpose(0, 2, 1, 3, 4).reshape(rows * tile, cols * tile, 3)
    buf = io.BytesIO()
    if format == "png":
        Image.fromarray(sheet).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(sheet).save(buf, format="JPEG", quality=90)
    info = {
        "cols": cols,
        "rows": rows,
        "tile": tile,
        "count": n,
        "width": cols * tile,
        "height": rows * tile,
        "format": format,
    }
    return buf.getvalue(), info


def codes(values: pd.Series, mapping: Mapping[str, int], what: str) -> np.ndarray:
    filled = values.fillna("").astype(str)
    unknown = sorted(set(filled.unique()) - set(mapping))
    if unknown:
        raise ValueError(f"unknown {what} value(s) {unknown[:5]}; expected one of {sorted(mapping)}")
    return filled.map(mapping).to_numpy(dtype=np.uint8)


def points_from_frame(frame: pd.DataFrame, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Binary point arrays for `CrafterWidget` from a frame with one row per image.

    Needs columns x, y; uses label (class name), source ("real"/"generated"), round,
    feedback (""/"good"/"bad"/"removed") and flag ("" or a reason) when present. Row i is point i.
    """
    missing = [c for c in ("x", "y") if c not in frame.columns]
    if missing:
        raise KeyError(f"points_from_frame needs columns {missing}; the projection gives x and y per image")
    n = len(frame)
    xy = frame[["x", "y"]].to_numpy(dtype=np.float32)
    if not np.all(np.isfinite(xy)):
        raise ValueError("projection coordinates contain NaN or infinity")
    if "label" in frame.columns:
        labels = frame["label"].astype(str)
        names = list(class_names) if class_names is not None else sorted(labels.unique())
        lookup = {c: k for k, c in enumerate(names)}
        unknown = sorted(set(labels.unique()) - set(lookup))
        if unknown:
            raise ValueError(f"labels {unknown[:5]} are not in class_names {names[:10]}")
        cls = labels.map(lookup).to_numpy(dtype=np.uint16)
    else:
        names = list(class_names or [])
        cls = np.zeros(n, dtype=np.uint16)
    kind = codes(frame["source"], KIND_CODES, "source") if "source" in frame.columns else np.zeros(n, np.uint8)
    if "split" in frame.columns:
        kind[(frame["split"].astype(str) == "test").to_numpy() & (kind == 0)] = KIND_TEST
    rnd = frame["round"].fillna(0).to_numpy(dtype=np.int64) if "round" in frame.columns else np.zeros(n, np.int64)
    fb = codes(frame["feedback"], FEEDBACK_CODES, "feedback") if "feedback" in frame.columns else np.zeros(n, np.uint8)
    flag = (
        (frame["flag"].fillna("").astype(str) != "").to_numpy(dtype=np.uint8)
        if "flag" in frame.columns
        else np.zeros(n, np.uint8)
    )
    return {
        "xy": np.ascontiguousarray(xy, dtype="<f4").tobytes(),
        "cls": cls.astype("<u2").tobytes(),
        "kind": kind.tobytes(),
        "round": np.clip(rnd, 0, 65535).astype("<u2").tobytes(),
        "feedback": fb.tobytes(),
        "flag": flag.tobytes(),
        "class_names": [str(c) for c in names],
    }


def png_bytes(image: Image.Image | bytes | None) -> bytes | None:
    if image is None:
        return None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def feedback_codes(samples: pd.DataFrame) -> bytes:
    """uint8 feedback code per row (see FEEDBACK_CODES)."""
    return codes(samples["feedback"], FEEDBACK_CODES, "feedback").tobytes()


def facets_from_frame(
    frame: pd.DataFrame, members: Mapping[str, Sequence[int]] | None = None
) -> tuple[list[dict], bytes]:
    """The filter sidebar's fields: [{field, title, names}] and their per-point codes (uint16, one
    block of n per field, in order), plus the content labels ({field, title, names, members}: point
    indices, since a point can carry several). The browser counts from these, so counts follow the
    selection at once."""
    from ..controller.map_view import CONTENT_LABEL, FILTER_FIELDS, field_values

    facets: list[dict] = []
    blocks: list[np.ndarray] = []
    for column, title in FILTER_FIELDS.items():
        if column == CONTENT_LABEL or column not in frame.columns:
            continue
        values = field_values(frame, column)
        names = sorted(
            set(values), key=lambda v: (not v.lstrip("-").isdigit(), int(v) if v.lstrip("-").isdigit() else 0, v)
        )
        if len(names) > MAX_FACET_VALUES:
            continue
        lookup = {v: k for k, v in enumerate(names)}
        facets.append({"field": column, "title": title, "names": names})
        blocks.append(values.map(lookup).to_numpy(np.uint16))
    if members:
        facets.append(
            {
                "field": CONTENT_LABEL,
                "title": FILTER_FIELDS[CONTENT_LABEL],
                "names": [str(t) for t in members],
                "members": [[int(i) for i in m] for m in members.values()],
            }
        )
    data = np.concatenate(blocks).astype("<u2").tobytes() if blocks else b""
    return facets, data

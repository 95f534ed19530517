"""How a DataCrafter shows itself: one widget per crafter, a still picture and a text summary beside it.

- In a notebook kernel (JupyterLab, Notebook 7, VS Code, Colab) the output carries the widget, a PNG
  snapshot of the map drawn here in the kernel and a text summary: where no widget manager runs (a
  closed kernel, `jupyter nbconvert --to html`, GitHub's notebook view) the picture and the text
  are what shows.
- marimo asks `_display_()` and gets the widget itself (an anywidget, which marimo renders).
- Anywhere else (terminal IPython, a script's repr) only the text: nothing is built, no job starts.

Every display of one crafter is a view of the same widget, so a second output or a page reload
shows the same state and starts nothing new.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .codecs import KIND_TEST, selection_from_bytes

if TYPE_CHECKING:
    from ..controller.crafter import DataCrafter
    from .widget import CrafterWidget

__all__ = ["in_notebook_kernel", "mimebundle", "snapshot_png", "summary", "widget_of"]

log = logging.getLogger(__name__)

# The browser's categorical palette (js/colors.js), so the still picture matches the live map.
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip
THUMBS_MAX = 1000  # above this many images the snapshot draws coloured dots, not thumbnails
SNAPSHOT_BUDGET_S = 0.5  # the most the snapshot spends reading thumbnails (estimated from a probe)
SNAPSHOT_PROBE = 8


def in_notebook_kernel() -> bool:
    """True inside a Jupyter kernel (an IPython shell with a kernel attached), False in terminal
    IPython, plain Python and marimo."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def widget_of(crafter: DataCrafter) -> CrafterWidget:
    """This crafter's one widget, built on first use; every display is a view of it."""
    view = crafter._widget_view
    if view is None or view.widget.comm is None:  # never built, or closed (widget.close())
        from .view import CrafterView

        view = CrafterView(crafter)
        crafter._widget_view = view
    return view.widget


def summary(crafter: DataCrafter) -> str:
    """What the project holds, in a few lines of text."""
    s = crafter.samples
    real = s[s["source"] == "real"]
    gen = s[s["source"] == "generated"]
    fb = s["feedback"].fillna("").astype(str).value_counts()
    rounds = crafter.rounds
    marks = ", ".join(f"{int(fb.get(k, 0))} {k}" for k in ("good", "bad", "removed"))
    lines = [
        f"DataCrafter project {crafter.project}",
        f"{len(crafter.classes)} classes: {', '.join(map(str, crafter.classes[:12]))}"
        + (" ..." if len(crafter.classes) > 12 else ""),
        f"{len(real)} real images ({int((real['split'] == 'test').sum())} held-out test), "
        f"{len(gen)} generated in {len(rounds)} rounds",
        f"feedback: {marks}",
    ]
    return "\n".join(lines)


def snapshot_png(widget: CrafterWidget, caption: str = "", size: tuple[int, int] = (760, 440)) -> bytes:
    """A still picture of the map as the widget holds it (positions, class colours, thumbnails,
    content labels, the selection), drawn here with PIL: no browser involved."""
    width, height = size
    band = 22 if caption else 0
    img = Image.new("RGB", (width, height + band), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    n = widget.n
    xy = np.frombuffer(widget.xy, "<f4").reshape(-1, 2) if n else np.zeros((0, 2), np.float32)
    hidden = np.frombuffer(widget.hidden, np.uint8) if len(widget.hidden) == n else np.zeros(n, np.uint8)
    kind = np.frombuffer(widget.kind, np.uint8) if len(widget.kind) == n else np.zeros(n, np.uint8)
    cls = np.frombuffer(widget.cls, "<u2") if len(widget.cls) == 2 * n else np.zeros(n, np.uint16)
    shown = np.flatnonzero((hidden == 0) & (kind != KIND_TEST))
    pad = 24
    if len(shown):
        lo, hi = xy[shown].min(axis=0), xy[shown].max(axis=0)
        span = np.maximum(hi - lo, 1e-9)
        k = min((width - 2 * pad) / span[0], (height - 2 * pad) / span[1])
        off = np.array([width, height]) / 2 - (lo + hi) / 2 * np.array([k, -k])

        def screen(p: np.ndarray) -> np.ndarray:
            return p * np.array([k, -k]) + off

        pts = screen(xy)
        tiles = _tiles(widget, shown) if len(shown) <= THUMBS_MAX else None
        spacing = float(np.sqrt(max((width - 2 * pad) * (height - 2 * pad), 1) / len(shown)))
        tile = int(max(6, min(28, spacing * 0.8)))
        selected = set(selection_from_bytes(widget.selection).tolist())
        for i in shown:
            x, y = pts[i]
            color = PALETTE[int(cls[i]) % len(PALETTE)]
            if tiles is not None and int(i) in tiles:
                thumb = Image.fromarray(tiles[int(i)]).resize((tile, tile), Image.Resampling.BILINEAR)
                img.paste(thumb, (int(x - tile / 2), int(y - tile / 2)))
                draw.rectangle(
                    (x - tile / 2, y - tile / 2, x + tile / 2, y + tile / 2),
                    outline=(212, 160, 23) if i in selected else color,
                    width=2 if i in selected else 1,
                )
            else:
                r = 3
                draw.ellipse((x - r, y - r, x + r, y + r), fill=color)
        font = ImageFont.load_default()
        for lab in sorted(widget.labels, key=lambda item: -int(item.get("n", 1)))[:40]:
            x, y = screen(np.array([lab["x"], lab["y"]], np.float32))
            draw.text((x, y), str(lab["text"]), fill=(20, 20, 20), font=font, anchor="mm", stroke_width=2,
                      stroke_fill=(255, 255, 255))  # fmt: skip
    if caption:
        draw.rectangle((0, height, width, height + band), fill=(240, 240, 240))
        draw.text((8, height + 5), caption, fill=(40, 40, 40), font=ImageFont.load_default())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _tiles(widget: CrafterWidget, shown: np.ndarray) -> dict[int, np.ndarray] | None:
    """The thumbnails of the points shown, by point index, when reading them fits SNAPSHOT_BUDGET_S
    (None: dots). Small images cost ~0.1 ms each; 512 px photos ~5 ms, which for a few hundred would
    hold up the display cell for seconds, so a probe of the first few decides."""
    idx = shown[shown < int(widget.thumb_meta["count"])]
    if len(idx) == 0:
        return None
    try:
        start = time.perf_counter()
        probe = widget.thumbnail_tiles(idx[:SNAPSHOT_PROBE])
        spent = time.perf_counter() - start
        if spent / min(len(idx), SNAPSHOT_PROBE) * len(idx) > SNAPSHOT_BUDGET_S:
            return None
        rest = widget.thumbnail_tiles(idx[SNAPSHOT_PROBE:])
    except (OSError, ValueError) as err:  # an unreadable image: the snapshot shows dots instead
        log.warning("snapshot thumbnails unavailable: %s", err)
        return None
    return dict(zip(idx.tolist(), [*probe, *rest]))


def static_bundle(
    crafter: DataCrafter, widget: CrafterWidget, include: Any = None, exclude: Any = None
) -> dict[str, Any]:
    """The widget's output with a PNG of the map as it is now and the text summary beside it."""
    shown = widget._repr_mimebundle_(include=include, exclude=exclude)
    bundle: dict[str, Any] = dict((shown[0] if isinstance(shown, tuple) else shown) or {})
    caption = f"{widget.n} images on the map; a snapshot (run the notebook for the live widget)"
    png = snapshot_png(widget, caption)
    return {**bundle, "image/png": base64.b64encode(png).decode("ascii"), "text/plain": summary(crafter)}


def mimebundle(crafter: DataCrafter, include: Any = None, exclude: Any = None) -> dict[str, Any]:
    """The crafter's output: text alone outside a notebook kernel; there, the widget plus a PNG of
    the map and the text, for every reader that cannot run the widget."""
    if not in_notebook_kernel():
        return {"text/plain": summary(crafter)}
    return static_bundle(crafter, widget_of(crafter), include, exclude)

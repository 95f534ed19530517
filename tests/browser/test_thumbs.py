"""Thumbnails on demand (issue 22): the browser asks the kernel for the thumbnails of what it shows
zoomed in, in pages, and draws marks meanwhile; nothing is asked for at the overview.

The page runs the built bundle against the fake model of standalone.py, whose thumbnail requests
are answered by the real CrafterWidget in this process (the reply a kernel would send).
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from datacrafter_widget.ui.widget import CrafterWidget
from standalone import open_standalone, synthetic_frame, wait_thumbnails, widget_state

H = "window.__dcw[window.__dcw.length - 1]"


def handle(page: Any, expr: str) -> Any:
    return page.evaluate(f"(() => {{ const h = {H}; return {expr}; }})()")


def asked(page: Any) -> list[int]:
    """Every point index the page has asked the kernel for, in order."""
    sent = page.evaluate("window.__model.sent.filter((m) => m.content.type === 'thumbs').map((m) => m.buffers[0])")
    return [i for buf in sent for i in buf]


def gl_pixels(page: Any) -> np.ndarray:
    url = page.evaluate("document.querySelector('.dcw-gl').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)


def zoom(page: Any, factor: float, fx: float = 0.5, fy: float = 0.5) -> dict:
    """Zooms by `factor` around the canvas point (fx, fy) (fractions of its size); returns the new view."""
    v = handle(page, "h.view")
    cx, cy = v["width"] * fx, v["height"] * fy
    k, tx, ty = v["k"] * factor, cx - (cx - v["tx"]) * factor, cy - (cy - v["ty"]) * factor
    page.evaluate(f"{H}.setView({k}, {tx}, {ty})")
    return {**v, "k": k, "tx": tx, "ty": ty}


def in_view(frame: pd.DataFrame, view: dict, margin: float = 0.0) -> np.ndarray:
    sx = frame["x"].to_numpy(np.float64) * view["k"] + view["tx"]
    sy = -frame["y"].to_numpy(np.float64) * view["k"] + view["ty"]
    inside = (sx >= -margin) & (sx <= view["width"] + margin) & (sy >= -margin) & (sy <= view["height"] + margin)
    return np.flatnonzero(inside)


def coded_tiles(n: int, size: int = 32) -> np.ndarray:
    """Tile i is one flat colour that encodes i, so a pixel says which thumbnail was drawn."""
    i = np.arange(n)
    rgb = np.stack([(i * 53) % 200 + 40, (i * 97) % 200 + 40, (i * 31) % 200 + 40], axis=1).astype(np.uint8)
    return np.repeat(rgb[:, None, None, :], size, 1).repeat(size, 2)


def test_thumbnails_are_asked_for_only_where_zoomed_in(page: Any) -> None:
    """At the overview nothing is asked for; zoomed in, the points whose thumbnail can show (in view,
    on top where they pile up) are asked for, in pages of at most 256, and each is drawn where its point is."""
    frame = synthetic_frame(20_000, classes=4, seed=3)
    tiles = coded_tiles(len(frame))
    calls: list[int] = []
    w = CrafterWidget()
    w.set_frame(frame)

    def source(idx: np.ndarray) -> np.ndarray:
        calls.extend(idx.tolist())
        return tiles[idx]

    w.set_thumbnail_source(source, len(frame))
    open_standalone(page, widget_state(w), width=900)
    page.wait_for_timeout(300)
    assert handle(page, "h.thumbsShown") is False and asked(page) == [] and calls == []

    view = zoom(page, 12)
    stats = wait_thumbnails(page)
    got = asked(page)
    assert len(got) == len(set(got)) == stats["received"] > 0
    pages = page.evaluate(
        "window.__model.sent.filter((m) => m.content.type === 'thumbs').map((m) => m.buffers[0].length)"
    )
    assert max(pages) <= 256
    size = handle(page, "h.profileFrame().size")
    may = set(in_view(frame, view, margin=size / 2 + 1).tolist())
    assert set(got) <= may, "asked for points outside the view"
    assert len(got) < len(frame) / 20 and sorted(calls) == sorted(got)  # the kernel read only those
    # What is asked for grows with the screen, not with the data's density: at most one point per
    # half-thumbnail cell (the one on top; a point below it in the same cell has its centre covered).
    assert len(got) <= (view["width"] / (size / 2) + 3) * (view["height"] / (size / 2) + 3)

    # Each point whose centre no later point covers was asked for and shows its own tile (the colour
    # that encodes its index); later points are drawn over earlier ones.
    img = gl_pixels(page)
    sx = frame["x"].to_numpy() * view["k"] + view["tx"]
    sy = -frame["y"].to_numpy() * view["k"] + view["ty"]
    checked = 0
    for i in in_view(frame, view):
        later = np.arange(len(frame)) > i
        if np.any(later & (np.abs(sx - sx[i]) < size / 2 + 2) & (np.abs(sy - sy[i]) < size / 2 + 2)):
            continue
        assert i in set(got), f"point {i} shows but its thumbnail was not asked for"
        x, y = int(round(sx[i])), int(round(sy[i]))
        if not (size / 2 + 2 < x < view["width"] - size / 2 - 2 and size / 2 + 2 < y < view["height"] - size / 2 - 2):
            continue
        assert np.abs(img[y, x] - tiles[i, 0, 0]).max() < 12, f"point {i} shows {img[y, x]}, not {tiles[i, 0, 0]}"
        checked += 1
    assert checked >= 5, (checked, size)

    # Panning to another part of the map asks for the new points only.
    before = len(got)
    page.evaluate(f"{H}.setView({view['k']}, {view['tx'] + view['width']}, {view['ty']})")
    wait_thumbnails(page)
    again = asked(page)
    assert len(again) > before and len(again) == len(set(again))
    assert page.errors == []


def test_points_show_as_marks_until_their_thumbnails_arrive(page: Any) -> None:
    """A point whose page has not arrived is a filled mark in its class colour, never an empty or wrong
    tile; when the kernel's reply comes the tile replaces it."""
    frame = pd.DataFrame(
        {"x": [0.0, 10.0, 0.0, 10.0], "y": [0.0, 0.0, 10.0, 10.0], "label": ["a", "b"] * 2, "source": ["real"] * 4}
    )
    tiles = np.zeros((4, 32, 32, 3), np.uint8)
    tiles[0], tiles[1] = (250, 250, 0), (0, 250, 250)
    w = CrafterWidget()
    w.set_frame(frame, thumbnails=tiles)
    open_standalone(page, widget_state(w))
    wait_thumbnails(page)
    view = handle(page, "h.view")
    img = gl_pixels(page)
    y, xs = int(round(view["ty"])), [int(round(x * view["k"] + view["tx"])) for x in (0.0, 10.0)]
    assert np.abs(img[y, xs[0]] - [250, 250, 0]).max() < 12 and np.abs(img[y, xs[1]] - [0, 250, 250]).max() < 12
    # A new set of thumbnails (version 2): the old pages are dropped at once and marks drawn meanwhile.
    page.evaluate("window.__model.emit = () => {}")  # the kernel's replies are lost from now on
    page.evaluate("window.__model.set('thumbs', {...window.__model.get('thumbs'), version: 99})")
    page.evaluate(f"{H}.drawNow()")
    img = gl_pixels(page)
    assert handle(page, "h.hasThumb(0)") is False
    for x in xs:
        assert np.abs(img[y, x] - [250, 250, 0]).max() > 60 and np.abs(img[y, x] - [0, 250, 250]).max() > 60
        assert np.abs(img[y, x] - 255).max() > 60  # a filled mark, not the background
    assert page.errors == []


def test_gallery_shows_thumbnails_of_a_selection_made_zoomed_out(page: Any) -> None:
    """The selection's gallery asks for its own thumbnails, even at the overview (marks on the map)."""
    frame = synthetic_frame(3000, classes=3, seed=5)
    tiles = coded_tiles(len(frame))
    w = CrafterWidget()
    w.set_frame(frame, thumbnails=tiles)
    open_standalone(page, widget_state(w))
    assert handle(page, "h.thumbsShown") is False
    page.evaluate("window.__model.set('selection', new DataView(new Uint32Array([7, 1500, 2999]).buffer))")
    page.wait_for_function(f"{H}.hasThumb(7) && {H}.hasThumb(1500) && {H}.hasThumb(2999)", timeout=30000)
    page.wait_for_timeout(100)
    for i in (7, 1500, 2999):
        url = page.evaluate(f"document.querySelector('.dcw-tile[data-index=\"{i}\"] canvas').toDataURL('image/png')")
        px = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)
        assert np.abs(px[32, 32] - tiles[i, 0, 0]).max() < 12, f"gallery tile {i}"
    assert sorted(asked(page)) == [7, 1500, 2999]
    assert page.errors == []

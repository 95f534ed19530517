"""The built front end in Chromium, against a fake anywidget model (no JupyterLab; seconds).

Checks drawing, lasso / box / label selection against selections computed independently in
Python from the coordinates and the page's view transform, the uint32 selection sync without
echo, button actions, lazily fetched hover details, and that model text is never parsed as HTML.
"""

from __future__ import annotations

import base64
import io
import pathlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from datacrafter_widget.ui.widget import CrafterWidget

from standalone import open_standalone, synthetic_frame, synthetic_thumbnails, wait_thumbnails, widget_state

ARTIFACTS = pathlib.Path(__file__).resolve().parents[2] / "test-artifacts"
XSS = "<img src=x onerror=alert(1)>"


# ----------------------------------------------------------------- shared helpers (also used by test_lab)
def points_in_polygon(px: np.ndarray, py: np.ndarray, poly: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule, vectorised over points; the same rule the front end uses."""
    inside = np.zeros(px.shape, dtype=bool)
    m = len(poly)
    for j in range(m):
        xj, yj = poly[j]
        xk, yk = poly[j - 1]
        crosses = (yj > py) != (yk > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = (xk - xj) * (py - yj) / (yk - yj) + xj
        inside ^= crosses & (px < xint)
    return inside


def to_screen(xy: np.ndarray, view: dict) -> tuple[np.ndarray, np.ndarray]:
    """Data -> CSS px inside the canvas: sx = x*k + tx, sy = -y*k + ty (what the page exposes)."""
    xy = xy.astype(np.float64)
    return xy[:, 0] * view["k"] + view["tx"], -xy[:, 1] * view["k"] + view["ty"]


def draw_lasso(page: Any, canvas_box: dict, poly: list[tuple[float, float]], modifier: str | None = None) -> None:
    """Drags the mouse along the polygon's edges (positions relative to the canvas)."""
    ox, oy = canvas_box["x"], canvas_box["y"]
    if modifier:
        page.keyboard.down(modifier)
    page.mouse.move(ox + poly[0][0], oy + poly[0][1])
    page.mouse.down()
    for x, y in poly[1:] + [poly[0]]:
        page.mouse.move(ox + x, oy + y, steps=10)
    page.mouse.up()
    if modifier:
        page.keyboard.up(modifier)


def canvas_ink(page: Any, selector: str = ".dcw-gl") -> float:
    """Fraction of canvas pixels that differ from the white background (reads the WebGL canvas)."""
    url = page.evaluate(f"document.querySelector('{selector}').toDataURL('image/png')")
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)
    return float((np.abs(img - 255).sum(axis=2) > 30).mean())


def lasso_polygon(view: dict) -> list[tuple[float, float]]:
    """An irregular pentagon with integer vertices covering part of the canvas."""
    w, h = view["width"], view["height"]
    return [
        (round(w * a), round(h * b)) for a, b in [(0.30, 0.25), (0.62, 0.20), (0.70, 0.55), (0.48, 0.78), (0.25, 0.60)]
    ]


# ----------------------------------------------------------------- fixtures
@pytest.fixture()
def shown(page: Any) -> tuple[Any, CrafterWidget, Any]:
    frame = synthetic_frame(2000, seed=1)
    w = CrafterWidget()
    labels = [
        {
            "text": XSS,
            "x": float(frame.x[:50].mean()),
            "y": float(frame.y[:50].mean()),
            "n": 50,
            "members": list(range(50)),
        },
        {"text": "stripes", "x": 60.0, "y": 60.0, "n": 3, "members": [5, 6, 7]},
    ]
    w.set_frame(frame, thumbnails=synthetic_thumbnails(frame, 16), labels=labels)
    open_standalone(page, widget_state(w))
    return page, w, frame


def handle(page: Any, expr: str) -> Any:
    return page.evaluate(f"(() => {{ const h = window.__dcw[window.__dcw.length - 1]; return {expr}; }})()")


# ----------------------------------------------------------------- tests
def test_draws_points_and_legend(shown: Any) -> None:
    page, w, frame = shown
    assert canvas_ink(page) > 0.02, "the projection canvas stayed blank"
    legend = page.locator(".dcw-legend").inner_text()
    assert "class 0" in legend and "generated" in legend
    assert handle(page, "h.n") == len(frame)
    # Issue 11, UX 2: the legend sits above the map, never over data, and fit-to-view shows every point.
    legend_box, map_box = page.locator(".dcw-legend").bounding_box(), page.locator(".dcw-gl").bounding_box()
    assert legend_box["y"] + legend_box["height"] <= map_box["y"] + 0.5
    view = handle(page, "h.view")
    sx, sy = to_screen(frame[["x", "y"]].to_numpy(np.float32), view)
    assert sx.min() >= 0 and sy.min() >= 0 and sx.max() <= view["width"] and sy.max() <= view["height"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "frontend-points.png"))


def test_lasso_selects_exactly_the_points_inside(shown: Any) -> None:
    page, w, frame = shown
    view = handle(page, "h.view")
    poly = lasso_polygon(view)
    sx, sy = to_screen(frame[["x", "y"]].to_numpy(np.float32), view)
    expected = np.flatnonzero(points_in_polygon(sx, sy, poly))
    assert 50 < expected.size < len(frame) - 50, "polygon should cut through the data"
    page.click("button[data-mode=lasso]")
    box = page.locator(".dcw-gl").bounding_box()
    draw_lasso(page, box, poly)
    got = handle(page, "h.selection")
    assert got == expected.tolist()
    # The model holds the same ids as a uint32 buffer, saved once.
    synced = page.evaluate("Array.from(new Uint32Array(window.__model.get('selection').buffer))")
    assert synced == expected.tolist()
    assert page.evaluate("window.__model.saves") == 1
    assert page.locator("[data-role=count]").inner_text().startswith(f"{expected.size} of")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "frontend-lasso.png"))
    # Shift adds a second region, alt subtracts the first again.
    poly2 = [(x + 0, y) for x, y in [(20, 20), (120, 20), (120, 120), (20, 120)]]
    add = np.flatnonzero(points_in_polygon(sx, sy, poly2))
    draw_lasso(page, box, poly2, modifier="Shift")
    assert handle(page, "h.selection") == np.union1d(expected, add).tolist()
    draw_lasso(page, box, poly, modifier="Alt")
    assert handle(page, "h.selection") == np.setdiff1d(add, expected).tolist()
    assert handle(page, "h.timings.lassoMs") < 100


def test_box_selection_and_pan_mode_shift_lasso(shown: Any) -> None:
    page, w, frame = shown
    view = handle(page, "h.view")
    sx, sy = to_screen(frame[["x", "y"]].to_numpy(np.float32), view)
    box = page.locator(".dcw-gl").bounding_box()
    page.click("button[data-mode=box]")
    x0, y0, x1, y1 = 200, 150, 420, 330
    page.mouse.move(box["x"] + x0, box["y"] + y0)
    page.mouse.down()
    page.mouse.move(box["x"] + x1, box["y"] + y1, steps=5)
    page.mouse.up()
    expected = np.flatnonzero((sx >= x0) & (sx <= x1) & (sy >= y0) & (sy <= y1))
    got = np.array(handle(page, "h.selection"))
    # Box edges are compared in data space by the page; allow no difference beyond edge rounding.
    near_edge = (
        (np.abs(sx - x0) < 1e-6) | (np.abs(sx - x1) < 1e-6) | (np.abs(sy - y0) < 1e-6) | (np.abs(sy - y1) < 1e-6)
    )
    assert set(got.tolist()) ^ set(expected.tolist()) <= set(np.flatnonzero(near_edge).tolist())
    assert expected.size > 0
    # Pan mode: plain drag pans, shift-drag lassoes.
    page.click("button[data-mode=pan]")
    before = handle(page, "h.view")
    page.mouse.move(box["x"] + 500, box["y"] + 300)
    page.mouse.down()
    page.mouse.move(box["x"] + 560, box["y"] + 340, steps=4)
    page.mouse.up()
    after = handle(page, "h.view")
    assert after["tx"] == pytest.approx(before["tx"] + 60) and after["ty"] == pytest.approx(before["ty"] + 40)
    page.mouse.wheel(0, -300)
    page.wait_for_timeout(100)
    assert handle(page, "h.view.k") > after["k"]


def test_colour_by_switches_scheme_and_syncs(shown: Any) -> None:
    page, w, frame = shown
    before = canvas_ink(page)
    page.select_option("select[data-role=color-by]", "feedback")
    assert page.evaluate("window.__model.get('color_by')") == "feedback"
    legend = page.locator(".dcw-legend").inner_text()
    assert "bad" in legend and "removed" in legend and "class 0" not in legend
    # From Python: the fake model changes like a kernel update would.
    page.evaluate("window.__model.set('color_by', 'round')")
    assert page.locator("select[data-role=color-by]").input_value() == "round"
    assert "round 1" in page.locator(".dcw-legend").inner_text()
    page.wait_for_timeout(100)
    assert canvas_ink(page) > 0.02 and before > 0.02


def test_python_selection_highlights_without_echo(shown: Any) -> None:
    page, w, frame = shown
    ink_before = canvas_ink(page)
    page.evaluate("window.__model.set('selection', new DataView(new Uint32Array([3, 7, 11]).buffer))")
    page.wait_for_timeout(100)
    assert handle(page, "h.selection") == [3, 7, 11]
    assert page.evaluate("window.__model.saves") == 0, "a selection from Python must not be sent back"
    assert handle(page, "h.selectionSends") == 0
    assert canvas_ink(page) != ink_before  # others dimmed, selected ringed


def test_bad_button_uses_the_selection_trait_only(shown: Any) -> None:
    page, w, frame = shown
    assert page.locator("button[data-action=bad]").is_disabled()
    page.evaluate("window.__model.set('selection', new DataView(new Uint32Array([2, 4, 8]).buffer))")
    page.click("button[data-action=bad]")
    sent = page.evaluate("window.__model.sent")
    commands = [m for m in sent if m["content"].get("type") == "command"]
    assert commands[-1]["content"] == {"type": "command", "name": "bad", "args": {}}
    assert commands[-1]["buffers"] == []  # the selection travels only through its trait
    # The Python side reads the indices from the selection trait.
    calls = []
    w.on_command(lambda name, args: calls.append((name, dict(args), w.selected.tolist())))
    w.set_state({"selection": memoryview(np.array([2, 4, 8], "<u4").tobytes())})
    w._on_custom_msg(w, commands[-1]["content"], [])
    assert calls == [("bad", {}, [2, 4, 8])]


def test_label_click_selects_members_and_text_is_literal(shown: Any) -> None:
    page, w, frame = shown
    labels = handle(page, "h.placedLabels")
    xss = next(lab for lab in labels if lab["text"] == XSS)
    box = page.locator(".dcw-gl").bounding_box()
    cx, cy = (xss["box"][0] + xss["box"][2]) / 2, (xss["box"][1] + xss["box"][3]) / 2
    page.mouse.click(box["x"] + cx, box["y"] + cy)
    assert handle(page, "h.selection") == list(range(50))
    assert not page.locator("button[data-action=unwanted_label]").is_disabled()
    page.click("button[data-action=unwanted_label]")
    last = page.evaluate("window.__model.sent")[-1]
    assert last["content"]["name"] == "unwanted_label" and last["content"]["args"]["label"] == XSS
    assert page.locator("img[src='x']").count() == 0
    assert page.dialogs == []


def test_hover_fetches_details_and_shows_them_as_text(shown: Any) -> None:
    page, w, frame = shown
    view = handle(page, "h.view")
    sx, sy = to_screen(frame[["x", "y"]].to_numpy(np.float32), view)
    # A point with no neighbour within 8 px, so the hover target is unambiguous.
    d = np.hypot(sx[:, None] - sx[None, :], sy[:, None] - sy[None, :])
    np.fill_diagonal(d, np.inf)
    ok = np.flatnonzero(
        (d.min(axis=1) > 8) & (sx > 20) & (sx < view["width"] - 20) & (sy > 20) & (sy < view["height"] - 20)
    )
    i = int(ok[0])
    box = page.locator(".dcw-gl").bounding_box()
    page.mouse.move(box["x"] + sx[i] + 0.3, box["y"] + sy[i] + 0.3)
    page.wait_for_selector(".dcw-tooltip[data-index='%d']" % i, state="visible")
    page.wait_for_function(f"window.__model.sent.some((m) => m.content.type === 'details' && m.content.index === {i})")
    # Answer as the Python side would, with the XSS caption and a real PNG.
    w.on_details(
        lambda k: {
            "caption": XSS,
            "prompt": f"a photo of {frame.label[k]}",
            "image": Image.new("RGB", (64, 64), (200, 10, 10)),
        }
    )
    fields, png = w.details(i)
    page.evaluate(
        "([i, fields, png]) => window.__model.emit({type: 'details', index: i, fields},"
        " [new DataView(Uint8Array.from(atob(png), (c) => c.charCodeAt(0)).buffer)])",
        [i, fields, base64.b64encode(png).decode()],
    )
    text = page.locator(".dcw-tooltip").inner_text()
    assert XSS in text and f"a photo of {frame.label[i]}" in text
    assert page.locator(".dcw-tooltip img").get_attribute("src").startswith("blob:")
    assert page.locator("img[src='x']").count() == 0
    assert page.dialogs == []
    page.wait_for_function("document.querySelector('.dcw-tooltip img').naturalWidth === 64")


def test_zoom_in_switches_to_thumbnails(shown: Any) -> None:
    page, w, frame = shown
    assert handle(page, "h.thumbsShown") is False  # 2,000 points: marks at the overview
    v = handle(page, "h.view")
    cx, cy = v["width"] / 2, v["height"] / 2
    k, tx, ty = v["k"] * 8, cx - (cx - v["tx"]) * 8, cy - (cy - v["ty"]) * 8
    page.evaluate(f"window.__dcw[window.__dcw.length - 1].setView({k}, {tx}, {ty})")
    page.wait_for_function("window.__dcw[window.__dcw.length - 1].thumbsShown === true")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "frontend-thumbnails.png"))
    assert canvas_ink(page) > 0.05
    assert page.errors == []


@pytest.mark.parametrize("primitive", ["quads", "points"])
def test_thumbnails_map_to_their_point_upright(page: Any, primitive: str) -> None:
    """Each point shows its own thumbnail, the right way up, with either drawing primitive."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "x": [0.0, 10.0, 20.0, 0.0, 20.0],
            "y": [0.0, 10.0, 0.0, 20.0, 20.0],
            "label": ["a"] * 5,
            "source": ["real"] * 5,
        }
    )
    tops = [(250, 0, 0), (0, 200, 0), (0, 0, 250), (250, 200, 0), (200, 0, 200)]
    tiles = np.zeros((5, 32, 32, 3), np.uint8)
    for i, top in enumerate(tops):
        tiles[i, :16] = top
        tiles[i, 16:] = (40 * i, 40 * i, 40 * i)
    w = CrafterWidget(primitive=primitive)
    w.set_frame(frame, thumbnails=tiles)
    open_standalone(page, widget_state(w))
    wait_thumbnails(page)  # asked for on demand: the five points in view
    assert handle(page, "h.primitive") == primitive
    view = handle(page, "h.view")
    url = page.evaluate("document.querySelector('.dcw-gl').toDataURL('image/png')")
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)
    sx, sy = to_screen(frame[["x", "y"]].to_numpy(np.float32), view)
    for i in range(5):
        x, y = int(round(sx[i])), int(round(sy[i]))
        top, bottom = img[y - 12, x], img[y + 12, x]
        assert np.abs(top - np.array(tops[i])).max() < 40, f"point {i}: top {top} should be {tops[i]}"
        assert np.abs(bottom - 40 * i).max() < 40, f"point {i}: bottom {bottom} should be grey {40 * i}"


def test_escape_abandons_a_lasso(shown: Any) -> None:
    page, w, frame = shown
    page.click("button[data-mode=lasso]")
    box = page.locator(".dcw-gl").bounding_box()
    page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.mouse.down()
    for x, y in [(500, 100), (500, 400), (100, 400)]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=5)
    page.keyboard.press("Escape")
    page.mouse.up()
    assert handle(page, "h.selection") == []
    assert page.evaluate("window.__model.saves") == 0


# ----------------------------------------------------------------- issue 11: themes, test images, tools
# JupyterLab's Dark theme variables (the values of @jupyterlab/theme-dark-extension).
JP_DARK = """body {
  --jp-layout-color0: #111111; --jp-layout-color1: #212121; --jp-layout-color2: #424242;
  --jp-ui-font-color0: rgba(255,255,255,1); --jp-ui-font-color1: rgba(255,255,255,0.87);
  --jp-ui-font-color2: rgba(255,255,255,0.54); --jp-border-color1: #616161; --jp-brand-color1: #1976d2;
  background: #111111; }"""


def _page_contrast(page: Any, selector: str, prop_fg: str = "color", bg_selector: str | None = None) -> float:
    """WCAG contrast of an element's text colour (alpha blended) against the first opaque background up its tree."""
    return page.evaluate(
        """([sel, bgSel]) => {
          const parse = (s) => { const m = s.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
            const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
          const e = document.querySelector(sel);
          let b = document.querySelector(bgSel || sel), bg = null;
          while (b) { const c = parse(getComputedStyle(b).backgroundColor); if (c && c[3] > 0.5) { bg = c; break; } b = b.parentElement; }
          bg = bg || [255, 255, 255, 1];
          const fg = parse(getComputedStyle(e).color);
          const mix = fg.slice(0, 3).map((v, k) => v * fg[3] + bg[k] * (1 - fg[3]));
          const lum = (c) => { const l = c.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
            return 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2]; };
          const a = lum(mix), z = lum(bg.slice(0, 3));
          return (Math.max(a, z) + 0.05) / (Math.min(a, z) + 0.05);
        }""",
        [selector, bg_selector],
    )


def test_dark_theme_contrast_is_computed_from_the_page(page: Any) -> None:
    """With JupyterLab's Dark variables the toolbar, legend and labels stay readable and the map is dark."""
    frame = synthetic_frame(600, seed=4)
    w = CrafterWidget()
    w.set_frame(
        frame,
        labels=[
            {
                "text": "stripes",
                "x": float(frame.x.mean()),
                "y": float(frame.y.mean()),
                "n": 30,
                "members": list(range(30)),
            }
        ],
    )
    open_standalone(page, widget_state(w), css=JP_DARK)
    for sel in (
        ".dcw-toolbar button[data-mode=lasso]",
        ".dcw-count",
        ".dcw-legend .dcw-item span:last-child",
        ".dcw-status",
    ):
        assert _page_contrast(page, sel) >= 4.5, sel
    theme = handle(page, "h.theme")
    assert max(theme["bg"]) <= 30  # the map background follows the theme
    # The WebGL canvas itself is dark where no point is drawn (the top-left corner is padding).
    url = page.evaluate("document.querySelector('.dcw-gl').toDataURL('image/png')")
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
    assert img[:5, :5].mean() < 40
    # Content labels are drawn in the theme's text colour: light pixels on the overlay.
    lum = lambda c: 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]  # noqa: E731
    assert lum(theme["fg"]) > 180
    page.screenshot(path=str(ARTIFACTS / "theme-dark.png"))


def test_test_images_are_distinct_and_never_selected(page: Any) -> None:
    frame = synthetic_frame(800, seed=5)
    frame["split"] = np.where((frame["source"] == "real") & (np.arange(len(frame)) % 2 == 0), "test", "train")
    w = CrafterWidget()
    w.set_frame(frame)
    test = (frame["split"] == "test").to_numpy()
    assert set(np.frombuffer(w.kind, np.uint8)[test].tolist()) == {2}
    open_standalone(page, widget_state(w))  # shown (no hidden mask): drawn as hollow diamonds
    view = handle(page, "h.view")
    poly = [(2, 2), (view["width"] - 2, 2), (view["width"] - 2, view["height"] - 2), (2, view["height"] - 2)]
    page.click("button[data-mode=lasso]")
    draw_lasso(page, page.locator(".dcw-gl").bounding_box(), poly)
    sel = handle(page, "h.selection")
    assert len(sel) > 100 and not any(test[i] for i in sel)
    assert "held-out test" in page.locator(".dcw-legend").inner_text()
    # Hidden points (a filter) are neither drawn nor selectable either.
    hidden = np.zeros(len(frame), np.uint8)
    hidden[:100] = 1
    page.evaluate(f"window.__model.set('hidden', new DataView(new Uint8Array({hidden.tolist()}).buffer))")
    page.click("button[data-role=clear]")
    draw_lasso(page, page.locator(".dcw-gl").bounding_box(), poly)
    sel = handle(page, "h.selection")
    assert sel and min(sel) >= 100 and not any(test[i] for i in sel)


def test_gallery_marks_one_image_and_keys_send_undo(shown: Any) -> None:
    page, w, frame = shown
    page.evaluate("window.__model.set('selection', new DataView(new Uint32Array([3, 9, 11]).buffer))")
    tiles = page.locator(".dcw-gallery .dcw-tile")
    assert tiles.count() == 3
    tiles.nth(1).locator("button[data-mark=bad]").click()
    sent = [m for m in page.evaluate("window.__model.sent") if m["content"].get("type") == "command"]
    assert sent[-1]["content"] == {"type": "command", "name": "gallery_mark", "args": {"index": 9, "value": "bad"}}
    # The feedback change comes back as the feedback array only: the tile gets a red border, the point a band.
    fb = np.zeros(len(frame), np.uint8)
    fb[9] = 2
    page.evaluate(f"window.__model.set('feedback', new DataView(new Uint8Array({fb.tolist()}).buffer))")
    assert tiles.nth(1).get_attribute("data-feedback") == "bad"
    # Keyboard: the map has focus after a click; ctrl+z -> undo, b -> bad.
    page.locator(".dcw-stage").click(position={"x": 5, "y": 5})
    page.evaluate("window.__model.set('selection', new DataView(new Uint32Array([3]).buffer))")
    page.keyboard.press("Control+z")
    page.keyboard.press("b")
    names = [
        m["content"]["name"] for m in page.evaluate("window.__model.sent") if m["content"].get("type") == "command"
    ]
    assert names[-2:] == ["undo", "bad"]


def test_search_box_sends_the_query(shown: Any) -> None:
    page, w, frame = shown
    page.fill("input[data-role=search]", "red car")
    page.select_option("select[data-role=search-mode]", "clip")
    page.press("input[data-role=search]", "Enter")
    sent = [m for m in page.evaluate("window.__model.sent") if m["content"].get("type") == "command"]
    assert sent[-1]["content"] == {"type": "command", "name": "search", "args": {"query": "red car", "mode": "clip"}}
    # Typing in the box is not taken as shortcuts ("b" is Bad on the map).
    assert all(m["content"]["name"] != "bad" for m in sent)


def _gl_pixels(page: Any) -> np.ndarray:
    url = page.evaluate("document.querySelector('.dcw-gl').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)


def test_pan_cache_shows_the_drawn_frame(shown: Any) -> None:
    """Large maps on software WebGL pan by shifting a frame drawn once with a margin (scale 50): the
    shifted frame matches drawing every point again, and a change of data redraws it."""
    page, w, frame = shown
    border = 14  # points cut at the canvas edge differ by design (the cache draws them whole)
    inner = (slice(border, -border), slice(border, -border))

    def differing(a: np.ndarray, b: np.ndarray) -> float:
        """Fraction of pixels that differ; marks may land one pixel apart (rounding of a larger viewport)."""
        return float((np.abs(a[inner] - b[inner]).max(axis=2) > 0).mean())

    v = handle(page, "h.view")
    shifts = [(0, 0), (37, -23), (-120, 64), (5, 250), (-250, -3)]
    handle(page, "h.setPanCache(false)")
    exact = []
    for dx, dy in shifts:
        handle(page, f"h.setView({v['k']}, {v['tx'] + dx}, {v['ty'] + dy})")
        handle(page, "h.drawNow()")
        exact.append(_gl_pixels(page))
    handle(page, "h.setPanCache(true)")
    # The frame setPanCache asks for runs now (at the last view), not at a random point of the loop below:
    # on a busy machine it came late and centred the cache elsewhere, which costs a third draw.
    page.evaluate("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    stats0 = handle(page, "h.cacheStats")
    for (dx, dy), want in zip(shifts, exact):
        handle(page, f"h.setView({v['k']}, {v['tx'] + dx}, {v['ty'] + dy})")
        handle(page, "h.drawNow()")
        got = _gl_pixels(page)
        assert (np.abs(want[inner] - 255).sum(axis=2) > 30).mean() > 0.01  # not blank frames
        assert differing(got, want) < 0.005, (dx, dy, differing(got, want))
    stats = handle(page, "h.cacheStats")
    # Frames drawn with points only where a pan leaves the 256 px margin of the cached frame (twice for
    # these shifts from the last view's frame), every other pan only shifted it.
    assert stats["draws"] - stats0["draws"] <= 2 and stats["blits"] - stats0["blits"] >= len(shifts)
    # A wrong shift would not pass: the frame one pixel off differs in far more pixels.
    assert differing(np.roll(exact[1], 3, axis=1), exact[1]) > 0.02
    # A selection from Python changes the points' state: the cached frame is redrawn, not shifted.
    page.evaluate("window.__model.set('selection', new DataView(new Uint32Array([3, 7, 11]).buffer))")
    handle(page, "h.drawNow()")
    cached = _gl_pixels(page)
    assert handle(page, "h.cacheStats")["draws"] > stats["draws"]
    handle(page, "h.setPanCache(false)")
    handle(page, "h.drawNow()")
    assert differing(cached, _gl_pixels(page)) < 0.005


def test_zoom_gesture_shows_the_scaled_frame_then_a_sharp_one(shown: Any) -> None:
    """With the pan cache on, wheel steps show the last frame scaled; 160 ms after the last step the
    map is drawn sharp, exactly as without the cache."""
    page, w, frame = shown
    handle(page, "h.setPanCache(true)")
    handle(page, "h.drawNow()")
    before = handle(page, "h.cacheStats")
    box = page.locator(".dcw-gl").bounding_box()
    page.mouse.move(box["x"] + 300, box["y"] + 200)
    handle(page, "h.root.focus()")  # the wheel zooms a map that has focus (else it scrolls the page)
    for _ in range(3):
        page.mouse.wheel(0, -100)
        page.wait_for_timeout(30)
    during = handle(page, "h.cacheStats")
    assert during["scaled"] > before["scaled"], (before, during)
    page.wait_for_function("!window.__dcw[window.__dcw.length - 1].zooming")
    page.wait_for_timeout(100)  # the sharp frame's animation frame
    after = handle(page, "h.cacheStats")
    assert after["draws"] > during["draws"]
    sharp = _gl_pixels(page)
    handle(page, "h.setPanCache(false)")
    handle(page, "h.drawNow()")
    exact = _gl_pixels(page)
    inner = (slice(14, -14), slice(14, -14))
    assert (np.abs(exact[inner] - 255).sum(axis=2) > 30).mean() > 0.01
    assert float((np.abs(sharp[inner] - exact[inner]).max(axis=2) > 0).mean()) < 0.005


def test_piled_thumbnails_show_their_count(page: Any) -> None:
    """Issue 11, UX 5: images drawn on top of each other at thumbnail size carry a "×n" badge."""
    import pandas as pd

    xs, ys = np.meshgrid(np.arange(6) * 10.0, np.arange(4) * 10.0)
    frame = pd.DataFrame({"x": np.r_[xs.ravel(), [25.0] * 5], "y": np.r_[ys.ravel(), [15.0] * 5]})
    frame["label"], frame["source"] = "a", "real"
    w = CrafterWidget()
    w.set_frame(frame, thumbnails=synthetic_thumbnails(frame, 16))
    open_standalone(page, widget_state(w))
    page.wait_for_function("window.__dcw[0].thumbsShown === true")
    groups = handle(page, "h.overlaps")
    assert [g["n"] for g in groups] == [5]
    view = handle(page, "h.view")
    sx, sy = 25.0 * view["k"] + view["tx"], -15.0 * view["k"] + view["ty"]
    assert abs(groups[0]["sx"] - sx) < 1 and abs(groups[0]["sy"] - sy) < 1
    # The badge is drawn on the overlay: dark pixels in the pile's top-right corner, none at a lone image.
    url = page.evaluate("document.querySelector('.dcw-overlay').toDataURL('image/png')")
    over = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA")).astype(int)
    size = handle(page, "h.profileFrame().size")  # the thumbnails' size on screen

    def dark(x: float, y: float) -> float:
        patch = over[int(y - size / 2) : int(y - size / 2) + 12, int(x) : int(x + size / 2)]
        return float(((patch[..., 3] > 150) & (patch[..., :3].max(axis=2) < 80)).mean())

    assert dark(sx, sy) > 0.2
    assert dark(0.0 * view["k"] + view["tx"], view["ty"]) == 0.0


def test_feedback_band_stays_visible_on_a_selected_thumbnail(page: Any) -> None:
    """Issue 11, UX 6: a mark is a thick band inside the ring, so a selected image (yellow ring) still
    shows it: red for bad, green for good, read from the canvas along each thumbnail's radius."""
    import pandas as pd

    frame = pd.DataFrame(
        {"x": [0.0, 20.0, 0.0, 20.0], "y": [0.0, 0.0, 20.0, 20.0], "label": ["a"] * 4, "source": ["real"] * 4}
    )
    w = CrafterWidget()
    w.set_frame(frame, thumbnails=np.full((4, 32, 32, 3), 128, np.uint8))
    w.feedback = bytes([2, 1, 0, 0])  # bad, good, none
    open_standalone(page, widget_state(w))
    page.wait_for_function("window.__dcw[0].thumbsShown === true")
    page.evaluate("window.__model.set('selection', new DataView(new Uint32Array([0, 1, 2]).buffer))")
    handle(page, "h.drawNow()")
    view, size = handle(page, "h.view"), handle(page, "h.profileFrame().size")
    img = _gl_pixels(page)
    sx, sy = to_screen(frame[["x", "y"]].to_numpy(np.float32), view)
    half = size * 1.2 / 2  # a selected image is drawn 20% larger

    def along(i: int) -> np.ndarray:  # from the centre to the right edge
        y, x0 = int(round(sy[i])), int(round(sx[i]))
        return img[y, x0 : int(x0 + half)]

    def has(row: np.ndarray, rgb: tuple[int, int, int], n: int) -> bool:
        return int((np.abs(row - np.array(rgb)).max(axis=1) < 40).sum()) >= n

    yellow, red, green = (255, 204, 0), (219, 26, 31), (26, 168, 64)
    for i in range(3):
        assert has(along(i), yellow, 1), f"image {i}: no selection ring"
    assert has(along(0), red, 3) and not has(along(0), green, 1)
    assert has(along(1), green, 3) and not has(along(1), red, 1)
    assert not has(along(2), red, 1) and not has(along(2), green, 1)


# ----------------------------------------------------------------- content labels from the real view (issue 11)
def _crafted_view(tmp_path: pathlib.Path) -> tuple[Any, Any, np.ndarray, dict]:
    """A CrafterView over a real DataCrafter with a crafted projection: two far clusters of training
    images, the label "stripes" on the training images of the left cluster and 3 of the right, "dots" on the rest of the
    right, and "ghost" on no image (its class is absent from the map)."""
    import pandas as pd

    import datacrafter_widget as dc
    from datacrafter_widget.ui.widget import CrafterView

    crafter = dc.DataCrafter(dc.starter.colored_digits(shots=2), project=tmp_path / "p")
    view = CrafterView(crafter)
    view.wait()
    s = crafter.samples
    train = s[s["split"] != "test"]["id"].tolist()
    rng = np.random.default_rng(4)
    xy = {}
    for k, sid in enumerate(s["id"]):
        cx = -10.0 if k % 2 == 0 else 10.0
        xy[sid] = (cx + rng.normal(0, 0.6), rng.normal(0, 0.6))
    left = [i for i in train if xy[i][0] < 0][:30]
    right = [i for i in train if xy[i][0] > 0]
    groups = {"stripes": left + right[:3], "<b>dots</b>": right[3:], "ghost": []}
    rows = [{"kind": "image", "id": sid, "text": "", "x": x, "y": y, "members": None} for sid, (x, y) in xy.items()]
    rows += [{"kind": "label", "id": "", "text": t, "x": 0.0, "y": 0.0, "members": m} for t, m in groups.items()]
    crafter.set_projection(pd.DataFrame(rows))
    return crafter, view, np.array([xy[i] for i in s["id"]], np.float32), groups


def _page_labels(page: Any) -> dict[str, tuple[float, float]]:
    """Placed labels' box centres on the page, in data coordinates."""
    v = handle(page, "h.view")
    out = {}
    for p in handle(page, "h.placedLabels"):
        b = p["box"]
        sx, sy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        out[p["text"]] = ((sx - v["tx"]) / v["k"], -(sy - v["ty"]) / v["k"])
    return out


def test_content_labels_sit_on_members_and_do_not_jump(page: Any, tmp_path: pathlib.Path) -> None:
    """Issue 11, UX 4: a label of a class absent from the map is not drawn; each label is drawn on one of
    its members inside their densest group (not at the centroid between clusters); adding images elsewhere
    leaves the labels where they were."""
    crafter, view, xy, groups = _crafted_view(tmp_path)
    try:
        open_standalone(page, widget_state(view.widget))
        page.wait_for_function("window.__dcw[window.__dcw.length - 1].placedLabels.length > 0")
        got = _page_labels(page)
        assert set(got) == {"stripes", "<b>dots</b>"}  # "ghost" has no image on the map
        k = handle(page, "h.view")["k"]
        v = handle(page, "h.view")
        # A label on a member at the map's edge slides inside it (issue 22): measured along the edge only.
        at_edge = {
            p["text"]: (
                p["box"][0] <= 0.5 or p["box"][2] >= v["width"] - 0.5,
                p["box"][1] <= 0.5 or p["box"][3] >= v["height"] - 0.5,
            )
            for p in handle(page, "h.placedLabels")
        }
        for text, (x, y) in got.items():
            idx = [view._index[i] for i in groups[text]]
            ex, ey = at_edge[text]
            d = np.hypot(0 if ex else xy[idx, 0] - x, 0 if ey else xy[idx, 1] - y)
            assert d.min() * k < 1.5, f"{text!r} is {d.min() * k:.1f} px from its nearest member"
        # "stripes" has ~10 members on the left and 3 on the right: it sits on the left cluster, not between.
        assert got["stripes"][0] < -5
        # Label text is literal on the canvas and nowhere parsed as HTML.
        assert page.locator("#host b").count() == 0
        before = {t: (lab["x"], lab["y"]) for t, lab in ((lab["text"], lab) for lab in view.widget.labels)}

        # Add 40 generated images in a tight pile on the right cluster, 9 of them "stripes": the right now
        # holds the densest group of "stripes" members, yet the label stays where it was (no jump) while
        # its own group keeps at least half as many.
        import pandas as pd
        from PIL import Image as PILImage

        new = crafter.store.add(
            [PILImage.new("RGB", (32, 32), (10 * (i % 20), 90, 200)) for i in range(40)],
            [{"label": crafter.classes[0], "source": "generated", "split": "generated", "round": 1} for _ in range(40)],
        )
        rng = np.random.default_rng(9)
        ids = crafter.samples["id"].tolist()
        proj = crafter.projection
        images = proj[proj["kind"] == "image"]
        extra = pd.DataFrame(
            [
                {
                    "kind": "image",
                    "id": i,
                    "text": "",
                    "x": 10 + rng.normal(0, 0.1),
                    "y": rng.normal(0, 0.1),
                    "members": None,
                }
                for i in new
            ]
        )
        labels = proj[proj["kind"] == "label"].copy()
        labels.loc[labels["text"] == "stripes", "members"] = pd.Series(
            [groups["stripes"] + new[:9]], index=labels.index[labels["text"] == "stripes"]
        )
        crafter.set_projection(pd.concat([images, extra, labels], ignore_index=True))
        assert view.widget.n == len(ids) == len(xy) + 40
        after = {lab["text"]: (lab["x"], lab["y"]) for lab in view.widget.labels}
        assert after == before
        open_standalone(page, widget_state(view.widget))
        page.wait_for_function("window.__dcw[window.__dcw.length - 1].placedLabels.length > 0")
        got2 = _page_labels(page)
        k2 = handle(page, "h.view")["k"]
        for text in got:
            ex, ey = at_edge[text]  # slid inside the map along that axis: its place there follows the zoom
            dx, dy = 0 if ex else got2[text][0] - got[text][0], 0 if ey else got2[text][1] - got[text][1]
            assert np.hypot(dx, dy) * k2 < 1.5, (text, got, got2)
        assert page.errors == []
    finally:
        crafter.close()


def test_tooltip_shows_content_labels_as_text(page: Any, tmp_path: pathlib.Path) -> None:
    """Hovering a point asks the kernel for its details; the real view's answer lists the point's content
    labels, and the tooltip shows them as text (a label written as HTML stays literal)."""
    crafter, view, xy, groups = _crafted_view(tmp_path)
    try:
        w = view.widget
        open_standalone(page, widget_state(w))
        v = handle(page, "h.view")
        sx, sy = to_screen(xy, v)
        d = np.hypot(sx[:, None] - sx[None, :], sy[:, None] - sy[None, :])
        np.fill_diagonal(d, np.inf)
        both = set(view._index[i] for i in groups["stripes"]) & set(view._index[i] for i in groups["<b>dots</b>"])
        cands = [view._index[i] for i in groups["<b>dots</b>"]]
        hidden = np.frombuffer(w.hidden, np.uint8)
        ok = [
            i
            for i in cands
            if d[i].min() > 8 and not hidden[i] and 20 < sx[i] < v["width"] - 20 and 20 < sy[i] < v["height"] - 20
        ]
        assert ok and not both
        i = ok[0]
        box = page.locator(".dcw-gl").bounding_box()
        page.mouse.move(box["x"] + sx[i] + 0.3, box["y"] + sy[i] + 0.3)
        page.wait_for_selector(".dcw-tooltip[data-index='%d']" % i, state="visible")
        page.wait_for_function(
            f"window.__model.sent.some((m) => m.content.type === 'details' && m.content.index === {i})"
        )
        fields, png = w.details(i)  # what the kernel answers
        assert dict(fields)["labels"] == "<b>dots</b>"
        page.evaluate(
            "([i, fields, png]) => window.__model.emit({type: 'details', index: i, fields},"
            " [new DataView(Uint8Array.from(atob(png), (c) => c.charCodeAt(0)).buffer)])",
            [i, fields, base64.b64encode(png).decode()],
        )
        tip = page.locator(".dcw-tooltip")
        page.wait_for_function("document.querySelector('.dcw-tooltip').innerText.includes('<b>dots</b>')")
        assert "<b>dots</b>" in tip.inner_text() and "stripes" not in tip.inner_text()
        assert tip.locator("b").count() == 0
    finally:
        crafter.close()


def test_side_panels_and_chart_live_in_the_one_widget(page: Any) -> None:
    """Generate, the prompts of each class and the metrics chart are part of the anywidget (no ipywidgets):
    their controls send typed commands, prompts arrive as text (never HTML), the chart is kernel-drawn SVG
    shown as an image, and Generate waits while a job runs."""
    frame = synthetic_frame(200, seed=2)
    w = CrafterWidget()
    w.set_frame(frame)
    w.strategies = ["class", "caption", "custom", "evolved"]
    w.prompts = {
        "cat": {"current": XSS, "history": [{"action": "edit", "prompt": "a cat"}, {"action": "edit", "prompt": XSS}]},
        "dog": {"current": "a dog", "history": [], "mixture": ["a dog", "a dog on snow"]},
    }
    w.chart = '<svg xmlns="http://www.w3.org/2000/svg" width="300" height="120"><rect width="300" height="120" fill="#1f77b4"/></svg>'
    open_standalone(page, widget_state(w), width=1200)
    sent = lambda: [m["content"] for m in page.evaluate("window.__model.sent") if m["content"].get("type") == "command"]  # noqa: E731
    # Generate: strategy, count, custom prompt -> one command with typed arguments.
    page.select_option("select[data-role=strategy]", "custom")
    page.fill("input[data-role=per-class]", "3")
    page.fill("input[data-role=custom-prompt]", "a photo of a {class} at night")
    page.click("button[data-action=generate]")
    assert sent()[-1] == {
        "type": "command",
        "name": "generate",
        "args": {"strategy": "custom", "count": 3, "prompt": "a photo of a {class} at night"},
    }
    page.select_option("select[data-role=strategy]", "evolved")
    assert "current prompt" in page.locator("[data-role=generate] .dcw-hint").inner_text()
    # Prompts: the model text is the textarea's value, literally; edit, accept and revert send their commands.
    cat = page.locator(".dcw-prompt[data-class=cat]")
    assert cat.locator("textarea").input_value() == XSS
    cat.locator("textarea").fill("a photo of a cat")
    cat.locator("button[data-action=prompt_edit]").click()
    assert sent()[-1]["args"] == {"class_name": "cat", "prompt": "a photo of a cat"}
    cat.locator("select[data-role=prompt-history]").select_option("0")
    cat.locator("button[data-action=prompt_revert]").click()
    assert sent()[-1] == {"type": "command", "name": "prompt_revert", "args": {"class_name": "cat", "index": 0}}
    dog = page.locator(".dcw-prompt[data-class=dog]")
    assert dog.locator("button[data-action=prompt_revert]").is_disabled()  # no earlier prompt
    assert "cycle through 2 prompts" in dog.inner_text()
    # The chart: an <img> of the SVG (nothing in it runs), below the map.
    img = page.locator("[data-role=chart] img")
    page.wait_for_function("document.querySelector('[data-role=chart] img').naturalWidth === 300")
    assert img.get_attribute("src").startswith("blob:")
    assert img.bounding_box()["y"] > page.locator(".dcw-stage").bounding_box()["y"]
    # A running job disables Generate until it ends; the side panel sits right of the map.
    page.evaluate("window.__model.set('progress', {running: true, done: 1, total: 4, message: 'x'})")
    assert page.locator("button[data-action=generate]").is_disabled()
    page.evaluate("window.__model.set('progress', {running: false, done: 4, total: 4, message: ''})")
    assert page.locator("button[data-action=generate]").is_enabled()
    side, stage = page.locator(".dcw-side").bounding_box(), page.locator(".dcw-stage").bounding_box()
    assert side["x"] >= stage["x"] + stage["width"] and side["width"] <= 281
    assert page.locator("img[src='x']").count() == 0 and page.dialogs == [] and page.errors == []

"""What keeps the map fast at 100,000 points on software WebGL, checked for what it shows (speed itself
is measured in benchmarks/bench_widget.py, never asserted here).

- The sharp frame after a zoom gesture: on software WebGL the marks are written by raster.js instead of
  WebGL's point sprites; the two must draw the same pixels (shapes, feedback bands, held-out diamonds,
  the selection's ring and the dimming of everything else).
- Zoomed in on thumbnails, a new cached frame draws the canvas's area first and its margins when idle;
  a pan or zoom gesture that reaches a margin not drawn yet must draw it first (no stale margin shows).
- A filter from the legend or the sidebar is drawn at once, from what the browser holds, and Python's
  mask confirming it costs nothing; where the browser cannot tell (Isolate), it waits for Python.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from datacrafter_widget.ui.widget import CrafterWidget

from standalone import open_standalone, synthetic_frame, synthetic_thumbnails, widget_state

H = "window.__dcw[window.__dcw.length - 1]"


def handle(page: Any, expr: str) -> Any:
    return page.evaluate(f"(() => {{ const h = {H}; return {expr}; }})()")


def commands(page: Any) -> list[dict]:
    return [m["content"] for m in page.evaluate("window.__model.sent") if m["content"].get("type") == "command"]


COMPARE = f"""() => {{
    const h = {H};
    h.setRaster(false); h.dropPanCache(); h.drawNow(); const a = h.readPixels();
    const before = h.cacheStats.rastered;
    h.setRaster(true); h.dropPanCache(); h.drawNow(); const b = h.readPixels();
    let differ = 0, marked = 0;
    for (let p = 0; p < a.length; p += 4) {{
      let d = 0;
      for (let c = 0; c < 4; c++) d = Math.max(d, Math.abs(a[p + c] - b[p + c]));
      if (d > 3) differ++;
      if (Math.abs(a[p] - a[0]) + Math.abs(a[p + 1] - a[1]) + Math.abs(a[p + 2] - a[2]) > 30) marked++;
    }}
    return {{ pixels: a.length / 4, differ, marked, rastered: h.cacheStats.rastered - before }};
}}"""


def test_marks_written_without_webgl_match_webgl_pixel_for_pixel(page: Any) -> None:
    frame = synthetic_frame(4000, classes=6, seed=3)
    frame["split"] = np.where(np.arange(len(frame)) % 9 == 0, "test", "pool")
    frame["feedback"] = np.array(["", "good", "bad", "", "removed"])[np.arange(len(frame)) % 5]
    w = CrafterWidget(height=500)
    w.set_frame(frame)
    open_standalone(page, widget_state(w), width=1100)
    if handle(page, "h.primitive") != "points":
        pytest.skip("raster.js draws only for software WebGL (point sprites)")
    handle(page, "h.setPanCache(true)")  # the cached frame (from 10,000 points on its own), which raster.js fills
    shown = handle(page, "h.drawNow() && h.cacheStats")
    assert shown["draws"] >= 1
    overview = page.evaluate(COMPARE)
    assert overview["rastered"] == 1 and overview["marked"] > 20_000, overview
    assert overview["differ"] <= overview["marked"] * 0.002, overview
    # A selection: selected marks get a ring and are drawn on top, everything else is dimmed.
    sel = [i for i in range(0, len(frame), 7) if frame["split"].iloc[i] != "test"]
    page.evaluate("([s]) => window.__model.set('selection', new DataView(Uint32Array.from(s).buffer))", [sel])
    selected = page.evaluate(COMPARE)
    assert selected["rastered"] == 1 and selected["differ"] <= selected["marked"] * 0.002, selected
    # Zoomed in by a wheel gesture (larger marks; only the points in the frame are drawn), after its sharp frame.
    steps = "for (let s = 0; s < 8; s++) h.zoomBy(1.25, h.view.width / 3, h.view.height / 2)"
    handle(page, f"(() => {{ {steps}; }})()")
    page.wait_for_function(f"!{H}.zooming")
    assert handle(page, "h.view.k") > 4
    zoomed = page.evaluate(COMPARE)
    assert zoomed["rastered"] == 1 and zoomed["marked"] > 20_000, zoomed
    assert zoomed["differ"] <= zoomed["marked"] * 0.002, zoomed
    assert page.errors == []


THUMB_COMPARE = f"""() => {{
    const h = {H};
    h.setRaster(false); h.dropPanCache(); h.drawNow(); const a = h.readPixels();
    const before = h.cacheStats.thumbsRastered;
    h.setRaster(true); h.dropPanCache(); h.drawNow(); const b = h.readPixels();
    let differ = 0, far = 0, marked = 0, sum = 0;
    for (let p = 0; p < a.length; p += 4) {{
      let d = 0;
      for (let c = 0; c < 3; c++) d = Math.max(d, Math.abs(a[p + c] - b[p + c]));
      if (d > 3) differ++;
      if (d > 48) far++;
      sum += d;
      if (Math.abs(a[p] - a[0]) + Math.abs(a[p + 1] - a[1]) + Math.abs(a[p + 2] - a[2]) > 30) marked++;
    }}
    return {{ pixels: a.length / 4, differ, far, marked, mean: sum / (a.length / 4),
              rastered: h.cacheStats.thumbsRastered - before, size: h.markSize.size }};
}}"""


def gradient_thumbnails(frame: Any, tile: int) -> Any:
    """Tiles whose colour runs left to right (red) and top to bottom (green), blue by class: a thumbnail
    drawn mirrored, shifted or from the wrong tile shows as far-off pixels."""
    cls = frame["label"].astype("category").cat.codes.to_numpy().astype(np.int64)
    ramp = np.linspace(0, 255, tile).astype(np.uint8)

    def source(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), tile, tile, 3), np.uint8)
        out[..., 0] = ramp[None, None, :]
        out[..., 1] = ramp[None, :, None]
        out[..., 2] = (40 + 35 * cls[idx] % 200)[:, None, None]
        return out

    return source


def test_thumbnails_written_without_webgl_match_webgl(page: Any) -> None:
    # Zoomed in on software WebGL, the cached frame's thumbnails are written by raster.js from the pages'
    # pixels: the same shapes, rings, feedback bands, held-out greying, selection and dimming as WebGL draws,
    # the thumbnails sampled as its bilinear filter does (full size) or from the half-size level (small).
    frame = synthetic_frame(24_000, classes=6, seed=4)
    frame["split"] = np.where(np.arange(len(frame)) % 11 == 0, "test", "pool")
    frame["feedback"] = np.array(["", "good", "", "bad", "", "removed"])[np.arange(len(frame)) % 6]
    w = CrafterWidget(height=460)
    w.set_frame(frame)
    w.set_thumbnail_source(gradient_thumbnails(frame, 24), len(frame), size=24, format="png")
    open_standalone(page, widget_state(w), width=1000)
    if handle(page, "h.primitive") != "points":
        pytest.skip("raster.js draws only for software WebGL (point sprites)")
    view = handle(page, "h.view")
    cx, cy = view["width"] / 2, view["height"] / 2

    def zoom(z: float) -> None:
        handle(page, f"h.setView({view['k'] * z}, {cx - (cx - view['tx']) * z}, {cy - (cy - view['ty']) * z})")
        page.wait_for_function(f"{H}.thumbsShown && {H}.thumbsReady", timeout=60_000)

    test = (frame["split"] == "test").to_numpy()

    def hide(mask: Any) -> None:
        """Python's answer to "show test" on / off: the filter state and the mask."""
        page.evaluate(
            """([m, on]) => { const model = window.__model;
               model.set('filters', {show_test: on, show_removed: true, isolated: false, hide: {}});
               model.set('hidden', new DataView(Uint8Array.from(m).buffer)); }""",
            [mask.astype(np.uint8).tolist(), not mask.any()],
        )

    def same(r: dict) -> bool:
        # A pixel or two off on the edge of a mark, where float rounding puts it in the other band.
        return (
            r["rastered"] >= 1
            and r["marked"] > 0.5 * r["pixels"]
            and r["differ"] <= 0.001 * r["marked"]
            and r["far"] <= 0.0005 * r["marked"]
        )

    # Thumbnails larger than 3/4 of their tile: the full-size pixels, bilinear, as WebGL reads them. Held-out
    # images hidden, every mark is opaque: drawn front to back, each pixel once.
    hide(test)
    zoom(13)
    opaque = page.evaluate(THUMB_COMPARE)
    assert opaque["size"] > 0.75 * 24 and same(opaque), opaque
    # With them (translucent, greyed): back to front, blended.
    hide(np.zeros(len(frame), bool))
    zoom(13)
    blended = page.evaluate(THUMB_COMPARE)
    assert same(blended) and handle(page, "h.hidden.filter(Boolean).length") == 0, blended
    # Smaller: read from the half-size level (a 2 x 2 box; on these ramps the same as WebGL's bilinear).
    zoom(6.5)
    small = page.evaluate(THUMB_COMPARE)
    assert small["size"] <= 0.75 * 24 and same(small), small
    # A selection: dimmed, the selection ringed on top.
    sel = list(range(0, len(frame), 5))
    page.evaluate("([s]) => window.__model.set('selection', new DataView(Uint32Array.from(s).buffer))", [sel])
    zoom(13)
    selected = page.evaluate(THUMB_COMPARE)
    assert same(selected), selected
    assert page.errors == []


PAN_FIRST = f"""([visibleFirst, moves]) => {{
    // All in one task: the idle callbacks that fill the margins cannot run in between.
    const h = {H}, v = h.view, out = [];
    h.setVisibleFirst(visibleFirst); h.dropPanCache(); h.drawNow();
    out.push(h.pendingSlices);
    for (const [dx, dy] of moves) {{ h.setView(v.k, v.tx + dx, v.ty + dy); h.drawNow(); out.push(h.readPixels()); }}
    h.setView(v.k, v.tx, v.ty); h.dropPanCache(); h.drawNow();
    h.zoomBy(0.8, v.width / 2, v.height / 2); h.drawNow();  // a zoom gesture shows the cached frame scaled
    out.push(h.readPixels());
    h.setView(v.k, v.tx, v.ty);
    return out;
}}"""


def test_thumbnail_frame_draws_the_canvas_first_and_a_pan_never_shows_an_undrawn_margin(page: Any) -> None:
    frame = synthetic_frame(12_000, classes=6, seed=2)
    w = CrafterWidget(height=420)
    w.set_frame(frame, thumbnails=synthetic_thumbnails(frame, 16))
    open_standalone(page, widget_state(w), width=1000)
    if handle(page, "h.primitive") != "points":
        pytest.skip("the pan cache and its margins are for software WebGL")
    view = handle(page, "h.view")
    cx, cy, z = view["width"] / 2, view["height"] / 2, 9
    handle(page, f"h.setView({view['k'] * z}, {cx - (cx - view['tx']) * z}, {cy - (cy - view['ty']) * z})")
    page.wait_for_function(f"{H}.thumbsShown && {H}.thumbsReady", timeout=60_000)
    moves = [[0, 0], [120, 0], [120, -90], [-200, 150]]
    page.evaluate(
        "() => { window.__compare = (a, b) => { let d = 0; for (let p = 0; p < a.length; p += 4) "
        "if (a[p] !== b[p] || a[p + 1] !== b[p + 1] || a[p + 2] !== b[p + 2]) d++; return d; }; }"
    )
    pixels = page.evaluate(
        f"""([moves]) => {{
            const whole = ({PAN_FIRST})([false, moves]), first = ({PAN_FIRST})([true, moves]);
            const differ = whole.slice(1).map((a, j) => window.__compare(a, first[j + 1]));
            return {{ pendingWhole: whole[0], pendingFirst: first[0], differ,
                      marked: window.__compare(whole[1], new Uint8Array(whole[1].length).fill(255)) }};
        }}""",
        [moves],
    )
    # Drawn whole, nothing waits; drawn canvas first, the margins wait, yet every frame shown is the same.
    assert pixels["pendingWhole"] == 0 and pixels["pendingFirst"] > 4, pixels
    assert pixels["marked"] > 10_000, pixels
    assert pixels["differ"] == [0] * (len(moves) + 1), pixels
    # Left alone, the margins are filled when the page is idle.
    page.wait_for_function(f"{H}.pendingSlices === 0", timeout=10_000)
    assert page.errors == []


def filtered_widget(n: int = 800) -> tuple[CrafterWidget, Any]:
    frame = synthetic_frame(n, seed=5)
    frame["strategy"] = np.where(frame["source"] == "generated", "caption", "")
    w = CrafterWidget(height=400)
    w.set_frame(frame, thumbnails=synthetic_thumbnails(frame, 16))
    w.set_facets(frame, {"stripes": list(range(0, 60))})
    return w, frame


def python_answers(
    page: Any, hide: dict, mask: np.ndarray, isolated: bool = False, test: bool = False, removed: bool = False
) -> None:
    """What the kernel sends back for a filter command: the view state, the mask, then the result."""
    page.evaluate(
        """([hide, mask, isolated, test, removed]) => { const m = window.__model;
           m.set('filters', {show_test: test, show_removed: removed, isolated, hide});
           m.set('hidden', new DataView(Uint8Array.from(mask).buffer));
           m.emit({type: 'result', name: 'filter', ok: true, message: ''}); }""",
        [hide, mask.astype(np.uint8).tolist(), isolated, test, removed],
    )


def test_a_legend_click_hides_exactly_its_points_before_python_answers(page: Any) -> None:
    w, frame = filtered_widget()
    open_standalone(page, widget_state(w), width=1300)
    labels = frame["label"].to_numpy()
    caption = page.locator("[data-role=filters] details[data-field=strategy] .dcw-value[data-value='caption']")
    page.locator("[data-role=filters] details[data-field=strategy] summary").click()
    n_caption = int((frame["strategy"] == "caption").sum())
    assert caption.locator(".dcw-value-count").inner_text() == str(n_caption)
    frames = handle(page, "h.frames")
    page.locator(".dcw-legend .dcw-toggle[data-field=label][data-value='class 1']").click()
    assert commands(page)[-1]["args"] == {"hide": {"label": ["class 1"]}}
    # No answer from Python yet: the map already hides class 1, and only class 1.
    hidden = np.array(handle(page, "h.hidden"), bool)
    assert hidden.tolist() == (labels == "class 1").tolist()
    page.wait_for_function(f"{H}.frames > {frames}")
    # The counts follow: caption images of class 1 are no longer shown.
    shown = int(((frame["strategy"] == "caption") & (labels != "class 1")).sum())
    assert caption.locator(".dcw-value-count").inner_text() == str(shown)
    # A click on a hidden point does not select it.
    i = int(np.flatnonzero(labels == "class 1")[0])
    sx, sy = handle(page, f"h.dataToScreen({float(frame.x.iloc[i])}, {float(frame.y.iloc[i])})")
    box = page.locator(".dcw-gl").bounding_box()
    page.mouse.click(box["x"] + sx, box["y"] + sy)
    assert i not in handle(page, "h.selection")
    # Python's answer is the same mask: nothing is drawn again.
    page.wait_for_timeout(100)
    frames = handle(page, "h.frames")
    python_answers(page, {"label": ["class 1"]}, labels == "class 1")
    page.wait_for_timeout(100)
    assert handle(page, "h.frames") == frames
    assert np.array(handle(page, "h.hidden"), bool).tolist() == (labels == "class 1").tolist()
    # Alt-click: class 2 alone, at once.
    page.locator(".dcw-legend .dcw-toggle[data-value='class 2']").click(modifiers=["Alt"])
    assert np.array(handle(page, "h.hidden"), bool).tolist() == (labels != "class 2").tolist()
    row = page.locator("[data-role=filters] details[data-field=label] .dcw-value[data-value='class 0']")
    assert not row.locator("input").is_checked()
    # "show all" from the sidebar: everything again, before Python answers.
    page.locator("[data-role=filters] button[data-action=filter-reset]").click()
    assert not any(handle(page, "h.hidden"))
    assert page.errors == []


def test_where_the_browser_cannot_tell_it_waits_for_python(page: Any) -> None:
    w, frame = filtered_widget()
    open_standalone(page, widget_state(w), width=1300)
    labels = frame["label"].to_numpy()
    # Isolate (ids only Python knows) plus class 1 hidden: 100 points shown.
    isolated = np.ones(len(frame), bool)
    isolated[:100] = False
    mask = isolated | (labels == "class 1")
    python_answers(page, {"label": ["class 1"]}, mask, isolated=True)
    assert np.array(handle(page, "h.hidden"), bool).tolist() == mask.tolist()
    # Showing class 1 again: the isolated points of class 1 may show, but the browser cannot tell which,
    # so class 1 stays hidden until Python answers; Python's answer is then drawn.
    page.locator(".dcw-legend .dcw-toggle[data-field=label][data-value='class 1']").click()
    assert commands(page)[-1]["args"] == {"hide": {"label": []}}
    assert np.array(handle(page, "h.hidden"), bool).tolist() == mask.tolist()
    python_answers(page, {}, isolated, isolated=True)
    assert np.array(handle(page, "h.hidden"), bool).tolist() == isolated.tolist()
    # Hiding is always exact: class 3 goes at once, the rest stays as Python had it.
    page.locator(".dcw-legend .dcw-toggle[data-field=label][data-value='class 3']").click()
    assert np.array(handle(page, "h.hidden"), bool).tolist() == (isolated | (labels == "class 3")).tolist()
    assert page.errors == []


def test_show_test_and_show_removed_are_drawn_before_python_answers(page: Any) -> None:
    frame = synthetic_frame(800, seed=6)
    held_out = (np.arange(len(frame)) % 3 == 0) & (frame["source"] == "real").to_numpy()  # real images only
    frame["split"] = np.where(held_out, "test", "pool")
    frame["feedback"] = np.where(np.arange(len(frame)) % 11 == 4, "removed", "")
    w = CrafterWidget(height=400)
    w.set_frame(frame)
    open_standalone(page, widget_state(w), width=1300)
    labels = frame["label"].to_numpy()
    test, removed = (frame["split"] == "test").to_numpy(), (frame["feedback"] == "removed").to_numpy()
    python_answers(page, {}, test | removed)  # the view as a project opens: both hidden

    def hidden() -> list[bool]:
        return np.array(handle(page, "h.hidden"), bool).tolist()

    box = {k: page.locator(f"input[data-filter={k}]") for k in ("show_test", "show_removed")}
    frames = handle(page, "h.frames")
    box["show_test"].click()
    assert commands(page)[-1]["args"] == {"show_test": True}
    # No answer from Python yet: the held-out images show, the removed ones stay hidden.
    assert hidden() == removed.tolist()
    assert box["show_test"].is_checked()
    page.wait_for_function(f"{H}.frames > {frames}")
    # Python's answer is the same mask: nothing is drawn again.
    page.wait_for_timeout(100)
    frames = handle(page, "h.frames")
    python_answers(page, {}, removed, test=True)
    page.wait_for_timeout(100)
    assert handle(page, "h.frames") == frames and hidden() == removed.tolist()
    box["show_removed"].click()
    assert commands(page)[-1]["args"] == {"show_removed": True}
    assert not any(hidden())
    python_answers(page, {}, np.zeros(len(frame), bool), test=True, removed=True)
    # With class 1 hidden from the legend, hiding and showing the test images keeps class 1 hidden.
    page.locator(".dcw-legend .dcw-toggle[data-field=label][data-value='class 1']").click()
    python_answers(page, {"label": ["class 1"]}, labels == "class 1", test=True, removed=True)
    box["show_test"].click()
    assert hidden() == ((labels == "class 1") | test).tolist()
    assert not box["show_test"].is_checked()
    python_answers(page, {"label": ["class 1"]}, (labels == "class 1") | test, removed=True)
    box["show_test"].click()
    assert hidden() == (labels == "class 1").tolist()
    # Under Isolate (ids only Python knows) the held-out images wait for Python's mask.
    python_answers(page, {}, (np.arange(len(frame)) >= 100) | test, isolated=True, removed=True)
    before = hidden()
    box["show_test"].click()
    assert hidden() == before
    assert page.errors == []

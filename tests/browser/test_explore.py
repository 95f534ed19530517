"""The map as a place to explore (issue 22), in Chromium against the fake anywidget model (seconds).

Layout (width, height, full screen, a side panel that scrolls and never squeezes a control, stacking
at narrow widths), filters (clickable legend, a sidebar of fields with counts), colour, the sample
view, labels, the wheel and the status line. What Python does with the commands these controls send
is checked in tests/test_explore_view.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from datacrafter_widget.ui.widget import CrafterWidget

from standalone import open_standalone, synthetic_frame, synthetic_thumbnails, widget_state

XSS = "<img src=x onerror=alert(1)>"


def handle(page: Any, expr: str) -> Any:
    return page.evaluate(f"(() => {{ const h = window.__dcw[window.__dcw.length - 1]; return {expr}; }})()")


def commands(page: Any) -> list[dict]:
    return [m["content"] for m in page.evaluate("window.__model.sent") if m["content"].get("type") == "command"]


def evolved_widget(blocks: int = 8, n: int = 300) -> CrafterWidget:
    """A widget whose side panel holds Generate (strategy "evolved") and many prompt blocks."""
    frame = synthetic_frame(n, seed=4)
    w = CrafterWidget(height=420)
    w.set_frame(frame, thumbnails=synthetic_thumbnails(frame, 16))
    w.strategies = ["class", "caption", "custom", "evolved"]
    w.prompts = {
        f"class {k}": {
            "current": f"a photo of the digit {k} in thick red strokes on a light blue background",
            "history": [{"action": "evolve", "prompt": f"a photo of {k}"}],
        }
        for k in range(blocks)
    }
    return w


# ----------------------------------------------------------------- 1. layout
# A host page whose stylesheet lets flex items shrink below their content (app shells reset min-height to
# 0 so nested flex layouts scroll). Then a side panel taller than the map squeezes its children instead
# of scrolling unless the widget's own rules (flex-shrink: 0 in the side panel, buttons' min-height) hold
# them: without those rules the panels shrink to half their height, their contents overlap and the prompt
# buttons are 7 px tall.
HOST_RESET = "*, *::before, *::after { min-height: 0; min-width: 0; }"


@pytest.mark.parametrize("host_css", ["", HOST_RESET], ids=["plain-page", "host-resets-min-height"])
def test_side_panel_scrolls_and_never_squeezes_a_control(page: Any, host_css: str) -> None:
    w = evolved_widget()
    open_standalone(page, widget_state(w), width=1200, css=host_css)
    page.select_option("select[data-role=strategy]", "evolved")
    go = page.locator("button[data-action=generate]").bounding_box()
    assert go["height"] >= 18, f"the Generate button is squeezed to {go['height']:.1f} px"
    # Each panel keeps its height: its last control lies inside it, and the next panel starts below it.
    boxes = page.evaluate(
        """[...document.querySelectorAll('.dcw-side > *')].filter((p) => p.offsetHeight > 0).map((p) => {
             const r = p.getBoundingClientRect(), last = [...p.querySelectorAll('button, select, textarea')].pop();
             return [r.top, r.bottom, last ? last.getBoundingClientRect().bottom : r.top]; })"""
    )
    assert all(last <= bottom + 1 for _, bottom, last in boxes), f"a panel is squeezed: {boxes}"
    assert all(a[1] <= b[0] + 1 for a, b in zip(boxes, boxes[1:])), f"panels overlap: {boxes}"
    # Every prompt block keeps its buttons at full height; the panel scrolls to reach them.
    heights = page.evaluate(
        "[...document.querySelectorAll('.dcw-prompt button')].map((b) => b.getBoundingClientRect().height)"
    )
    assert len(heights) == 8 * 3 and min(heights) >= 16, heights
    side = page.evaluate(
        "(() => { const s = document.querySelector('.dcw-side'); return [s.scrollHeight, s.clientHeight]; })()"
    )
    assert side[0] > side[1], "the side panel should scroll, not squeeze its children"
    last = page.locator(".dcw-prompt").last.locator("button[data-action=prompt_accept]")
    last.scroll_into_view_if_needed()
    last.click()
    assert commands(page)[-1] == {"type": "command", "name": "prompt_accept", "args": {"class_name": "class 7"}}
    # The side panel is no taller than the map beside it (a page of prompts does not stretch the cell).
    stage = page.locator(".dcw-stage").bounding_box()
    assert page.locator(".dcw-side").bounding_box()["height"] <= stage["height"] + 120


def test_height_is_set_from_python_and_the_map_fills_the_width(page: Any) -> None:
    w = evolved_widget(blocks=2)
    open_standalone(page, widget_state(w), width=1300)
    stage, side = page.locator(".dcw-stage").bounding_box(), page.locator(".dcw-side").bounding_box()
    assert abs(stage["height"] - 420) <= 2
    # map + panel fill the host's 1300 px
    assert side["x"] + side["width"] >= 1300 - 4 and stage["width"] >= 1300 - side["width"] - 30
    page.evaluate("window.__model.set('height', 300)")
    page.wait_for_function("document.querySelector('.dcw-stage').getBoundingClientRect().height < 310")
    assert handle(page, "h.view.height") == 300


def test_full_screen_button_and_python_twin(page: Any) -> None:
    w = evolved_widget(blocks=2)
    open_standalone(page, widget_state(w), width=900)
    page.click("button[data-role=fullscreen]")
    assert page.evaluate("window.__model.get('fullscreen')") is True
    page.wait_for_function("document.querySelector('.dcw-root').getBoundingClientRect().width >= 1390")
    root = page.locator(".dcw-root").bounding_box()
    assert root["x"] <= 1 and root["y"] <= 1 and root["height"] >= 990
    # The map takes the window's height, less the toolbars and the footer.
    page.wait_for_function("window.__dcw[0].view.height > 700")
    # Escape leaves full screen; so does the Python twin.
    page.locator(".dcw-stage").click(position={"x": 5, "y": 5})
    page.keyboard.press("Escape")
    assert page.evaluate("window.__model.get('fullscreen')") is False
    page.wait_for_function("document.querySelector('.dcw-root').getBoundingClientRect().width < 910")
    page.evaluate("window.__model.set('fullscreen', true)")
    page.wait_for_function("document.querySelector('.dcw-root').getBoundingClientRect().width >= 1390")
    page.evaluate("window.__model.set('fullscreen', false)")
    page.wait_for_function("window.__dcw[0].view.height === 420")
    assert page.errors == []


def test_narrow_width_stacks_the_panel_under_the_map(page: Any) -> None:
    w = evolved_widget()
    open_standalone(page, widget_state(w), width=640)
    page.select_option("select[data-role=strategy]", "evolved")
    stage, side = page.locator(".dcw-stage").bounding_box(), page.locator(".dcw-side").bounding_box()
    assert side["y"] >= stage["y"] + stage["height"] - 1, "the panel should sit under the map"
    assert stage["width"] >= 600, f"the map shrank to {stage['width']:.0f} px"
    assert side["width"] >= 600 and side["x"] + side["width"] <= 640 + 10
    assert page.locator("button[data-action=generate]").bounding_box()["height"] >= 18


# ----------------------------------------------------------------- 2. filters
def filtered_widget(n: int = 600) -> tuple[CrafterWidget, Any]:
    frame = synthetic_frame(n, seed=5)
    frame["strategy"] = np.where(frame["source"] == "generated", "caption", "")
    frame.loc[frame.index[:7], "feedback"] = "bad"
    w = CrafterWidget(height=400)
    w.set_frame(frame, thumbnails=synthetic_thumbnails(frame, 16))
    w.set_facets(frame, {"stripes": list(range(0, 60)), XSS: [3, 4]})
    return w, frame


def test_legend_click_hides_a_class_and_alt_or_double_click_solos_it(page: Any) -> None:
    w, frame = filtered_widget()
    open_standalone(page, widget_state(w), width=1300)
    entry = page.locator(".dcw-legend .dcw-toggle[data-field=label][data-value='class 1']")
    entry.click()
    assert commands(page)[-1] == {"type": "command", "name": "filter", "args": {"hide": {"label": ["class 1"]}}}
    # Python's answer: the view state and the hidden mask; the legend and the sidebar follow it.
    hidden = (frame["label"] == "class 1").to_numpy().astype(np.uint8)
    page.evaluate(
        """([mask]) => { const m = window.__model;
           m.set('filters', {show_test: false, show_removed: false, isolated: false, hide: {label: ['class 1']}});
           m.set('hidden', new DataView(Uint8Array.from(mask).buffer)); }""",
        [hidden.tolist()],
    )
    assert "dcw-off" in entry.get_attribute("class")
    row = page.locator("[data-role=filters] details[data-field=label] .dcw-value[data-value='class 1']")
    assert not row.locator("input").is_checked() and "dcw-off" in row.get_attribute("class")
    entry.click()  # again: shown again
    assert commands(page)[-1]["args"] == {"hide": {"label": []}}
    page.locator(".dcw-legend .dcw-toggle[data-value='class 2']").click(modifiers=["Alt"])
    assert commands(page)[-1]["args"] == {"only": {"label": ["class 2"]}}
    page.locator(".dcw-legend .dcw-toggle[data-value='class 3']").dblclick()
    assert commands(page)[-1]["args"] == {"only": {"label": ["class 3"]}}
    # Colour by round: its entries filter rounds.
    page.evaluate("window.__model.set('color_by', 'round')")
    page.locator(".dcw-legend .dcw-toggle[data-field=round][data-value='2']").click()
    assert commands(page)[-1]["args"] == {"hide": {"round": ["2"]}}
    assert page.errors == [] and page.dialogs == []


def test_sidebar_counts_follow_the_selection_and_the_hidden_points(page: Any) -> None:
    w, frame = filtered_widget()
    open_standalone(page, widget_state(w), width=1300)
    panel = page.locator("[data-role=filters]")
    assert panel.is_visible()
    count = lambda field, value: panel.locator(  # noqa: E731
        f"details[data-field={field}] .dcw-value[data-value='{value}'] .dcw-value-count"
    ).inner_text()
    n0 = int((frame["label"] == "class 0").sum())
    assert count("label", "class 0") == str(n0)
    # select 50 points: counts read "shown (selected)"
    sel = np.arange(0, 50)
    page.evaluate("([s]) => window.__model.set('selection', new DataView(Uint32Array.from(s).buffer))", [sel.tolist()])
    k0 = int((frame["label"].to_numpy()[sel] == "class 0").sum())
    assert count("label", "class 0") == f"{n0} ({k0})"
    # the fields people filter by, with their values; feedback "" reads "(none)"
    page.locator("details[data-field=feedback] summary").click()
    assert count("feedback", "bad") == "7 (7)"
    assert "(none)" in panel.locator("details[data-field=feedback]").inner_text()
    page.locator("details[data-field=content_label] summary").click()
    assert count("content_label", "stripes") == "60 (50)"
    assert panel.locator(f"details[data-field=content_label] .dcw-value[data-value='{XSS}']").count() == 1
    assert page.locator("img[src='x']").count() == 0  # label text stays text
    # hiding 100 points changes the shown counts
    mask = np.zeros(len(frame), np.uint8)
    mask[:100] = 1
    page.evaluate("([m]) => window.__model.set('hidden', new DataView(Uint8Array.from(m).buffer))", [mask.tolist()])
    n0_shown = int(((frame["label"] == "class 0").to_numpy() & (mask == 0)).sum())
    assert count("label", "class 0").split(" ")[0] == str(n0_shown)
    # a click in the sidebar sends the filter; alt-click solos; "show all" resets
    panel.locator("details[data-field=strategy] summary").click()
    panel.locator("details[data-field=strategy] .dcw-value[data-value='caption'] input").click()
    assert commands(page)[-1]["args"] == {"hide": {"strategy": ["caption"]}}
    panel.locator("details[data-field=label] .dcw-value[data-value='class 2'] input").click(modifiers=["Alt"])
    assert commands(page)[-1]["args"] == {"only": {"label": ["class 2"]}}
    page.evaluate(
        "window.__model.set('filters', {show_test: false, show_removed: false, isolated: false, hide: {round: ['2']}})"
    )
    panel.locator("button[data-action=filter-reset]").click()
    assert commands(page)[-1]["args"] == {"reset": True}
    assert page.errors == [] and page.dialogs == []


# ----------------------------------------------------------------- 3. colour
def canvas_rgb(page: Any) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    url = page.evaluate("document.querySelector('.dcw-gl').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)


def grid_widget(n: int = 288) -> tuple[CrafterWidget, Any]:
    """Points on a grid, far apart, so each mark's centre shows its own colour."""
    from datacrafter_widget.controller.map_view import column_codes

    frame = synthetic_frame(n, seed=6)
    frame["x"] = np.float32(np.arange(n) % 24)  # ~29 px apart in the fitted view
    frame["y"] = np.float32(np.arange(n) // 24)
    frame["background"] = np.where(np.arange(n) % 2 == 0, "lightblue", "pink")
    frame["brightness"] = np.linspace(0.0, 1.0, n)
    w = CrafterWidget(height=400)
    w.set_frame(frame, thumbnails=synthetic_thumbnails(frame, 16))
    codes, names = column_codes(frame, "background")
    w.color_codes, w.color_names, w.color_by = codes.astype("<u2").tobytes(), names, "background"
    return w, frame


def mark_rgb(page: Any, frame: Any, i: int) -> list[int]:
    page.evaluate("window.__dcw[0].drawNow()")
    sx, sy = handle(page, f"h.dataToScreen({float(frame.x[i])}, {float(frame.y[i])})")
    dpr = page.evaluate("window.devicePixelRatio")
    return canvas_rgb(page)[round(sy * dpr), round(sx * dpr)].tolist()


def test_colour_names_are_drawn_as_themselves_as_filled_marks(page: Any) -> None:
    w, frame = grid_widget()
    open_standalone(page, widget_state(w), width=1000)
    # Zoomed so that thumbnails would show when coloured by class: coloured by a field, filled marks stay.
    assert handle(page, "h.thumbsShown") is False
    for i, want in [(0, [173, 216, 230]), (1, [255, 192, 203])]:
        got = mark_rgb(page, frame, i)
        assert max(abs(a - b) for a, b in zip(got, want)) <= 12, (i, got, want)
    legend = page.locator(".dcw-legend .dcw-toggle[data-field=background]")
    assert legend.count() == 2
    swatch = legend.first.locator(".dcw-swatch").evaluate("(e) => getComputedStyle(e).backgroundColor")
    assert swatch == "rgb(173, 216, 230)"
    # Coloured by class, the same zoom shows thumbnails.
    page.evaluate("window.__model.set('color_by', 'class')")
    page.wait_for_function("window.__dcw[0].thumbsShown === true")


def test_numeric_column_on_a_sequential_scale_with_its_bar(page: Any) -> None:
    w, frame = grid_widget()
    w.color_by = "brightness"
    w.set_color_values(frame["brightness"].to_numpy())
    open_standalone(page, widget_state(w), width=1000)
    bar = page.locator(".dcw-legend [data-role=color-bar]")
    assert bar.count() == 1 and "brightness" in bar.inner_text()
    assert bar.locator(".dcw-bar-min").inner_text() == "0" and bar.locator(".dcw-bar-max").inner_text() == "1"
    assert "linear-gradient" in bar.locator(".dcw-bar").evaluate("(e) => getComputedStyle(e).backgroundImage")
    lo, hi = mark_rgb(page, frame, 0), mark_rgb(page, frame, len(frame) - 1)
    assert max(abs(a - b) for a, b in zip(lo, [68, 1, 84])) <= 12, lo  # the scale's ends
    assert max(abs(a - b) for a, b in zip(hi, [253, 231, 37])) <= 12, hi
    assert page.errors == []


# ----------------------------------------------------------------- 4. the sample view
def test_sample_view_shows_one_image_large_with_its_provenance(page: Any) -> None:
    from PIL import Image

    w, frame = filtered_widget()
    i = int(np.flatnonzero(frame["source"].to_numpy() == "generated")[0])
    tiles = synthetic_thumbnails(frame, 16)
    w.sample_ids = [f"g{k:06d}" for k in range(len(frame))]
    w.on_sample(
        lambda k: {
            "id": w.sample_ids[k],
            "class": frame.label[k],
            "caption": XSS,
            "prompt": "a photo of " + frame.label[k],
            "seed": 1234,
            "round": int(frame["round"][k]),
            "parent": "r000003",
            "feedback": "bad",
            "image": Image.fromarray(tiles[k]).resize((256, 256)),
        }
    )
    w.show_sample(w.sample_ids[i])  # the Python twin, by sample id
    open_standalone(page, widget_state(w), width=1300)
    view = page.locator("[data-role=sample]")
    assert view.is_visible()
    page.wait_for_function("document.querySelector('[data-role=sample-image]').naturalWidth === 256")
    assert page.locator("[data-role=sample-image]").bounding_box()["width"] >= 200
    text = view.inner_text()
    for want in (XSS, "a photo of", "1234", "r000003", "seed", "round", "parent", "feedback", w.sample_ids[i]):
        assert want in text, want
    assert page.locator("img[src='x']").count() == 0 and page.dialogs == []
    view.locator("button[data-action=sample-bad]").click()
    assert commands(page)[-1] == {"type": "command", "name": "gallery_mark", "args": {"index": i, "value": "bad"}}
    view.locator("button[data-action=sample-regenerate]").click()
    assert commands(page)[-1] == {"type": "command", "name": "regenerate", "args": {"index": i}}
    view.locator("button[data-action=sample-close]").click()
    assert page.evaluate("window.__model.get('sample')") == {} and not view.is_visible()
    # A real image cannot be regenerated.
    r = int(np.flatnonzero(frame["source"].to_numpy() == "real")[0])
    w.show_sample(r)
    page.evaluate("([s]) => window.__model.set('sample', s)", [w.sample])
    assert view.locator("button[data-action=sample-regenerate]").is_disabled()
    page.locator(".dcw-root").focus()
    page.keyboard.press("Escape")
    assert not view.is_visible()


def test_gallery_tiles_show_class_and_strategy_and_open_the_sample_view(page: Any) -> None:
    w, frame = filtered_widget()
    gen = np.flatnonzero(frame["source"].to_numpy() == "generated")[:3]
    w.selected = gen
    open_standalone(page, widget_state(w), width=1300)
    tiles = page.locator(".dcw-tile")
    assert tiles.count() == 3
    for k, i in enumerate(gen):
        assert tiles.nth(k).locator(".dcw-tile-caption").inner_text() == f"{frame.label[i]} · caption"
    tiles.first.locator("canvas").click()
    assert commands(page)[-1] == {"type": "command", "name": "show_sample", "args": {"index": int(gen[0])}}
    # A double-click on a point opens it too.
    sx, sy = handle(page, f"h.dataToScreen({float(frame.x[gen[1]])}, {float(frame.y[gen[1]])})")
    box = page.locator(".dcw-gl").bounding_box()
    page.mouse.dblclick(box["x"] + sx, box["y"] + sy)
    sent = commands(page)[-1]
    assert sent["name"] == "show_sample" and 0 <= sent["args"]["index"] < len(frame)


# ----------------------------------------------------------------- 7. wheel, status line, search box, focus
TALL = "body{padding-top:600px !important; padding-bottom:1600px !important}"


def test_wheel_scrolls_the_page_until_the_map_has_focus(page: Any) -> None:
    w, frame = filtered_widget()
    open_standalone(page, widget_state(w), width=1000, css=TALL)
    page.evaluate("window.scrollTo(0, 400)")
    stage = page.locator(".dcw-stage").bounding_box()
    k0 = handle(page, "h.view.k")
    page.mouse.move(stage["x"] + 200, stage["y"] + 150)
    page.mouse.wheel(0, 300)
    page.wait_for_timeout(300)
    assert page.evaluate("window.scrollY") > 400, "the wheel over an unfocused map should scroll the page"
    assert handle(page, "h.view.k") == k0
    assert "click the map" in page.locator("[data-role=hint]").inner_text()
    # Once the map has focus (a click), the wheel zooms and the page stays.
    page.evaluate("window.scrollTo(0, 400)")
    stage = page.locator(".dcw-stage").bounding_box()
    page.mouse.click(stage["x"] + 5, stage["y"] + 5)
    y = page.evaluate("window.scrollY")
    page.mouse.move(stage["x"] + 200, stage["y"] + 150)
    page.mouse.wheel(0, -300)
    page.wait_for_timeout(300)
    assert handle(page, "h.view.k") > k0 and page.evaluate("window.scrollY") == y
    # "modifier": only with Ctrl, even with focus; "always" zooms without either.
    page.evaluate("window.__model.set('wheel_zoom', 'modifier')")
    k1 = handle(page, "h.view.k")
    page.keyboard.down("Control")
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    page.wait_for_timeout(300)
    k2 = handle(page, "h.view.k")
    assert k2 > k1
    page.mouse.wheel(0, -300)  # focused, but no Ctrl: the page scrolls
    page.wait_for_timeout(300)
    assert handle(page, "h.view.k") == k2 and "hold Ctrl" in page.locator("[data-role=hint]").inner_text()


def test_status_line_follows_the_selection_and_the_search_box_is_wide(page: Any) -> None:
    w, frame = filtered_widget()
    w.status = "13 nearest images to 'a red digit'"
    w.selected = range(13)
    open_standalone(page, widget_state(w), width=1000)
    status = page.locator("[data-role=status]")
    assert status.inner_text().startswith("13 nearest")
    page.click("[data-role=clear]")
    assert status.inner_text() == "selection cleared"
    view = handle(page, "h.view")
    poly = [(view["width"] * a, view["height"] * b) for a, b in [(0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.1, 0.9)]]
    n = len(handle(page, f"h.selectPolygon({[list(p) for p in poly]})"))
    assert n > 0 and status.inner_text() == f"{n} images selected"
    # the search box takes the row's free width (up to 220 px) without wrapping the row
    assert page.locator("input[data-role=search]").bounding_box()["width"] >= 120
    assert all(
        box["height"] <= 32
        for box in page.locator(".dcw-toolbar").evaluate_all(
            "els => els.map(e => ({height: e.getBoundingClientRect().height}))"
        )
    )


def test_focus_stays_in_the_widget_when_remove_disables_itself(page: Any) -> None:
    """A focused button that disables itself (Remove empties the selection) or a redrawn prompts panel
    (Evolve) drops the focus to the page, and JupyterLab then scrolls the notebook to its active cell."""
    w = evolved_widget(blocks=3)
    w.selected = [1, 2, 3]
    open_standalone(page, widget_state(w), width=1300, css=TALL)
    page.locator("button[data-action=remove]").click()
    assert commands(page)[-1]["name"] == "remove"
    page.evaluate("window.__model.set('selection', new DataView(new ArrayBuffer(0)))")  # Python's answer
    assert page.locator("button[data-action=remove]").is_disabled()
    assert page.evaluate("document.querySelector('.dcw-root').contains(document.activeElement)")
    # Evolve's result redraws the prompts panel under a focused Accept button.
    page.locator(".dcw-prompt button[data-action=prompt_accept]").first.click()
    page.evaluate("window.__model.set('prompts', {'class 0': {current: 'a new prompt', history: []}})")
    assert page.evaluate("document.querySelector('.dcw-root').contains(document.activeElement)")


# ----------------------------------------------------------------- 5. labels
def test_labels_go_with_hidden_members_avoid_badges_and_stay_inside(page: Any) -> None:
    import pandas as pd

    xs, ys = np.meshgrid(np.arange(6) * 10.0, np.arange(4) * 10.0)
    frame = pd.DataFrame({"x": np.r_[xs.ravel(), [25.0] * 5], "y": np.r_[ys.ravel(), [15.0] * 5]})
    frame["label"], frame["source"] = "a", "real"
    n = len(frame)
    w = CrafterWidget()
    w.set_frame(
        frame,
        thumbnails=synthetic_thumbnails(frame, 16),
        labels=[
            {"text": "piled", "x": 25.0, "y": 15.0, "n": 9, "members": list(range(24, 29))},
            {"text": "left edge wide label", "x": 0.0, "y": 10.0, "n": 5, "members": [0, 6, 12]},
            {"text": "top row", "x": 30.0, "y": 30.0, "n": 4, "members": [18, 19, 20, 21]},
        ],
    )
    open_standalone(page, widget_state(w))
    page.wait_for_function("window.__dcw[0].thumbsShown === true")
    view = handle(page, "h.view")
    size = handle(page, "h.profileFrame().size")
    # Move the "piled" label onto its pile's ×5 badge (the thumbnails' top-right corner).
    labels = page.evaluate("window.__model.get('labels')")
    labels[0]["x"] = 25.0 + (size / 2 - 8) / view["k"]
    labels[0]["y"] = 15.0 + (size / 2 - 6) / view["k"]
    page.evaluate("([l]) => window.__model.set('labels', l)", [labels])
    handle(page, "h.drawNow()")
    placed = {p["text"]: p["box"] for p in handle(page, "h.placedLabels")}
    (badge,) = handle(page, "h.overlaps")
    bx, by = badge["sx"] + size / 2 - 18, badge["sy"] - size / 2  # the badge's box, ~18 x 13 px
    for text, b in placed.items():
        assert not (b[0] < bx + 18 and b[2] > bx and b[1] < by + 13 and b[3] > by), f"{text!r} over the ×5 badge"
    box = placed["left edge wide label"]
    assert box[0] >= 0 and box[2] <= view["width"] and box[1] >= 0 and box[3] <= view["height"], box
    assert "top row" in placed
    # Isolate / a filter hides the top row: its label goes with it.
    mask = np.zeros(n, np.uint8)
    mask[18:22] = 1
    page.evaluate("([m]) => window.__model.set('hidden', new DataView(Uint8Array.from(m).buffer))", [mask.tolist()])
    handle(page, "h.drawNow()")
    assert "top row" not in {p["text"] for p in handle(page, "h.placedLabels")}

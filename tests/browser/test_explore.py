"""The map as a place to explore (issue 22), in Chromium against the fake anywidget model (seconds).

Layout (width, height, full screen, a side panel that scrolls and never squeezes a control, stacking
at narrow widths), filters (clickable legend, a sidebar of fields with counts), colour, the sample
view, labels, the wheel and the status line. What Python does with the commands these controls send
is checked in tests/test_explore_view.py.
"""

from __future__ import annotations

from typing import Any

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
def test_side_panel_scrolls_and_never_squeezes_a_control(page: Any) -> None:
    w = evolved_widget()
    open_standalone(page, widget_state(w), width=1200)
    page.select_option("select[data-role=strategy]", "evolved")
    go = page.locator("button[data-action=generate]").bounding_box()
    assert go["height"] >= 18, f"the Generate button is squeezed to {go['height']:.1f} px"
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

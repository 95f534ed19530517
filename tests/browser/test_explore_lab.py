"""Issue 22's layout in a real JupyterLab: at 900 px with the file browser open, the side panel goes
under the map at full width and the Generate button keeps its height with many evolved prompts."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from conftest import ARTIFACTS, Lab
from test_lab import open_in_lab

HERE = pathlib.Path(__file__).resolve().parent

NARROW_SETUP = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from test_explore import evolved_widget
widget = evolved_widget(blocks=8)
widget
"""


@pytest.mark.slow
def test_generate_keeps_its_height_at_900px_with_the_file_browser_open(page: Any, lab: Lab) -> None:
    page.set_viewport_size({"width": 900, "height": 900})
    root = open_in_lab(page, lab, "narrow_check.ipynb", (NARROW_SETUP,))
    if not page.locator("#filebrowser").is_visible():
        page.locator(".jp-SideBar [data-id=filebrowser]").click()
    page.wait_for_function("document.querySelector('#filebrowser').getBoundingClientRect().width > 150")
    page.select_option("select[data-role=strategy]", "evolved")
    root.scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # the resize observer's frame
    out = root.bounding_box()
    stage, side = root.locator(".dcw-stage").bounding_box(), root.locator(".dcw-side").bounding_box()
    go = root.locator("button[data-action=generate]").bounding_box()
    page.screenshot(path=str(ARTIFACTS / "lab-narrow-900.png"))
    assert go["height"] >= 18, f"the Generate button is {go['height']:.1f} px tall"
    assert side["y"] >= stage["y"] + stage["height"] - 1, "the panel should sit under the map"
    assert side["x"] + side["width"] <= out["x"] + out["width"] + 1, "the side panel is cut off"
    assert stage["width"] >= out["width"] - 10, f"the map is {stage['width']:.0f} px of {out['width']:.0f}"
    heights = page.evaluate(
        "[...document.querySelectorAll('.dcw-prompt button')].map((b) => b.getBoundingClientRect().height)"
    )
    assert min(heights) >= 16, heights

"""The widget in a real JupyterLab: a generated notebook builds a CrafterWidget from synthetic data.

Asserts, through the real kernel: the projection is drawn (canvas pixels), a lasso drawn with
mouse moves selects exactly the points inside the polygon and `widget.selection` in the kernel
equals them, "bad" calls the Python callback with those ids, hover details come back over the
comm, and `<img src=x onerror=alert(1)>` from "model/user" text shows as literal text.

To run against notebooks/quickstart.ipynb with the real controller later: copy it into lab.root,
call run_notebook_in_lab(page, lab, "quickstart.ipynb"), and read `crafter.selection` the same way.
"""

from __future__ import annotations

import base64
import io
import json
import pathlib
import time
from typing import Any

import nbformat
import numpy as np
import pytest
from PIL import Image

from conftest import ARTIFACTS, Lab, run_cell, run_notebook_in_lab
from test_frontend import canvas_ink, draw_lasso, lasso_polygon, points_in_polygon, to_screen

XSS = "<img src=x onerror=alert(1)>"
HERE = pathlib.Path(__file__).resolve().parent

SETUP = f"""
import json, pathlib, sys
import numpy as np
from PIL import Image
sys.path.insert(0, {str(HERE)!r})
from standalone import synthetic_frame, synthetic_thumbnails
from datacrafter_widget.ui.widget import CrafterWidget

XSS = {XSS!r}
frame = synthetic_frame(400, classes=3, seed=3)
frame["label"] = frame["label"].replace({{"class 2": XSS}})
thumbs = synthetic_thumbnails(frame, 32)
np.save("xy.npy", frame[["x", "y"]].to_numpy(np.float32))
EVENTS = pathlib.Path("kernel-events.jsonl")

def record(event, **data):
    with EVENTS.open("a") as fh:
        fh.write(json.dumps({{"event": event, **data}}) + "\\n")

widget = CrafterWidget(height=460)
widget.set_frame(frame, thumbnails=thumbs, labels=[
    {{"text": XSS, "x": float(frame.x.mean()), "y": float(frame.y.max()), "n": 20, "members": list(range(20))}},
])
calls = []
def on_command(name, args):
    ids = widget.selected.tolist()  # the selection is its trait, never an argument
    calls.append((name, ids))
    record("action", name=name, ids=ids)
    return f"{{name}}: {{len(ids)}} images"
widget.on_command(on_command)
widget.observe(lambda change: record("selection", ids=widget.selected.tolist()), names="selection")
widget.on_details(lambda i: {{"caption": XSS, "prompt": "a photo of " + frame.label[i],
                              "image": Image.fromarray(thumbs[i]).resize((128, 128))}})
widget
"""


def make_notebook(path: pathlib.Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell(SETUP.strip()),
        nbformat.v4.new_code_cell('print("SELECTION", json.dumps(widget.selected.tolist()))'),
        nbformat.v4.new_code_cell('print("CALLS", json.dumps(calls))'),
    ]
    nbformat.write(nb, path)


def events(lab: Lab) -> list[dict]:
    path = lab.root / "kernel-events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(predicate: Any, timeout: float = 30.0) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the kernel")


HANDLE = "window.__dcw[window.__dcw.length - 1]"  # the newest widget's test handle on the page


def open_in_lab(
    page: Any,
    lab: Lab,
    name: str,
    cells: tuple[str, ...],
    *,
    timeout_ms: int = 240000,
    frames_timeout: int = 120000,
    ready: str = "",
) -> Any:
    """Write a notebook of these cells, run its first one in JupyterLab and wait for the widget's first
    frame (and `ready`, a JS condition); returns the widget's root element, scrolled into view."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c.strip()) for c in cells]
    nbformat.write(nb, lab.root / name)
    run_notebook_in_lab(page, lab, name, cells=1, timeout_ms=timeout_ms)
    root = page.locator(".dcw-root").last
    condition = f"window.__dcw && {HANDLE}.frames > 0" + (f" && {ready}" if ready else "")
    page.wait_for_function(condition, timeout=frames_timeout)
    root.scroll_into_view_if_needed()
    return root


def printed_json(output: str, tag: str) -> Any:
    line = next(l for l in output.splitlines() if l.startswith(tag + " "))
    return json.loads(line[len(tag) + 1 :])


@pytest.mark.slow
def test_widget_in_jupyterlab(page: Any, lab: Lab) -> None:
    make_notebook(lab.root / "widget_check.ipynb")
    run_notebook_in_lab(page, lab, "widget_check.ipynb", cells=1)
    root = page.locator(".dcw-root")
    root.wait_for(timeout=120000)
    page.wait_for_function(
        "window.__dcw && window.__dcw.length > 0 && window.__dcw[window.__dcw.length - 1].frames > 0"
    )
    root.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab-drawn.png"))

    # 1. drawn: the WebGL canvas has non-background pixels
    assert canvas_ink(page) > 0.01

    # 2. literal text: class name in the legend, label on the canvas, no alert
    assert XSS in page.locator(".dcw-legend").inner_text()
    assert page.locator("img[src='x']").count() == 0

    # 3. lasso -> exactly the points inside, in the kernel too
    handle = "window.__dcw[window.__dcw.length - 1]"
    view = page.evaluate(f"{handle}.view")
    xy = np.load(lab.root / "xy.npy")
    sx, sy = to_screen(xy, view)
    poly = lasso_polygon(view)
    expected = np.flatnonzero(points_in_polygon(sx, sy, poly)).tolist()
    assert 10 < len(expected) < len(xy) - 10
    root.locator("button[data-mode=lasso]").click()
    box = root.locator(".dcw-gl").bounding_box()
    assert page.evaluate(f"{handle}.view") == view, "clicking the toolbar must not move the view"
    draw_lasso(page, box, poly)
    assert page.evaluate(f"{handle}.selection") == expected
    out = run_cell(page, 1)
    assert printed_json(out, "SELECTION") == expected, out
    got = wait_for(lambda: [e for e in events(lab) if e["event"] == "selection"])
    assert got[-1]["ids"] == expected
    page.screenshot(path=str(ARTIFACTS / "lab-lasso.png"))

    # 4. "bad" -> the Python callback with those ids
    root.locator("button[data-action=bad]").click()
    acts = wait_for(lambda: [e for e in events(lab) if e["event"] == "action"])
    assert acts[-1] == {"event": "action", "name": "bad", "ids": expected}
    out = run_cell(page, 2)
    assert printed_json(out, "CALLS") == [["bad", expected]]
    page.wait_for_function("document.querySelector('.dcw-status').textContent.startsWith('bad: ')")

    # 5. Python sets the selection -> highlighted in the browser, no echo back
    n_sel_events = len([e for e in events(lab) if e["event"] == "selection"])
    sends = page.evaluate(f"{handle}.selectionSends")
    page.locator(".jp-Notebook .jp-Cell").nth(2).locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+a")
    page.keyboard.type("widget.selected = [1, 2, 3]")
    run_cell(page, 2)
    page.wait_for_function(f"JSON.stringify({handle}.selection) === '[1,2,3]'")
    time.sleep(1.0)
    sel_events = [e for e in events(lab) if e["event"] == "selection"]
    assert len(sel_events) == n_sel_events + 1 and sel_events[-1]["ids"] == [1, 2, 3]
    assert page.evaluate(f"{handle}.selectionSends") == sends, "the browser echoed a Python-side selection"

    # 6. hover details over the comm, shown as text
    d = np.hypot(sx[:, None] - sx[None, :], sy[:, None] - sy[None, :])
    np.fill_diagonal(d, np.inf)
    ok = np.flatnonzero(
        (d.min(axis=1) > 10) & (sx > 30) & (sx < view["width"] - 200) & (sy > 30) & (sy < view["height"] - 30)
    )
    i = int(ok[0])
    root.locator("button[data-mode=pan]").click()
    box = root.locator(".dcw-gl").bounding_box()
    page.mouse.move(box["x"] + sx[i] + 0.3, box["y"] + sy[i] + 0.3)
    page.wait_for_function(
        "document.querySelector('.dcw-tooltip img') && document.querySelector('.dcw-tooltip img').src.startsWith('blob:')",
        timeout=30000,
    )
    tip = page.locator(".dcw-tooltip").inner_text()
    assert XSS in tip and "a photo of" in tip
    assert page.locator("img[src='x']").count() == 0
    page.screenshot(path=str(ARTIFACTS / "lab-tooltip.png"))
    assert page.dialogs == [], f"an alert fired: {page.dialogs}"


CRAFTER_SETUP = f"""
import json, pathlib
import numpy as np
import datacrafter_widget as dc
from datacrafter_widget.ui.widget import CrafterView

XSS = {XSS!r}
crafter = dc.DataCrafter(dc.starter.colored_digits(shots=5), project="proj")
first = crafter.samples["id"].iloc[0]
crafter.feedback(bad=[first], bad_labels=[XSS])   # user text that the tooltip must show as text
# The view is deterministic for the same samples: save the positions the displayed one uses.
_view = CrafterView(crafter)
np.save("xy.npy", np.frombuffer(_view.widget.xy, "<f4").reshape(-1, 2))
np.save("hidden.npy", np.frombuffer(_view.widget.hidden, np.uint8))
json.dump(crafter.samples["id"].tolist(), open("ids.json", "w"))
crafter
"""


SAVE_VIEW = """
import json
import numpy as np
from datacrafter_widget.ui.widget import CrafterView
# The view is deterministic for the same samples and projection: save the positions it uses
# (the map computed first, so the view shows it at once) and which points filters hide (test images).
crafter.projection
_view = CrafterView(crafter)
np.save("xy.npy", np.frombuffer(_view.widget.xy, "<f4").reshape(-1, 2))
np.save("hidden.npy", np.frombuffer(_view.widget.hidden, np.uint8))
json.dump(crafter.samples["id"].tolist(), open("ids.json", "w"))
"""
SELECTION_CELL = 'import json\nprint("SELECTION", json.dumps(crafter.selection))'
FEEDBACK_CELL = (
    'import json\ns = crafter.samples.set_index("id")\n'
    'print("FEEDBACK", json.dumps(s.loc[crafter.selection, "feedback"].tolist()))'
)


def lasso_and_bad_through_crafter(page: Any, lab: Lab, selection_cell: int, feedback_cell: int, tag: str) -> np.ndarray:
    """With a displayed `crafter`: lasso -> crafter.selection == the ids inside; "bad" -> the store.

    Needs xy.npy / ids.json written by SAVE_VIEW in lab.root; returns the point indices lassoed.
    """
    root = page.locator(".dcw-root").last
    root.wait_for(timeout=120000)
    handle = "window.__dcw[window.__dcw.length - 1]"
    page.wait_for_function(f"window.__dcw && {handle}.frames > 0 && {handle}.thumbsReady")
    root.scroll_into_view_if_needed()
    assert canvas_ink(page) > 0.01
    page.screenshot(path=str(ARTIFACTS / f"{tag}-drawn.png"))
    view = page.evaluate(f"{handle}.view")
    xy = np.load(lab.root / "xy.npy")
    ids = json.loads((lab.root / "ids.json").read_text())
    assert page.evaluate(f"{handle}.n") == len(ids)
    sx, sy = to_screen(xy, view)
    poly = lasso_polygon(view)
    hidden = np.load(lab.root / "hidden.npy").astype(bool)  # held-out test images: off the map by default
    inside = np.flatnonzero(points_in_polygon(sx, sy, poly) & ~hidden)
    assert len(inside) > 5
    root.locator("button[data-mode=lasso]").click()
    draw_lasso(page, root.locator(".dcw-gl").bounding_box(), poly)
    out = run_cell(page, selection_cell)
    assert printed_json(out, "SELECTION") == [ids[i] for i in inside]
    root.locator("button[data-action=bad]").click()
    page.wait_for_function(
        "[...document.querySelectorAll('.dcw-status')].some((e) => e.textContent.startsWith('marked '))", timeout=30000
    )
    out = run_cell(page, feedback_cell)
    assert printed_json(out, "FEEDBACK") == ["bad"] * len(inside)
    page.screenshot(path=str(ARTIFACTS / f"{tag}-bad.png"))
    return inside


@pytest.mark.slow
def test_crafter_in_jupyterlab(page: Any, lab: Lab) -> None:
    """The real controller displayed as a cell's last expression: lasso -> crafter.selection; bad -> store."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell(CRAFTER_SETUP.strip()),
        nbformat.v4.new_code_cell(SELECTION_CELL),
        nbformat.v4.new_code_cell(FEEDBACK_CELL),
    ]
    nbformat.write(nb, lab.root / "crafter_check.ipynb")
    run_notebook_in_lab(page, lab, "crafter_check.ipynb", cells=1)
    lasso_and_bad_through_crafter(page, lab, selection_cell=1, feedback_cell=2, tag="lab-crafter")

    # Hover the first sample: its feedback label (user text) is shown literally.
    root = page.locator(".dcw-root").last
    view = page.evaluate("window.__dcw[window.__dcw.length - 1].view")
    sx, sy = to_screen(np.load(lab.root / "xy.npy"), view)
    root.locator("button[data-mode=pan]").click()
    box = root.locator(".dcw-gl").bounding_box()
    page.mouse.move(box["x"] + sx[0] + 0.3, box["y"] + sy[0] + 0.3)
    page.wait_for_function(
        "document.querySelector('.dcw-tooltip img') && document.querySelector('.dcw-tooltip img').src.startsWith('blob:')",
        timeout=30000,
    )
    assert XSS in page.locator(".dcw-tooltip").inner_text()
    assert page.locator("img[src='x']").count() == 0
    assert page.dialogs == []


QUICKSTART = pathlib.Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def _starter_weights_missing() -> str:
    try:
        import datacrafter_widget as dc

        dc.starter.models()
    except Exception as err:  # noqa: BLE001 - reported as the skip reason
        return str(err)
    return ""


def generate_from_widget(page: Any, strategy: str, per_class: int) -> None:
    """Starts a round with the widget's own controls: the strategy menu, the count box, Generate."""
    page.locator("select[data-role=strategy]").last.select_option(strategy)
    page.locator("input[data-role=per-class]").last.fill(str(per_class))
    page.locator("button[data-action=generate]").last.click()


def skip_without_starter_models() -> None:
    """Skips the calling test when the starter models cannot be loaded, with the reason."""
    missing = _starter_weights_missing()
    if missing:
        pytest.skip(f"starter models not available: {missing}")


@pytest.mark.slow
def test_quickstart_in_jupyterlab(page: Any, lab: Lab) -> None:
    """notebooks/quickstart.ipynb with the starter models, up to the widget; then lasso and "bad"."""
    skip_without_starter_models()
    nb = nbformat.read(QUICKSTART, as_version=4)
    show = next(k for k, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip() == "crafter")
    # Our copy: save the view's positions before the display cell, checks after it.
    nb.cells.insert(show, nbformat.v4.new_code_cell(SAVE_VIEW.strip()))
    show += 1
    nb.cells[show + 1 : show + 1] = [
        nbformat.v4.new_code_cell(SELECTION_CELL),
        nbformat.v4.new_code_cell(FEEDBACK_CELL),
    ]
    nbformat.write(nb, lab.root / "quickstart.ipynb")
    run_notebook_in_lab(page, lab, "quickstart.ipynb", cells=show + 1, timeout_ms=900000)
    lasso_and_bad_through_crafter(page, lab, selection_cell=show + 1, feedback_cell=show + 2, tag="lab-quickstart")
    assert page.dialogs == []


LOOP_SETUP = """
import json
import datacrafter_widget as dc
crafter = dc.DataCrafter(dc.starter.colored_digits(shots=2), models=dc.starter.models(), project="loop")
CLS = crafter.classes[0]
crafter.set_prompt(CLS, "a photo of the digit zero")
crafter.projection   # the map first, so the displayed view shows it at once
crafter
"""
LOOP_STATE = """
s = crafter.samples.set_index("id")
print("SEL", json.dumps(crafter.selection))
print("FB", json.dumps(s.loc[crafter.selection, "feedback"].tolist()))
print("EXPECT", json.dumps([i for i in crafter.search("blue", select=False) if s.at[i, "split"] != "test"]))
"""
LOOP_ROUND = """
r = crafter.rounds[-1]
g = crafter.samples[crafter.samples["round"] == r["round"]]
print("ROUND", json.dumps({"status": r["status"], "labels": sorted(set(g["label"])), "prompts": sorted(set(g["prompt"]))}))
"""
LOOP_REOPEN = """
import json
import datacrafter_widget as dc
again = dc.DataCrafter.open("loop", readonly=True)
print("PROMPTS", json.dumps({c: e["current"] for c, e in again.prompts.items()}))
print("ACTIONS", json.dumps({c: [h["action"] for h in e["history"]] for c, e in again.prompts.items()}))
"""


def _restart_kernel(page: Any, lab: Lab) -> None:
    """Restarts the notebook's kernel through the Jupyter server's REST API (what Kernel > Restart does)."""
    sessions = page.request.get(f"{lab.url}api/sessions?token={lab.token}").json()
    kernel = next(s["kernel"]["id"] for s in sessions if s["path"].endswith("loop_check.ipynb"))
    resp = page.request.post(f"{lab.url}api/kernels/{kernel}/restart?token={lab.token}")
    assert resp.ok, resp.text()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some((e) => /\\|\\s*Idle/.test(e.textContent))",
        timeout=120000,
    )


@pytest.mark.slow
def test_loop_in_jupyterlab_offline(page: Any, lab: Lab) -> None:
    """The widget runs the loop with the network blocked: a prompt edit (kept across a kernel restart),
    generate from the edited ("evolved") prompts, the metrics chart, search, Bad by key, undo, and
    marking one image from the gallery."""
    skip_without_starter_models()
    blocked: list[str] = []

    def only_local(route: Any) -> None:
        if route.request.url.startswith(lab.url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    root = open_in_lab(
        page,
        lab,
        "loop_check.ipynb",
        (LOOP_SETUP, LOOP_STATE, LOOP_ROUND, LOOP_REOPEN),
        timeout_ms=900000,
        frames_timeout=120000,
        ready=f"{HANDLE}.thumbsReady",
    )
    status = root.locator(".dcw-status")

    # 0. At 1400x900 with the file browser open, neither toolbar row wraps and the prompt box fits the panel.
    page.set_viewport_size({"width": 1400, "height": 900})
    page.wait_for_timeout(500)
    for k in range(root.locator(".dcw-toolbar").count()):
        assert root.locator(".dcw-toolbar").nth(k).bounding_box()["height"] <= 32, f"toolbar row {k} wraps"
    text_box = page.locator(".dcw-prompt textarea").last.bounding_box()
    map_box = root.locator(".dcw-map").bounding_box()
    # The side panel is 280 px wide, right of the map, and inside the page.
    assert text_box["width"] <= 280 and text_box["x"] >= map_box["x"] + map_box["width"] - 1
    assert text_box["x"] + text_box["width"] <= 1400
    page.screenshot(path=str(ARTIFACTS / "lab-loop-1400x900.png"))

    # 1. Edit the prompt in the side panel and save it.
    text = page.locator(".dcw-prompt textarea").last
    assert text.input_value() == "a photo of the digit zero"
    text.fill("a photo of the digit zero on a blue background")
    page.locator("button:has-text('Save edit')").last.click()
    page.wait_for_function(
        "[...document.querySelectorAll('.dcw-status')].some((e) => e.textContent.includes('saved'))", timeout=60000
    )

    # 2. Generate from the evolved / edited prompts with the widget's own controls.
    generate_from_widget(page, "evolved", 2)
    page.wait_for_function(
        "[...document.querySelectorAll('.dcw-status')].some((e) => /: (done|failed)/.test(e.textContent))",
        timeout=600000,
    )
    assert ": done" in status.inner_text(), status.inner_text()
    out = run_cell(page, 2)
    rnd = printed_json(out, "ROUND")
    assert rnd == {"status": "done", "labels": ["0"], "prompts": ["a photo of the digit zero on a blue background"]}, (
        rnd
    )

    # 3. The metrics chart renders with every non-local request blocked (SVG drawn in the kernel).
    page.wait_for_function(
        "[...document.querySelectorAll('[data-role=chart] img')].some((i) => i.naturalHeight > 50)", timeout=600000
    )
    chart = root.locator("[data-role=chart] img")
    assert chart.bounding_box()["height"] > 50
    page.screenshot(path=str(ARTIFACTS / "lab-loop-chart.png"), full_page=True)

    # 4. Search selects the matching images on the map (test images are off the map).
    root.locator("input[data-role=search]").fill("blue")
    root.locator("input[data-role=search]").press("Enter")
    page.wait_for_function(
        "[...document.querySelectorAll('.dcw-status')].some((e) => e.textContent.includes('matches for'))",
        timeout=60000,
    )
    out = run_cell(page, 1)
    sel, expect = printed_json(out, "SEL"), printed_json(out, "EXPECT")
    assert sel == expect and len(sel) > 0

    # 5. "b" marks them bad, ctrl+z undoes it (shortcuts go to the focused map).
    page.evaluate("document.querySelector('.dcw-root').focus()")
    page.keyboard.press("b")
    page.wait_for_function(
        "[...document.querySelectorAll('.dcw-status')].some((e) => e.textContent.startsWith('marked bad'))",
        timeout=60000,
    )
    assert printed_json(run_cell(page, 1), "FB") == ["bad"] * len(sel)
    page.evaluate("document.querySelector('.dcw-root').focus()")
    page.keyboard.press("Control+z")
    page.wait_for_function(
        "[...document.querySelectorAll('.dcw-status')].some((e) => e.textContent.startsWith('undo'))", timeout=60000
    )
    assert printed_json(run_cell(page, 1), "FB") == [""] * len(sel)

    # 6. Mark one image from the gallery of the selection.
    tile = root.locator(".dcw-gallery .dcw-tile").first
    index = int(tile.get_attribute("data-index"))
    tile.locator("button[data-mark=bad]").click()
    page.wait_for_function(
        f"document.querySelector('.dcw-gallery .dcw-tile[data-index=\"{index}\"]').dataset.feedback === 'bad'",
        timeout=60000,
    )
    fb = printed_json(run_cell(page, 1), "FB")
    assert fb.count("bad") == 1
    page.screenshot(path=str(ARTIFACTS / "lab-loop-gallery.png"), full_page=True)

    # 7. The prompt edit survives a kernel restart: it is in the project's prompts.json.
    _restart_kernel(page, lab)
    out = run_cell(page, 3)
    assert printed_json(out, "PROMPTS") == {"0": "a photo of the digit zero on a blue background"}
    assert printed_json(out, "ACTIONS") == {"0": ["edit", "edit"]}
    assert not [u for u in blocked if "cdn" in u or "jsdelivr" in u], blocked
    assert page.dialogs == []


EVOLVE_SETUP = """
import json
import datacrafter_widget as dc
crafter = dc.DataCrafter(dc.starter.colored_digits(shots=2), models=dc.starter.models(), project="evolve")
CLS = crafter.classes[3]
crafter.projection   # the map first, so the displayed view shows it at once
crafter
"""
EVOLVE_SELECT = """
s = crafter.samples
crafter.selection = s[(s["label"] == CLS) & (s["split"] != "test")]["id"].tolist()
try:
    crafter.evolve(classes=[CLS], progress=False)   # the same call the Evolve button makes, for its message
except Exception as err:
    print("ERROR", json.dumps(str(err)))
print("SEL", json.dumps(crafter.selection))
print("CLS", json.dumps(CLS))
"""


@pytest.mark.slow
def test_evolve_before_feedback_shows_the_whole_error(page: Any, lab: Lab) -> None:
    """Issue 11, Broken 4: Evolve with no feedback yet. The footer shows the controller's whole error
    (no "…", not clipped), and nothing on the page stays at "evolving prompts for 3"."""
    skip_without_starter_models()
    root = open_in_lab(
        page, lab, "evolve_check.ipynb", (EVOLVE_SETUP, EVOLVE_SELECT), timeout_ms=900000, frames_timeout=120000
    )
    handle = HANDLE
    out = run_cell(page, 1)
    error, sel, cls = printed_json(out, "ERROR"), printed_json(out, "SEL"), printed_json(out, "CLS")
    assert "no feedback yet" in error and len(sel) == 2 and cls == "3", out
    page.wait_for_function(f"{handle}.selection.length === 2", timeout=30000)
    evolve = root.locator("button[data-action=evolve]")
    assert not evolve.is_disabled()
    evolve.click()
    status = root.locator(".dcw-status")
    page.wait_for_function(
        "[...document.querySelectorAll('.dcw-status')].some((e) => e.textContent.includes('failed'))", timeout=120000
    )
    page.wait_for_timeout(1000)  # any late progress update would arrive by now
    text = status.inner_text()
    assert text == f"evolving prompts for 3 failed: {error}", text
    assert "…" not in text  # (the message itself may contain "[...]", as in feedback(bad_labels=[...]))
    # Readable as a whole: not clipped by its box, no ellipsis style, and inside the widget.
    geo = status.evaluate(
        """(e) => { const cs = getComputedStyle(e), r = e.getBoundingClientRect(), p = e.closest('.dcw-root').getBoundingClientRect();
            return {sw: e.scrollWidth, cw: e.clientWidth, sh: e.scrollHeight, ch: e.clientHeight, overflow: cs.textOverflow,
                    clamp: cs.webkitLineClamp, inside: r.left >= p.left - 1 && r.right <= p.right + 1 && r.bottom <= p.bottom + 1,
                    visible: r.width > 0 && r.height > 0}; }"""
    )
    assert geo["visible"] and geo["inside"], geo
    assert geo["sw"] <= geo["cw"] + 1 and geo["sh"] <= geo["ch"] + 1, geo
    assert geo["overflow"] != "ellipsis" and geo["clamp"] in ("none", "", None), geo
    # No other visible text (progress bar, side panel) still says the evolution is running.
    stale = page.evaluate(
        """() => [...document.querySelectorAll('body *')].filter((e) => {
              const own = [...e.childNodes].filter((c) => c.nodeType === 3).map((c) => c.textContent).join('');
              return own.includes('evolving prompts') && !own.includes('failed') && e.getClientRects().length > 0
                     && getComputedStyle(e).visibility !== 'hidden';
            }).map((e) => e.className + ': ' + e.textContent)"""
    )
    assert stale == [], stale
    assert not root.locator(".dcw-progress").is_visible()
    assert page.locator("button[data-action=generate]").last.is_enabled()
    page.screenshot(path=str(ARTIFACTS / "lab-evolve-error.png"))
    assert page.dialogs == []


COLOR_SETUP = """
import json
import numpy as np
import datacrafter_widget as dc
from datacrafter_widget.ui.widget import CrafterView
crafter = dc.DataCrafter(dc.starter.colored_digits(shots=5), project="colour")
crafter.projection
_view = CrafterView(crafter)   # deterministic: the displayed view uses the same positions
np.save("xy.npy", np.frombuffer(_view.widget.xy, "<f4").reshape(-1, 2))
np.save("hidden.npy", np.frombuffer(_view.widget.hidden, np.uint8))
json.dump({c: crafter.samples[c].astype(str).tolist() for c in ("label", "background", "foreground")},
          open("columns.json", "w"))
crafter
"""
COLOR_STATE = 'print("COLOR", json.dumps(crafter.view.color_by))'
COLOR_FROM_PYTHON = 'crafter.color_by("foreground")'


def _point_colours(page: Any, lab: Lab) -> tuple[np.ndarray, np.ndarray]:
    """(indices, RGB at the centre of each isolated visible point) read from the WebGL canvas, in marks mode."""
    handle = "window.__dcw[window.__dcw.length - 1]"
    for _ in range(8):  # zoom out around the centre until points are drawn as marks (their fill is the colour)
        if not page.evaluate(f"{handle}.thumbsShown"):
            break
        v = page.evaluate(f"{handle}.view")
        cx, cy = v["width"] / 2, v["height"] / 2
        page.evaluate(f"{handle}.setView({v['k'] / 1.6}, {cx - (cx - v['tx']) / 1.6}, {cy - (cy - v['ty']) / 1.6})")
        page.evaluate(f"{handle}.drawNow()")
    assert not page.evaluate(f"{handle}.thumbsShown")
    page.evaluate(f"{handle}.drawNow()")
    view = page.evaluate(f"{handle}.view")
    xy = np.load(lab.root / "xy.npy")
    hidden = np.load(lab.root / "hidden.npy").astype(bool)
    sx, sy = to_screen(xy, view)
    vis = np.flatnonzero(~hidden & (sx > 8) & (sy > 8) & (sx < view["width"] - 8) & (sy < view["height"] - 8))
    d = np.hypot(sx[vis, None] - sx[None, vis], sy[vis, None] - sy[None, vis])
    np.fill_diagonal(d, np.inf)
    iso = vis[d.min(axis=1) > 6]  # marks are at most 10 px wide: no other mark covers these centres
    url = page.evaluate(
        "document.querySelectorAll('.dcw-gl')[document.querySelectorAll('.dcw-gl').length - 1].toDataURL('image/png')"
    )
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)
    dpr = img.shape[1] / view["width"]
    rgb = np.array([img[int(round(sy[i] * dpr)), int(round(sx[i] * dpr))] for i in iso])
    return iso, rgb


def _assert_coloured_by(iso: np.ndarray, rgb: np.ndarray, values: list[str], legend: dict[str, tuple]) -> None:
    """Same value -> same colour, different values -> different colours, and each is its legend swatch's colour."""
    cats = sorted({values[i] for i in iso})
    assert len(cats) >= 3, cats
    for c in cats:
        mine = rgb[[values[i] == c for i in iso]]
        assert np.abs(mine - mine[0]).max() <= 6, (c, mine.tolist())
        assert c in legend, (c, legend)
        assert np.abs(mine[0] - np.array(legend[c])).max() <= 6, (c, mine[0].tolist(), legend[c])
    firsts = [rgb[[values[i] == c for i in iso]][0] for c in cats]
    for a in range(len(cats)):
        for b in range(a + 1, len(cats)):
            assert np.abs(firsts[a] - firsts[b]).max() > 20, (cats[a], cats[b])


def _legend(page: Any) -> dict[str, tuple]:
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('.dcw-legend .dcw-item')].filter((r) => r.querySelector('.dcw-swatch'))
             .map((r) => [r.textContent.trim(), getComputedStyle(r.querySelector('.dcw-swatch')).backgroundColor.match(/\\d+/g).slice(0, 3).map(Number)]))"""
    )


@pytest.mark.slow
def test_colour_by_a_column_in_jupyterlab(page: Any, lab: Lab) -> None:
    """Colour-by chosen in the map's menu recolours the points on the page (pixels, by the column's values)
    and reaches crafter.view; crafter.color_by(...) from a cell moves the menu and recolours again."""
    root = open_in_lab(
        page, lab, "colour_check.ipynb", (COLOR_SETUP, COLOR_STATE, COLOR_FROM_PYTHON), frames_timeout=120000
    )
    columns = json.loads((lab.root / "columns.json").read_text())
    menu = root.locator("select[data-role=color-by]")
    assert menu.input_value() == "class"
    iso, by_class = _point_colours(page, lab)
    assert len(iso) >= 10
    _assert_coloured_by(iso, by_class, columns["label"], _legend(page))

    # 1. The menu: colour by the images' background.
    menu.select_option("background")
    page.wait_for_function(
        "[...document.querySelectorAll('.dcw-legend')].some((e) => e.textContent.includes('lightblue'))", timeout=30000
    )
    iso2, by_bg = _point_colours(page, lab)
    assert iso2.tolist() == iso.tolist()
    _assert_coloured_by(iso, by_bg, columns["background"], _legend(page))
    assert (np.abs(by_bg - by_class).max(axis=1) > 20).mean() > 0.3, "the point colours did not change"
    assert printed_json(run_cell(page, 1), "COLOR") == "background"
    page.screenshot(path=str(ARTIFACTS / "lab-colour-background.png"))

    # 2. The Python twin moves the menu and recolours the page.
    run_cell(page, 2)
    page.wait_for_function(
        "document.querySelectorAll('select[data-role=color-by]')[document.querySelectorAll('select[data-role=color-by]').length - 1].value === 'foreground'",
        timeout=30000,
    )
    page.wait_for_timeout(300)
    _, by_fg = _point_colours(page, lab)
    _assert_coloured_by(iso, by_fg, columns["foreground"], _legend(page))
    assert (np.abs(by_fg - by_bg).max(axis=1) > 20).mean() > 0.3
    assert page.errors == [] and page.dialogs == []


PANEL_SETUP = """
import json
import datacrafter_widget as dc
crafter = dc.DataCrafter(dc.starter.colored_digits(shots=2), project="panel")
CLS = crafter.classes[0]
crafter.set_prompt(CLS, "a photo of a zero")
crafter.set_prompt(CLS, "a photo of a zero, blue")
json.dump(crafter.samples["id"].tolist(), open("ids.json", "w"))
crafter.projection
crafter
"""
PANEL_STATE = """
e = crafter.prompts[CLS]
print("PROMPT", json.dumps({"current": e["current"], "actions": [h["action"] for h in e["history"]]}))
"""
PANEL_PICK = """
s = crafter.samples
PICK = s[s["split"] != "test"]["id"].tolist()[:3]
crafter.selection = PICK
print("PICK", json.dumps(PICK))
"""
PANEL_FEEDBACK = 'print("FB", json.dumps(crafter.samples.set_index("id").loc[PICK, "feedback"].tolist()))'


@pytest.mark.slow
def test_prompt_history_and_remove_undo_in_jupyterlab(page: Any, lab: Lab) -> None:
    """Issue 11, Broken 1 and UX 7: the side panel's Revert and Accept reach the project's prompt history;
    Remove takes images off the map (not drawn, not selectable) and Undo brings them back."""
    root = open_in_lab(
        page, lab, "panel_check.ipynb", (PANEL_SETUP, PANEL_STATE, PANEL_PICK, PANEL_FEEDBACK), frames_timeout=120000
    )
    handle = HANDLE
    statuses = "[...document.querySelectorAll('.dcw-status')].map((e) => e.textContent).join(' | ')"

    # 1. Revert to the first prompt, chosen in the history menu.
    text = page.locator(".dcw-prompt textarea").last
    assert text.input_value() == "a photo of a zero, blue"
    page.locator("select[data-role=prompt-history]").last.select_option(label="1. edit: a photo of a zero")
    page.locator("button:has-text('Revert')").last.click()
    page.wait_for_function(f"{statuses}.includes('reverted')", timeout=60000)
    assert printed_json(run_cell(page, 1), "PROMPT") == {
        "current": "a photo of a zero",
        "actions": ["edit", "edit", "revert"],
    }
    page.wait_for_function(
        "[...document.querySelectorAll('.dcw-prompt textarea')].pop().value === 'a photo of a zero'",
        timeout=30000,
    )
    # 2. Accept keeps it, recorded in the history.
    page.locator("button:has-text('Accept')").last.click()
    page.wait_for_function(f"{statuses}.includes('accepted')", timeout=60000)
    assert printed_json(run_cell(page, 1), "PROMPT")["actions"] == ["edit", "edit", "revert", "accept"]

    # 3. Remove: the images leave the map (hidden, not selectable) and the selection is cleared.
    ids = json.loads((lab.root / "ids.json").read_text())
    pick = printed_json(run_cell(page, 2), "PICK")
    idx = [ids.index(i) for i in pick]
    page.wait_for_function(f"JSON.stringify({handle}.selection) === '{json.dumps(idx, separators=(',', ':'))}'")
    hidden = f"((i) => new Uint8Array({handle}.model.get('hidden').buffer)[i])"
    assert [page.evaluate(f"{hidden}({i})") for i in idx] == [0, 0, 0]
    root.locator("button[data-action=remove]").click()
    page.wait_for_function(f"{statuses}.includes('marked removed: 3 images')", timeout=60000)
    page.wait_for_function(f"[{', '.join(f'{hidden}({i})' for i in idx)}].every((v) => v === 1)", timeout=30000)
    assert page.evaluate(f"{handle}.selection") == []
    v = page.evaluate(f"{handle}.view")
    everything = [[1, 1], [v["width"] - 1, 1], [v["width"] - 1, v["height"] - 1], [1, v["height"] - 1]]
    got = page.evaluate(f"(p) => {handle}.selectPolygon(p)", everything)
    assert got and not set(idx) & set(got)
    assert printed_json(run_cell(page, 3), "FB") == ["removed"] * 3

    # 4. Undo (the toolbar button) restores them.
    root.locator("button[data-action=undo]").click()
    page.wait_for_function(f"{statuses}.includes('undo: 3 images restored')", timeout=60000)
    page.wait_for_function(f"[{', '.join(f'{hidden}({i})' for i in idx)}].every((v) => v === 0)", timeout=30000)
    assert set(idx) <= set(page.evaluate(f"(p) => {handle}.selectPolygon(p)", everything))
    assert printed_json(run_cell(page, 3), "FB") == [""] * 3
    assert page.errors == [] and page.dialogs == []


FIRST_SETUP = """
import json
import datacrafter_widget as dc
# batches of 8 (the starter's own is 64, a whole round here): Cancel then lands between stored batches
crafter = dc.DataCrafter(dc.starter.colored_digits(shots=2), models=dc.starter.models(), project="first", batch_size=8)
crafter   # no map yet: the widget shows at once and computes it in the background
"""
FIRST_ROUND = """
r = crafter.rounds[-1]
print("ROUND", json.dumps({"status": r["status"], "stored": int((crafter.samples["round"] == r["round"]).sum())}))
"""


@pytest.mark.slow
def test_first_map_progress_and_cancel_in_jupyterlab(page: Any, lab: Lab) -> None:
    """Issue 11, UX 3 and 8: a new project's widget shows at once with progress while its map is computed,
    then the map; a Generate shows one progress bar and one Cancel, and after Cancel the status says what
    was kept (no stale "generating"), the progress goes and Generate is available again."""
    skip_without_starter_models()
    root = open_in_lab(
        page, lab, "first_check.ipynb", (FIRST_SETUP, FIRST_ROUND), timeout_ms=900000, frames_timeout=60000
    )
    handle = HANDLE
    status, progress = root.locator(".dcw-status"), root.locator(".dcw-progress")
    # 1. At once: the points (a grid per class) with an indeterminate progress while the map is computed.
    assert page.evaluate(f"{handle}.n") == 320
    assert progress.is_visible(), status.inner_text()
    assert "computing the map of 320 images" in progress.inner_text() + status.inner_text()
    page.screenshot(path=str(ARTIFACTS / "lab-first-progress.png"))
    # 2. Then the map: final status, no progress, content labels placed.
    page.wait_for_function(
        "[...document.querySelectorAll('.dcw-status')].some((e) => e.textContent === '320 images on the map')",
        timeout=600000,
    )
    assert not progress.is_visible()
    page.wait_for_function(f"{handle}.placedLabels.length > 0", timeout=30000)

    # 3. Generate: one progress bar and one Cancel on the whole page; Cancel keeps the finished images.
    generate_from_widget(page, "class", 6)
    page.wait_for_function(
        "(() => { const p = [...document.querySelectorAll('.dcw-progress progress')].pop();"
        " return p && p.offsetParent !== null && p.max > 1 && p.value >= 1; })()",
        timeout=300000,
    )
    # A first batch is stored (its points are on the map): Cancel must keep it, and stop the rest.
    page.wait_for_function(f"{handle}.n > 320", timeout=300000)
    visible = "(sel) => [...document.querySelectorAll(sel)].filter((e) => e.offsetParent !== null).length"
    assert page.evaluate(visible, "progress") == 1
    assert (
        page.evaluate(
            "() => [...document.querySelectorAll('button')].filter((b) => b.offsetParent !== null"
            " && /cancel/i.test(b.textContent)).length"
        )
        == 1
    )
    assert page.locator("button[data-action=generate]").last.is_disabled()
    root.locator("button[data-action=cancel]").click()
    page.wait_for_function(
        "[...document.querySelectorAll('.dcw-status')].some((e) => /cancelled; \\d+ images kept/.test(e.textContent))",
        timeout=300000,
    )
    page.wait_for_timeout(1500)  # nothing may overwrite it afterwards
    text = status.inner_text()
    kept = int(text.split("cancelled; ")[1].split(" images kept")[0])
    assert "cancelled" in text and not progress.is_visible(), text
    assert page.locator("button[data-action=generate]").last.is_enabled()
    rnd = printed_json(run_cell(page, 1), "ROUND")
    assert rnd["status"] == "cancelled" and rnd["stored"] == kept and 0 < kept < 60, (rnd, text)
    assert page.evaluate(f"{handle}.n") == 320 + kept
    page.screenshot(path=str(ARTIFACTS / "lab-first-cancelled.png"))
    assert page.dialogs == []


def _lab_theme(page: Any, name: str, light: bool) -> None:
    """Switches JupyterLab's theme with its own menu: Settings > Theme > name."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Settings").click()
    page.locator(".lm-Menu-itemLabel", has_text="Theme").first.hover()
    page.locator(".lm-Menu-itemLabel", has_text=name).first.click()
    page.wait_for_function(
        f"document.body.dataset.jpThemeLight === '{str(light).lower()}' && document.body.dataset.jpThemeName === {name!r}",
        timeout=30000,
    )
    page.wait_for_timeout(500)


@pytest.mark.slow
def test_dark_theme_in_jupyterlab(page: Any, lab: Lab) -> None:
    """Issue 11, Broken 5, in JupyterLab itself: with its Dark theme the toolbar, count, legend and status
    keep a WCAG contrast >= 4.5 computed from the page, the map is dark and labels are drawn light."""
    from test_frontend import _page_contrast

    make_notebook(lab.root / "theme_check.ipynb")
    run_notebook_in_lab(page, lab, "theme_check.ipynb", cells=1)
    root = page.locator(".dcw-root").last
    handle = "window.__dcw[window.__dcw.length - 1]"
    page.wait_for_function(f"window.__dcw && {handle}.frames > 0", timeout=120000)
    root.scroll_into_view_if_needed()
    try:
        _lab_theme(page, "JupyterLab Dark", light=False)
        page.evaluate(f"{handle}.drawNow()")
        for sel in (
            ".dcw-toolbar button[data-mode=lasso]",
            ".dcw-toolbar button[data-mode=box]",
            ".dcw-count",
            ".dcw-legend .dcw-item span:last-child",
            ".dcw-status",
        ):
            assert _page_contrast(page, sel) >= 4.5, sel
        theme = page.evaluate(f"{handle}.theme")
        assert (
            max(theme["bg"]) <= 40 and 0.2126 * theme["fg"][0] + 0.7152 * theme["fg"][1] + 0.0722 * theme["fg"][2] > 180
        )
        url = page.evaluate("[...document.querySelectorAll('.dcw-gl')].pop().toDataURL('image/png')")
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
        assert img[:5, :5].mean() < 50, "the map stayed a light rectangle"
        page.screenshot(path=str(ARTIFACTS / "lab-theme-dark.png"))
    finally:
        _lab_theme(page, "JupyterLab Light", light=True)  # the lab server is shared by the session's tests


EVOLVE_RUN_SETUP = """
import json
import datacrafter_widget as dc
crafter = dc.DataCrafter(dc.starter.colored_digits(shots=2), models=dc.starter.models(), project="evolved")
CLS = crafter.classes[0]
crafter.projection
crafter
"""
EVOLVE_RUN_SELECT = """
s = crafter.samples
crafter.selection = s[(s["label"] == CLS) & (s["split"] != "test")]["id"].tolist()
print("SEL", json.dumps(crafter.selection))
"""
EVOLVE_RUN_STATE = """
e = crafter.prompts.get(CLS, {})
r = crafter.rounds[-1] if crafter.rounds else {}
g = crafter.samples[crafter.samples["round"] == r.get("round", -1)]
print("STATE", json.dumps({"current": e.get("current"), "actions": [h["action"] for h in e.get("history", [])],
      "round": {"strategy": sorted(set(g["strategy"])), "labels": sorted(set(g["label"])), "prompts": sorted(set(g["prompt"]))}}))
"""


@pytest.mark.slow
def test_evolve_then_generate_evolved_in_jupyterlab(page: Any, lab: Lab) -> None:
    """Issue 11, Broken 2, all from the widget: Good on a class's images, Evolve, the evolved prompt in the
    panel, then Generate with strategy "evolved": the new round uses exactly that prompt for that class."""
    skip_without_starter_models()
    root = open_in_lab(
        page,
        lab,
        "evolved_check.ipynb",
        (EVOLVE_RUN_SETUP, EVOLVE_RUN_SELECT, EVOLVE_RUN_STATE),
        timeout_ms=900000,
        frames_timeout=120000,
    )
    handle = HANDLE
    statuses = "[...document.querySelectorAll('.dcw-status')].map((e) => e.textContent).join(' | ')"
    sel = printed_json(run_cell(page, 1), "SEL")
    page.wait_for_function(f"{handle}.selection.length === {len(sel)}", timeout=30000)
    root.locator("button[data-action=good]").click()
    page.wait_for_function(f"{statuses}.includes('marked good: {len(sel)} images')", timeout=60000)
    root.locator("button[data-action=evolve]").click()
    page.wait_for_function(f"/evolving prompts for 0: (done|failed)/.test({statuses})", timeout=600000)
    assert "evolving prompts for 0: done" in root.locator(".dcw-status").inner_text()
    state = printed_json(run_cell(page, 2), "STATE")
    evolved = state["current"]
    assert evolved and state["actions"] and state["actions"][-1] == "evolved", state
    page.wait_for_function(
        f"[...document.querySelectorAll('.dcw-prompt textarea')].some((t) => t.value === {json.dumps(evolved)})",
        timeout=30000,
    )
    generate_from_widget(page, "evolved", 2)
    page.wait_for_function(f"/round \\d+: (done|failed)/.test({statuses})", timeout=600000)
    assert ": done" in root.locator(".dcw-status").inner_text(), root.locator(".dcw-status").inner_text()
    state = printed_json(run_cell(page, 2), "STATE")
    assert state["round"] == {"strategy": ["evolved"], "labels": ["0"], "prompts": [evolved]}, state
    page.screenshot(path=str(ARTIFACTS / "lab-evolved-generated.png"))
    assert page.dialogs == []


TOOLS_SETUP = """
import json
import numpy as np
import datacrafter_widget as dc
crafter = dc.DataCrafter(dc.starter.colored_digits(shots=2), models=dc.starter.models(), project="tools")
s = crafter.samples
IDS = s["id"].tolist()
TRAIN = s[s["split"] != "test"]["id"].tolist()
SEED = TRAIN[5]
# The 12 nearest images by cosine similarity of the embeddings, computed here apart from the controller.
e = crafter.embeddings().astype(np.float64)
e /= np.linalg.norm(e, axis=1, keepdims=True)
sim = e @ e[IDS.index(SEED)]
sim[IDS.index(SEED)] = -np.inf
near = [IDS[i] for i in np.argsort(-sim, kind="stable") if IDS[i] in set(TRAIN)][:12]
EXPECTED = [SEED] + near  # the 12 nearest on the map (held-out test images are off it)
json.dump({"ids": IDS, "seed": SEED, "expected": EXPECTED}, open("tools.json", "w"))
crafter.projection
crafter
"""
TOOLS_PICK = 'crafter.selection = [SEED]\nprint("PICK", json.dumps(crafter.selection))'
TOOLS_STATE = """
print("STATE", json.dumps({"selection": crafter.selection, "isolate": list(crafter.view.isolate or []),
      "feedback": crafter.samples.set_index("id").loc[EXPECTED, "feedback"].tolist()}))
"""


@pytest.mark.slow
@pytest.mark.skipif(bool(_starter_weights_missing()), reason="starter weights missing")
def test_similar_zoom_isolate_redo_unmark_in_jupyterlab(page: Any, lab: Lab) -> None:
    """Issue 11's map tools through the real kernel: Similar selects the image's nearest neighbours (checked
    against cosine neighbours computed apart); Zoom fits the selection to the canvas; Isolate leaves only
    those images drawn and selectable; Bad, Undo, Redo and Unmark change the feedback on the page and in
    the project."""
    root = open_in_lab(page, lab, "tools_check.ipynb", (TOOLS_SETUP, TOOLS_PICK, TOOLS_STATE), frames_timeout=180000)
    handle = HANDLE
    statuses = "[...document.querySelectorAll('.dcw-status')].map((e) => e.textContent).join(' | ')"
    info = json.loads((lab.root / "tools.json").read_text())
    ids = info["ids"]
    seed = ids.index(info["seed"])
    want = sorted(ids.index(i) for i in info["expected"])
    assert len(want) == 13

    # 1. Similar: the seed and its nearest neighbours become the selection, on the page and in the kernel.
    assert printed_json(run_cell(page, 1), "PICK") == [info["seed"]]
    page.wait_for_function(f"JSON.stringify({handle}.selection) === '[{seed}]'", timeout=30000)
    root.locator("button[data-action=neighbors]").click()
    page.wait_for_function(f"{statuses}.includes('nearest images (CLIP)')", timeout=60000)
    page.wait_for_function(f"{handle}.selection.length > 1", timeout=30000)
    assert sorted(page.evaluate(f"{handle}.selection")) == want
    assert sorted(printed_json(run_cell(page, 2), "STATE")["selection"]) == sorted(info["expected"])

    # 2. Zoom: the selected points fill the canvas (centred, inside it, larger than before).
    xy_js = f"((d) => Array.from(new Float32Array(d.buffer, d.byteOffset, d.byteLength / 4)))({handle}.model.get('xy'))"
    xy = np.array(page.evaluate(xy_js), np.float32).reshape(-1, 2)[want]

    def placed() -> tuple[np.ndarray, np.ndarray, dict]:
        v = page.evaluate(f"{handle}.view")
        sx, sy = to_screen(xy, v)
        return sx, sy, v

    sx0, sy0, v0 = placed()
    root.locator("button[data-role=zoom]").click()
    page.wait_for_timeout(300)
    sx1, sy1, v1 = placed()
    assert v1["k"] > v0["k"], (v0, v1)
    assert sx1.min() >= 0 and sy1.min() >= 0 and sx1.max() <= v1["width"] and sy1.max() <= v1["height"]
    assert (
        abs((sx1.min() + sx1.max()) / 2 - v1["width"] / 2) < 2
        and abs((sy1.min() + sy1.max()) / 2 - v1["height"] / 2) < 2
    )
    pad = 28  # the view's margin around fitted points
    fill0 = max(np.ptp(sx0) / (v0["width"] - 2 * pad), np.ptp(sy0) / (v0["height"] - 2 * pad))
    fill1 = max(np.ptp(sx1) / (v1["width"] - 2 * pad), np.ptp(sy1) / (v1["height"] - 2 * pad))
    assert fill1 > 0.98 and fill1 > fill0, (fill0, fill1)  # edge to edge in one direction
    root.locator("button[data-role=reset]").click()

    # 3. Isolate: only the selected images stay drawn and selectable; Show all brings the rest back.
    hidden = f"Array.from(new Uint8Array({handle}.model.get('hidden').buffer))"
    root.locator("button[data-role=isolate]").click()
    page.wait_for_function(f"{statuses}.includes('showing only the {len(want)} selected')", timeout=60000)
    page.wait_for_function(f"{hidden}.filter((h) => h === 0).length === {len(want)}", timeout=30000)
    shown = np.flatnonzero(np.array(page.evaluate(hidden)) == 0).tolist()
    assert shown == want
    v = page.evaluate(f"{handle}.view")
    everything = [[1, 1], [v["width"] - 1, 1], [v["width"] - 1, v["height"] - 1], [1, v["height"] - 1]]
    assert sorted(page.evaluate(f"(p) => {handle}.selectPolygon(p)", everything)) == want
    assert sorted(printed_json(run_cell(page, 2), "STATE")["isolate"]) == sorted(info["expected"])
    root.locator("button[data-role=isolate]").click()  # now "Show all"
    page.wait_for_function(f"{statuses}.includes('showing every image')", timeout=60000)
    page.wait_for_function(f"{hidden}.filter((h) => h === 0).length > {len(want)}", timeout=30000)
    page.evaluate(
        f"{{ const m = {handle}.model; m.set('selection', new DataView(new Uint32Array({want}).buffer)); m.save_changes(); 0; }}"
    )
    page.wait_for_function(f"{handle}.selection.length === {len(want)}", timeout=30000)

    # 4. Bad, Undo, Redo, Unmark: the page's feedback array and the project follow each step.
    fb = f"((i) => new Uint8Array({handle}.model.get('feedback').buffer)[i])"
    marks = f"[{', '.join(f'{fb}({i})' for i in want)}]"
    n = len(want)
    root.locator("button[data-action=bad]").click()
    page.wait_for_function(f"{marks}.every((v) => v === 2)", timeout=60000)
    assert printed_json(run_cell(page, 2), "STATE")["feedback"] == ["bad"] * n
    root.locator("button[data-action=undo]").click()
    page.wait_for_function(f"{marks}.every((v) => v === 0)", timeout=60000)
    assert printed_json(run_cell(page, 2), "STATE")["feedback"] == [""] * n
    root.locator("button[data-action=redo]").click()
    page.wait_for_function(f"{statuses}.includes('redo: the marks of {n} images applied again')", timeout=60000)
    page.wait_for_function(f"{marks}.every((v) => v === 2)", timeout=60000)
    assert printed_json(run_cell(page, 2), "STATE")["feedback"] == ["bad"] * n
    root.locator("button[data-action=unmark]").click()
    page.wait_for_function(f"{statuses}.includes('unmarked: {n} images')", timeout=60000)
    page.wait_for_function(f"{marks}.every((v) => v === 0)", timeout=60000)
    assert printed_json(run_cell(page, 2), "STATE")["feedback"] == [""] * n
    page.screenshot(path=str(ARTIFACTS / "lab-tools.png"))
    assert page.errors == [] and page.dialogs == []

"""First frame of the map after a JupyterLab display cell, at 50,000 points (a benchmark, not a test).

    python benchmarks/bench_widget_lab.py [--n 50000] [--repeat 2]
    python benchmarks/bench_widget_lab.py --quickstart [--repeat 3]

bench_widget.py measures the front end alone in a bare page. This script measures what a user waits
for in JupyterLab. It starts a real JupyterLab server (tests/browser/conftest.start_lab) and opens a
notebook in headless Chromium. The notebook's first cell makes a synthetic frame and its thumbnails;
that cell is not timed. The script then times the second cell, the display cell
(`CrafterWidget.set_frame`, the widget as the cell's value), from Shift+Enter to two points:
- the widget's first drawn frame (the page's own frame counter);
then, zoomed in 10x on the centre, the time until every point in view shows its thumbnail (asked
for on demand from the kernel).
The time includes building the widget state in the kernel, sending it over the comm, and rendering.
The same run also measures a 1,000-point map as a baseline. WebGL is SwiftShader (CPU), as in the
browser tests.

--quickstart: the quickstart notebook's project instead (the starter kit, 5 shots, one round of class
prompts, in a fresh project folder each time; not timed), then its display cell `crafter`, timed from
Shift+Enter to the first frame (the points in a grid by class while the map is computed) and to the
first usable map (the status says the images are on the map, content labels placed).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
BROWSER_TESTS = ROOT / "tests" / "browser"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BROWSER_TESTS))

from conftest import CHROMIUM, CHROMIUM_ARGS, run_notebook_in_lab, start_lab  # noqa: E402

H = "window.__dcw[window.__dcw.length - 1]"

DATA_CELL = """
import sys
sys.path.insert(0, {tests!r})
from standalone import synthetic_frame, synthetic_thumbnails
from datacrafter_widget.ui.widget import CrafterWidget
frame = synthetic_frame({n}, classes=10, seed=0)
thumbs = synthetic_thumbnails(frame, 32)
"""

DISPLAY_CELL = """
widget = CrafterWidget(height=600)
widget.set_frame(frame, thumbnails=thumbs)
widget
"""


QUICKSTART_CELL = """
import datacrafter_widget as dc
ds = dc.starter.colored_digits(shots=5, spurious=0.9, seed=0)
crafter = dc.DataCrafter(ds, models=dc.starter.models(), project={project!r})
ids = crafter.generate(per_class=10, strategy="class")
"""


def time_quickstart(browser, lab, k: int) -> tuple[float, float, int]:
    """Seconds from Shift+Enter on the quickstart's display cell to the first frame and to the first
    usable map, and the number of images on it."""
    name = f"bench_quickstart_{k}.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell(QUICKSTART_CELL.format(project=f"quickstart_{k}").strip()),
        nbformat.v4.new_code_cell("crafter"),
    ]
    nbformat.write(nb, lab.root / name)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        run_notebook_in_lab(page, lab, name, cells=1, timeout_ms=600000)  # the project and its round, not timed
        page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-InputArea-editor").click()
        t0 = time.perf_counter()
        page.keyboard.press("Shift+Enter")
        page.wait_for_function(f"window.__dcw && window.__dcw.length > 0 && {H}.frames > 0", timeout=600000)
        first = time.perf_counter() - t0
        page.wait_for_function(
            "[...document.querySelectorAll('.dcw-status')].some((e) => / images on the map$/.test(e.textContent))"
            f" && {H}.placedLabels.length > 0",
            timeout=600000,
            polling=20,
        )
        usable = time.perf_counter() - t0
        return first, usable, int(page.evaluate(f"{H}.n"))
    finally:
        context.close()


def time_display(browser, lab, n: int, k: int) -> tuple[float, float]:
    """Seconds from Shift+Enter on the display cell to the first frame, and from a 10x zoom-in to
    the thumbnails in view."""
    name = f"bench_{n}_{k}.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell(DATA_CELL.format(tests=str(BROWSER_TESTS), n=n).strip()),
        nbformat.v4.new_code_cell(DISPLAY_CELL.strip()),
    ]
    nbformat.write(nb, lab.root / name)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        run_notebook_in_lab(page, lab, name, cells=1, timeout_ms=600000)  # the data cell, not timed
        page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-InputArea-editor").click()
        t0 = time.perf_counter()
        page.keyboard.press("Shift+Enter")
        page.wait_for_function(f"window.__dcw && window.__dcw.length > 0 && {H}.frames > 0", timeout=600000)
        first = time.perf_counter() - t0
        v = page.evaluate(f"{H}.view")
        cx, cy = v["width"] / 2, v["height"] / 2
        t1 = time.perf_counter()
        page.evaluate(f"{H}.setView({v['k'] * 10}, {cx - (cx - v['tx']) * 10}, {cy - (cy - v['ty']) * 10})")
        page.wait_for_function(f"{H}.thumbsShown && {H}.thumbsReady", timeout=600000)
        return first, time.perf_counter() - t1
    finally:
        context.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quickstart", action="store_true", help="the quickstart project's first usable map instead")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="dc-bench-lab-") as tmp:
        root = pathlib.Path(tmp)
        with start_lab(root, root / "jupyter.log") as lab, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            if args.quickstart:
                runs = [time_quickstart(browser, lab, k) for k in range(args.repeat)]
                firsts, usables = [r[0] for r in runs], [r[1] for r in runs]
                print(
                    f"quickstart project ({runs[0][2]} images), display cell -> first frame: median "
                    f"{statistics.median(firsts):.2f} s ({', '.join(f'{x:.2f}' for x in firsts)}); -> first usable map "
                    f"(on the map, labels placed): median {statistics.median(usables):.2f} s "
                    f"({', '.join(f'{x:.2f}' for x in usables)})",
                    flush=True,
                )
                browser.close()
                return
            for n in (1_000, args.n):
                runs = [time_display(browser, lab, n, k) for k in range(args.repeat)]
                firsts, atlases = [r[0] for r in runs], [r[1] for r in runs]
                label = "baseline, same run: " if n != args.n else ""
                print(
                    f"{label}{n} points, display cell -> first frame: median {statistics.median(firsts):.2f} s "
                    f"({', '.join(f'{x:.2f}' for x in firsts)}); zoom-in 10x -> thumbnails in view: median "
                    f"{statistics.median(atlases):.2f} s",
                    flush=True,
                )
            browser.close()


if __name__ == "__main__":
    main()

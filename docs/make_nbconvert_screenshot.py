"""The quickstart as `jupyter nbconvert --to html` makes it, opened offline in Chromium.

    python docs/make_nbconvert_screenshot.py [WORKDIR]

Executes notebooks/quickstart.ipynb in WORKDIR (a temporary folder by default) as JupyterLab saves it
(outputs, no widget state), converts it with nbconvert's HTML exporter, opens the file in headless
Chromium with every non-file request refused, and writes docs/images/quickstart-nbconvert-widget.png
(the widget's output: the kernel-drawn map) and docs/images/quickstart-nbconvert-chart.png (the
held-out accuracy chart, SVG drawn in the kernel). Prints what the page tried to load from the network.
"""

import pathlib
import shutil
import sys
import tempfile
import time

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from playwright.sync_api import sync_playwright

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "browser"))
from standalone import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

IMAGES = ROOT / "docs" / "images"
work = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(tempfile.mkdtemp(prefix="dc-nbconvert-"))
work.mkdir(parents=True, exist_ok=True)
shutil.copy(ROOT / "notebooks" / "quickstart.ipynb", work / "quickstart.ipynb")
nb = nbformat.read(work / "quickstart.ipynb", as_version=4)
t = time.time()
NotebookClient(
    nb,
    timeout=3600,
    kernel_name="python3",
    store_widget_state=False,
    allow_errors=True,  # a failing cell shows its error in the export, as it would in a saved notebook
    resources={"metadata": {"path": str(work)}},
).execute()
print(f"executed in {time.time() - t:.0f} s")
nbformat.write(nb, work / "quickstart.ipynb")
html, _ = HTMLExporter().from_notebook_node(nb)
page_file = work / "quickstart.html"
page_file.write_text(html)
print("html", page_file, len(html), "bytes")

refused: list[str] = []
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1100, "height": 900})

    def route(r) -> None:  # type: ignore[no-untyped-def]
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(page_file.as_uri())
    page.wait_for_load_state("load")
    widget = page.locator(".jp-RenderedImage img").first  # the crafter's output: its PNG of the map
    widget.scroll_into_view_if_needed()
    page.wait_for_function("(i) => i.complete && i.naturalWidth > 0", arg=widget.element_handle())
    cell = page.locator(".jp-Cell").filter(has=widget).first
    cell.screenshot(path=str(IMAGES / "quickstart-nbconvert-widget.png"))
    chart = page.locator(".jp-RenderedSVG").last  # the held-out accuracy chart (altair's svg renderer)
    chart.scroll_into_view_if_needed()
    page.locator(".jp-Cell").filter(has=chart).first.screenshot(path=str(IMAGES / "quickstart-nbconvert-chart.png"))
    print(
        "images in the page:",
        page.locator(".jp-RenderedImage img").count(),
        "svg outputs:",
        page.locator(".jp-RenderedSVG").count(),
    )
    browser.close()
print("refused network requests (offline):", refused or "none")

"""Screenshots of the widget over a real project: the CrafterView's own state in the standalone page
(tests/browser/standalone.py, headless Chromium), light and with JupyterLab's Dark theme variables.

    python docs/make_widget_screenshots.py PROJECT OUT.png [HEIGHT] [--explore] [--starter-models]

writes OUT.png and OUT-dark.png (the widget's element only); with --explore also OUT-filtered.png (two
classes hidden from the legend, the sidebar of fields with counts of a selection), OUT-numeric.png
(coloured by a numeric column on the sequential scale with its bar) and OUT-sample.png (the sample view
of a generated image); --starter-models opens the project with dc.starter.models(), so the metrics chart
(below the map) is drawn. docs/images/widget-quickstart*.png: the
quickstart notebook's project after its first round (colored_digits(shots=5, spurious=0.9, seed=0),
starter models, crafter.generate(per_class=10, strategy="class")); docs/images/widget-10k*.png: the
10,300-image project that benchmarks/bench_crafter_map.py builds (kept instead of deleted), height 600.
"""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests/browser"))
import datacrafter_widget as dc  # noqa: E402
from datacrafter_widget.ui.widget import CrafterView  # noqa: E402
from standalone import CHROMIUM, CHROMIUM_ARGS, open_standalone, widget_state  # noqa: E402
from test_frontend import JP_DARK  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

explore = "--explore" in sys.argv
starter = "--starter-models" in sys.argv  # the models the project was made with: metrics and the chart
args = [a for a in sys.argv[1:] if not a.startswith("--")]
project, out, height = args[0], args[1], int(args[2]) if len(args) > 2 else 560
crafter = dc.DataCrafter.open(project, dc.starter.models() if starter else None, readonly=True)
view = CrafterView(crafter)
view.wait()
view.widget.height = height
state = widget_state(view.widget)
print("points", view.widget.n, "labels", len(view.widget.labels), "status", view.widget.status)
H = "window.__dcw[window.__dcw.length - 1]"
with sync_playwright() as p:
    b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    for theme, css in (("", ""), ("-dark", JP_DARK)):
        view.widget.theme = "dark" if theme else "light"  # what the page reports to a kernel: the chart follows
        state = widget_state(view.widget)
        page = b.new_page(viewport={"width": 1100, "height": height + 200})
        srv = open_standalone(page, state, width=1060, timeout_ms=180000, http=True, css=css)
        page.wait_for_timeout(1500)  # thumbnails arrive on demand
        print(
            theme or "light",
            page.evaluate(f"[{H}.thumbsShown, {H}.placedLabels.length, {H}.n]"),
            page.evaluate(f"{H}.timings"),
        )
        page.locator(".dcw-root").screenshot(path=out.replace(".png", theme + ".png"))
        page.close()
        srv.close()
    b.close()
view.widget.theme = "light"


def shot(name: str, prepare, after=None) -> None:
    """One screenshot of the widget after `prepare(view)` changed the kernel side (and `after(page)` the page)."""
    prepare(view)
    st = widget_state(view.widget)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = b.new_page(viewport={"width": 1100, "height": height + 320})
        srv = open_standalone(page, st, width=1060, timeout_ms=180000, http=True)
        page.wait_for_timeout(1500)
        if after is not None:
            after(page)
            page.wait_for_timeout(500)
        page.locator(".dcw-root").screenshot(path=out.replace(".png", f"-{name}.png"))
        print(name, view.widget.status)
        page.close()
        srv.close()
        b.close()


if explore:
    s = crafter.samples
    classes = list(crafter.classes)
    gen = s[s["source"] == "generated"]["id"].tolist()

    def filtered(v: CrafterView) -> None:
        v.widget.run("filter", {"hide": {"label": classes[5:]}})
        v.widget.selected = [k for k, sid in enumerate(v.ids) if sid in set(gen[:40]) and v.visible(sid)]

    def open_fields(page) -> None:
        for field in ("round", "strategy", "feedback"):
            page.locator(f"details[data-field={field}] summary").click()

    shot("filtered", filtered, open_fields)

    def numeric(v: CrafterView) -> None:
        v.widget.run("filter", {"reset": True})
        v.widget.selected = []
        crafter.color_by("seed")

    shot("numeric", numeric)

    def sample(v: CrafterView) -> None:
        crafter.color_by("class")
        v.widget.show_sample(gen[len(gen) // 2])

    shot("sample", sample)

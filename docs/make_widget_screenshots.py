"""Screenshots of the widget over a real project: the CrafterView's own state in the standalone page
(tests/browser/standalone.py, headless Chromium), light and with JupyterLab's Dark theme variables.

    python docs/make_widget_screenshots.py PROJECT OUT.png [HEIGHT]

writes OUT.png and OUT-dark.png (the widget's element only). docs/images/widget-quickstart*.png: the
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

project, out, height = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 560
crafter = dc.DataCrafter.open(project, readonly=True)
view = CrafterView(crafter)
view.wait()
view.widget.height = height
state = widget_state(view.widget)
print("points", view.widget.n, "labels", len(view.widget.labels), "status", view.widget.status)
H = "window.__dcw[window.__dcw.length - 1]"
with sync_playwright() as p:
    b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    for theme, css in (("", ""), ("-dark", JP_DARK)):
        page = b.new_page(viewport={"width": 1100, "height": height + 200})
        srv = open_standalone(page, state, width=1060, timeout_ms=180000, http=True, css=css)
        if state.get("atlas"):
            page.wait_for_function(f"{H}.timings.atlasReady != null", timeout=180000)
        page.wait_for_timeout(500)
        print(
            theme or "light",
            page.evaluate(f"[{H}.thumbsShown, {H}.placedLabels.length, {H}.n]"),
            page.evaluate(f"{H}.timings"),
        )
        page.locator(".dcw-root").screenshot(path=out.replace(".png", theme + ".png"))
        page.close()
        srv.close()
    b.close()

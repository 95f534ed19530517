"""Front-end speed with 50,000 images in headless Chromium (a benchmark, not a test).

Runs the built bundle in a bare page with a fake anywidget model (tests/browser/standalone.py),
so the figures are the widget's own, without JupyterLab or the kernel. Prints:
  - Python: building the 50,000-thumbnail sprite atlas (and its size);
  - time to first render (render() called with the data in the browser -> first frame finished);
  - time until the thumbnail atlas is decoded and uploaded, and the first thumbnail frame;
  - frame time while panning (draw + GPU finish), at the overview (marks) and zoomed in (thumbnails);
  - lasso time over 50,000 points (screen polygon -> grid index -> selection);
Headless Chromium here draws WebGL with SwiftShader (on the CPU), so the frame and upload figures
are upper bounds; the lasso and index figures are plain JavaScript and do not depend on the GPU.

Usage: python benchmarks/bench_widget.py [--n 50000] [--tile 32] [--format auto|png|jpeg] [--primitive auto|quads|points]
                                        [--screenshot DIR]  (PNGs of the overview and a zoomed-in view)
"""

from __future__ import annotations

import argparse
import math
import pathlib
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from datacrafter_widget.ui.widget import CrafterWidget  # noqa: E402
from standalone import CHROMIUM, CHROMIUM_ARGS, open_standalone, synthetic_frame, synthetic_thumbnails, widget_state  # noqa: E402

H = "window.__dcw[window.__dcw.length - 1]"


def thumbnails(frame, tile: int, seed: int = 0) -> np.ndarray:
    """Class-coloured tiles with per-image noise, so the atlas compresses like small photos, not flat colour."""
    rng = np.random.default_rng(seed)
    tiles = synthetic_thumbnails(frame, tile).astype(np.int16)
    tiles += rng.integers(-24, 25, tiles.shape, dtype=np.int16)
    return np.clip(tiles, 0, 255).astype(np.uint8)


def pan_frames(page, steps: int, dx: float, dy: float) -> list[float]:
    return page.evaluate(
        f"""([steps, dx, dy]) => {{
            const h = {H}; const out = [];
            for (let s = 0; s < steps; s++) {{
              const v = h.view; h.setView(v.k, v.tx + dx, v.ty + dy); out.push(h.drawNow());
            }}
            return out;
        }}""",
        [steps, dx, dy],
    )


def zoom_frames(page, steps: int, factor: float) -> list[float]:
    """Wheel-like zoom steps around the canvas centre, each frame drawn and waited for."""
    return page.evaluate(
        f"""([steps, f]) => {{
            const h = {H}; const out = [];
            for (let s = 0; s < steps; s++) {{
              const v = h.view;
              h.zoomBy(f, v.width / 2, v.height / 2); out.push(h.drawNow());
            }}
            return out;
        }}""",
        [steps, factor],
    )


def summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.1f} ms, p95 {sorted(xs)[max(0, int(0.95 * len(xs)) - 1)]:.1f} ms over {len(xs)} frames"


def lasso_polygon(view: dict, vertices: int = 200) -> list[list[float]]:
    """A wobbly closed lasso covering about half of the canvas, as a person would draw it."""
    cx, cy = view["width"] / 2, view["height"] / 2
    rx, ry = view["width"] * 0.2, view["height"] * 0.25
    return [
        [cx + rx * (1 + 0.1 * math.sin(7 * a)) * math.cos(a), cy + ry * (1 + 0.1 * math.sin(5 * a)) * math.sin(a)]
        for a in np.linspace(0, 2 * math.pi, vertices, endpoint=False)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument(
        "--format",
        choices=["auto", "png", "jpeg"],
        default="auto",
        help="atlas encoding; auto = PNG up to 10,000 thumbnails, JPEG above",
    )
    ap.add_argument(
        "--primitive",
        choices=["auto", "quads", "points"],
        default="auto",
        help="auto = points on software WebGL, instanced quads on a GPU",
    )
    ap.add_argument("--screenshot", default="", help="folder for PNG screenshots of the overview and a zoomed view")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    frame = synthetic_frame(args.n, classes=10, seed=0)
    tiles = thumbnails(frame, args.tile)
    w = CrafterWidget(height=600, primitive=args.primitive)
    t = time.perf_counter()
    rng = np.random.default_rng(1)
    words = ["stripes", "red", "blue", "dotted", "thin", "bold", "night", "grass", "sky", "snow", "wood", "metal"]
    labels = []
    for k, word in enumerate(words):  # content labels on groups of points, as the projection gives them
        members = np.flatnonzero(rng.random(args.n) < 0.02 + 0.01 * (k % 3))
        labels.append(
            {
                "text": word,
                "x": float(frame.x[members].median()),
                "y": float(frame.y[members].median()),
                "n": int(len(members)),
                "members": members.tolist(),
            }
        )
    w.set_frame(frame, labels=labels)
    w.set_thumbnails(tiles, format=args.format)
    build_s = time.perf_counter() - t
    g = w.atlas_grid
    print(
        f"points: {args.n}  atlas: {g['width']}x{g['height']} px, {g['tile']} px tiles, "
        f"{g['format']} {len(w.atlas) / 1e6:.1f} MB  (Python set_frame + build_atlas: {build_s:.2f} s)"
    )

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        t = time.perf_counter()
        server = open_standalone(page, widget_state(w), width=1200, timeout_ms=120_000, http=True)
        page_s = time.perf_counter() - t
        page.wait_for_function(f"{H}.timings.atlasReady != null", timeout=120_000)
        tm = page.evaluate(f"{H}.timings")
        renderer, primitive = page.evaluate(f"[{H}.rendererName, {H}.primitive]")
        print(f"WebGL renderer: {renderer}; drawing with {primitive}")
        print(f"page load incl. fetching state + first frame (wall): {page_s * 1000:.0f} ms")
        print(
            f"time to first render (render() -> first frame, marks): {tm['firstFrame']:.0f} ms "
            f"(grid index build {tm['indexMs']:.1f} ms)"
        )
        print(f"thumbnail atlas decoded + uploaded: {tm['atlasReady']:.0f} ms after render()")

        view = page.evaluate(f"{H}.view")
        shots = pathlib.Path(args.screenshot) if args.screenshot else None
        if shots:
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / f"widget-{args.n}-overview.png"))
        # Baselines measured in this run, on this canvas: a clear alone (software GL's floor per frame), and
        # panning with the pan cache off (every point drawn each frame: the widget before the cache).
        parts = [page.evaluate(f"{H}.profileFrame()") for _ in range(20)]
        page.evaluate(f"{H}.setPanCache(false)")
        uncached = pan_frames(page, 20, 3, 2)
        page.evaluate(f"{H}.setPanCache(null)")
        page.evaluate(f"{H}.setView({view['k']}, {view['tx']}, {view['ty']})")
        overview = pan_frames(page, 40, 3, 2)
        zoom_in = zoom_frames(page, 12, 1.1)
        zoom_out = zoom_frames(page, 12, 1 / 1.1)
        page.wait_for_function(f"!{H}.zooming")
        page.evaluate(f"{H}.dropPanCache()")
        sharp = page.evaluate(f"{H}.drawNow()")  # every point drawn into the cache, then shown
        page.evaluate(f"{H}.setView({view['k']}, {view['tx']}, {view['ty']})")
        # Zoom in 10x around the centre: thumbnails replace marks.
        cx, cy = view["width"] / 2, view["height"] / 2
        k, tx, ty = view["k"] * 10, cx - (cx - view["tx"]) * 10, cy - (cy - view["ty"]) * 10
        page.evaluate(f"{H}.setView({k}, {tx}, {ty})")
        first_thumb = page.evaluate(f"{H}.drawNow()")
        thumbs = page.evaluate(f"{H}.thumbsShown")
        if shots:
            page.screenshot(path=str(shots / f"widget-{args.n}-zoomed.png"))
        zoomed = pan_frames(page, 40, 4, 3)
        print(f"first frame with thumbnails after zoom-in: {first_thumb:.0f} ms (thumbnails shown: {thumbs})")
        print(
            f"baseline, same run: clearing the {view['width']}x{view['height']} canvas: "
            f"median {statistics.median(p['clear'] for p in parts):.1f} ms"
        )
        print(
            f"baseline, same run: pan frame time with the pan cache off (every point drawn) [overview]: {summary(uncached)}"
        )
        for name, xs in ((f"overview, {args.n} marks", overview), ("zoomed, thumbnails", zoomed)):
            print(f"pan frame time [{name}]: {summary(xs)}")
        print(
            f"zoom frame time during a wheel gesture [overview, 10% steps in then out]: {summary(zoom_in + zoom_out)}"
        )
        print(f"sharp frame 160 ms after the gesture's last step (every point drawn anew): {sharp:.1f} ms")

        page.evaluate(f"{H}.setView({view['k']}, {view['tx']}, {view['ty']})")
        poly = lasso_polygon(view)
        times, counts = [], []
        for _ in range(10):
            sel = page.evaluate(f"(poly) => {H}.selectPolygon(poly).length", poly)
            times.append(page.evaluate(f"{H}.timings.lassoMs"))
            counts.append(sel)
        print(
            f"lasso over {args.n} points ({len(poly)}-vertex polygon, {counts[0]} selected): "
            f"median {statistics.median(times):.1f} ms, max {max(times):.1f} ms"
        )
        browser.close()
        server.close()


if __name__ == "__main__":
    main()

"""Front-end speed with 50,000 to 1,000,000 points in headless Chromium (a benchmark, not a test).

Runs the built bundle in a bare page with a fake anywidget model (tests/browser/standalone.py),
so the figures are the widget's own, without JupyterLab; the page's thumbnail requests are answered
by the CrafterWidget in this process (as the kernel would). Prints:
  - Python: set_frame (points, labels) and the thumbnail source (nothing is encoded until asked);
  - time to first render (render() called with the data in the browser -> first frame finished);
  - frame time while panning (draw + GPU finish), at the overview (marks) and zoomed in (thumbnails);
  - a wheel zoom gesture and the sharp frame after it;
  - thumbnails where zoomed in: from the zoom to every point in view showing its thumbnail;
  - lasso time (screen polygon -> grid index -> selection) and a filter toggle (hide a class -> drawn);
  - the page's memory (JS heap; resident memory of Chromium's renderer and GPU processes).
Headless Chromium here draws WebGL with SwiftShader (on the CPU), so the frame and upload figures
are upper bounds; the lasso and index figures are plain JavaScript and do not depend on the GPU.

Usage: python benchmarks/bench_widget.py [--n 50000] [--tile 32] [--format png|jpeg] [--primitive auto|quads|points]
                                        [--screenshot DIR]  (PNGs of the overview and a zoomed-in view)
                                        [--baseline REF]    (the same figures first for the bundle committed
                                                             at git REF, e.g. main, then a before / after table)
"""

from __future__ import annotations

import argparse
import math
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from datacrafter_widget.ui.widget import CrafterWidget  # noqa: E402
from standalone import CHROMIUM, CHROMIUM_ARGS, open_standalone, synthetic_frame, synthetic_thumbnails, widget_state  # noqa: E402

H = "window.__dcw[window.__dcw.length - 1]"


def thumbnail_source(frame, tile: int):
    """Class-coloured tiles with per-image noise (so pages compress like small photos, not flat colour),
    made when asked for: a million tiles are never held at once."""
    base = synthetic_thumbnails(frame.iloc[:0].assign(label=sorted(frame["label"].unique())), tile).astype(np.int16)
    cls = frame["label"].map({c: k for k, c in enumerate(sorted(frame["label"].unique()))}).to_numpy()

    def source(idx: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(int(idx[0]) if len(idx) else 0)
        tiles = base[cls[idx]] + rng.integers(-24, 25, (len(idx), tile, tile, 3), dtype=np.int16)
        return np.clip(tiles, 0, 255).astype(np.uint8)

    return source


def page_memory(page) -> str:
    """The page's JS heap and the resident memory of this browser's renderer and GPU processes."""
    import psutil

    heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : 0")
    rss = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
            if "--type=renderer" in cmd or "--type=gpu-process" in cmd:
                rss += proc.memory_info().rss
        except psutil.Error:
            continue
    return f"JS heap {heap / 2**20:.0f} MiB; renderer + GPU processes resident {rss / 2**20:.0f} MiB"


def thumbs_in_view(page) -> float:
    """Ms from now until every point in view shows its thumbnail (pages asked for and drawn)."""
    t = time.perf_counter()
    try:
        page.wait_for_function(f"{H}.thumbsShown && {H}.thumbsReady", timeout=120_000, polling=5)
    except Exception:
        print(page.evaluate(f"[{H}.thumbsShown, {H}.thumbStats]"))
        raise
    page.evaluate(f"{H}.drawNow()")
    return (time.perf_counter() - t) * 1000


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


def baseline_bundle(ref: str, folder: pathlib.Path) -> pathlib.Path:
    """The widget bundle (widget.js, widget.css) committed at git `ref`, written into `folder`."""
    for name in ("widget.js", "widget.css"):
        data = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{ref}:datacrafter_widget/static/{name}"], capture_output=True, check=True
        ).stdout
        (folder / name).write_bytes(data)
    return folder


def measure(args: argparse.Namespace, state: dict, static: pathlib.Path | None, tag: str) -> dict[str, float]:
    """Every front-end figure for one bundle (the working tree's, or a baseline's); prints them as it goes."""
    from playwright.sync_api import sync_playwright

    out: dict[str, float] = {}
    print(f"--- {tag}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        t = time.perf_counter()
        server = open_standalone(page, state, width=1200, timeout_ms=120_000, http=True, static=static)
        page_s = time.perf_counter() - t
        tm = page.evaluate(f"{H}.timings")
        renderer, primitive = page.evaluate(f"[{H}.rendererName, {H}.primitive]")
        print(f"WebGL renderer: {renderer}; drawing with {primitive}")
        print(f"page load incl. fetching state + first frame (wall): {page_s * 1000:.0f} ms")
        print(
            f"time to first render (render() -> first frame, marks): {tm['firstFrame']:.0f} ms "
            f"(grid index build {tm['indexMs']:.1f} ms)"
        )
        out["first frame (ms)"] = tm["firstFrame"]
        print(f"page memory after the first frame: {page_memory(page)}")

        view = page.evaluate(f"{H}.view")
        shots = pathlib.Path(args.screenshot) if args.screenshot else None
        if shots:
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / f"widget-{args.n}-overview.png"))
        # Baselines measured in this run, on this canvas: a clear alone (software GL's floor per frame), and
        # panning with the pan cache off (every point drawn each frame: the widget before the cache).
        slow = 20 if args.n < 500_000 else 5  # frames that draw every point: ~1.7 s each at a million
        parts = [page.evaluate(f"{H}.profileFrame()") for _ in range(slow)]
        page.evaluate(f"{H}.setPanCache(false)")
        uncached = pan_frames(page, slow, 3, 2)
        page.evaluate(f"{H}.setPanCache(null)")
        page.evaluate(f"{H}.setView({view['k']}, {view['tx']}, {view['ty']})")
        overview = pan_frames(page, 40, 3, 2)
        zoom_in = zoom_frames(page, 12, 1.1)
        zoom_out = zoom_frames(page, 12, 1 / 1.1)
        page.wait_for_function(f"!{H}.zooming")
        sharps = []
        for _ in range(5):  # the sharp frame anew each time (its cached frame dropped): every point drawn
            page.evaluate(f"{H}.dropPanCache()")
            sharps.append(page.evaluate(f"{H}.drawNow()"))
        sharp = statistics.median(sharps)
        page.evaluate(f"{H}.setView({view['k']}, {view['tx']}, {view['ty']})")
        # Zoom in around the centre until thumbnails replace marks: 10x at 100,000 points, as many times
        # more as the points are denser (the same thumbnail size on screen).
        z = 10 * max(1.0, math.sqrt(args.n / 100_000))
        cx, cy = view["width"] / 2, view["height"] / 2
        k, tx, ty = view["k"] * z, cx - (cx - view["tx"]) * z, cy - (cy - view["ty"]) * z
        page.evaluate(f"{H}.setView({k}, {tx}, {ty})")
        first_thumb = thumbs_in_view(page)
        thumbs = page.evaluate(f"{H}.thumbStats")
        if shots:
            page.screenshot(path=str(shots / f"widget-{args.n}-zoomed.png"))
        sharp_thumbs = []
        for _ in range(3):  # the sharp frame zoomed in: every thumbnail in the cached frame drawn anew
            page.evaluate(f"{H}.dropPanCache()")
            sharp_thumbs.append(page.evaluate(f"{H}.drawNow()"))
        zoomed = pan_frames(page, 40, 4, 3)
        page.evaluate(f"{H}.setView({k}, {tx + view['width']}, {ty})")  # a view next to it: new pages
        next_thumb = thumbs_in_view(page)
        print(
            f"thumbnails where zoomed in {z:.0f}x: every point in view shows its thumbnail {first_thumb:.0f} ms after the zoom "
            f"({thumbs['received']} thumbnails asked for and received, {thumbs['visible']} in view); "
            f"panned one screen: {next_thumb:.0f} ms"
        )
        out["thumbnails in view (ms)"] = first_thumb
        print(
            f"baseline, same run: clearing the {view['width']}x{view['height']} canvas: "
            f"median {statistics.median(p['clear'] for p in parts):.1f} ms"
        )
        print(
            f"baseline, same run: pan frame time with the pan cache off (every point drawn) [overview]: {summary(uncached)}"
        )
        for name, xs in ((f"overview, {args.n} marks", overview), ("zoomed, thumbnails", zoomed)):
            print(f"pan frame time [{name}]: {summary(xs)}")
        out["pan median, overview (ms)"] = statistics.median(overview)
        out["pan median, thumbnails (ms)"] = statistics.median(zoomed)
        print(
            f"zoom frame time during a wheel gesture [overview, 10% steps in then out]: {summary(zoom_in + zoom_out)}"
        )
        print(
            f"sharp frame after the gesture (every point drawn anew, 5 times): median {sharp:.1f} ms, "
            f"max {max(sharps):.1f} ms"
        )
        out["sharp frame after a zoom (ms)"] = sharp
        print(f"sharp frame zoomed in {z:.0f}x (thumbnails, 3 times): median {statistics.median(sharp_thumbs):.1f} ms")
        out["sharp frame zoomed in, thumbnails (ms)"] = statistics.median(sharp_thumbs)

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
        out["lasso (ms)"] = statistics.median(times)
        page.evaluate(f"{H}.selectPolygon([], 'replace')")
        toggles = []
        for k in range(6):  # hide class 0, show it again, ...: Python's `hidden` mask arriving -> drawn
            toggles.append(
                page.evaluate(
                    f"""async (hide) => {{
                        const h = {H}; const m = window.__model;
                        const c = m.get("cls"), cls = new Uint16Array(c.buffer, c.byteOffset, c.byteLength >> 1);
                        const mask = new Uint8Array(cls.length);
                        if (hide) for (let i = 0; i < cls.length; i++) mask[i] = cls[i] === 0 ? 1 : 0;
                        const t = performance.now();
                        m.set("hidden", new DataView(mask.buffer));
                        await Promise.resolve();
                        h.drawNow(); return performance.now() - t;
                    }}""",
                    k % 2 == 0,
                )
            )
        print(
            f"filter toggle (hide / show one class of 10, Python's mask arriving -> frame drawn): "
            f"median {statistics.median(toggles):.1f} ms"
        )
        out["filter: mask arrives -> drawn (ms)"] = statistics.median(toggles)
        if page.evaluate(f"Boolean({H}.localFilters)"):
            clicks = []
            for _ in range(6):  # a click on the legend's first class: hidden / shown at once, without Python
                clicks.append(
                    page.evaluate(
                        f"""() => {{
                            const h = {H};
                            const row = h.root.querySelector('.dcw-legend .dcw-toggle[data-field]');
                            const t = performance.now();
                            row.click();
                            h.drawNow(); return performance.now() - t;
                        }}"""
                    )
                )
            print(
                f"filter toggle (a click on the legend's first class -> frame drawn, before Python answers): "
                f"median {statistics.median(clicks):.1f} ms"
            )
            out["filter: legend click -> drawn (ms)"] = statistics.median(clicks)
        else:
            print("filter toggle from a legend click: this bundle redraws only when Python's mask arrives")
        mem = page_memory(page)
        print(f"page memory at the end: {mem}")
        out["memory: renderer + GPU resident (MiB)"] = float(mem.rsplit(" ", 2)[-2])
        browser.close()
        server.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--format", choices=["png", "jpeg"], default="jpeg", help="encoding of the thumbnail pages")
    ap.add_argument(
        "--primitive",
        choices=["auto", "quads", "points"],
        default="auto",
        help="auto = points on software WebGL, instanced quads on a GPU",
    )
    ap.add_argument("--screenshot", default="", help="folder for PNG screenshots of the overview and a zoomed view")
    ap.add_argument("--baseline", default="", help="git ref whose committed bundle is measured first, in this run")
    args = ap.parse_args()

    frame = synthetic_frame(args.n, classes=10, seed=0)
    source = thumbnail_source(frame, args.tile)
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
    w.set_thumbnail_source(source, args.n, size=args.tile, format=args.format)
    build_s = time.perf_counter() - t
    state = widget_state(w)
    sent = sum(len(v) for v in state.values() if isinstance(v, bytes))
    print(
        f"points: {args.n}  (Python set_frame + labels + thumbnail source: {build_s:.2f} s; "
        f"binary state {sent / 1e6:.1f} MB, no thumbnails until asked for)"
    )
    t = time.perf_counter()
    data, _ = w.thumbnail_page(np.arange(256))
    print(
        f"one page of 256 {args.tile} px thumbnails ({args.format}): {len(data) / 1e3:.0f} kB, {(time.perf_counter() - t) * 1000:.0f} ms"
    )
    runs: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            before = measure(args, state, baseline_bundle(args.baseline, pathlib.Path(tmp)), f"before: {args.baseline}")
            runs.append((f"before ({args.baseline})", before))
        runs.append(("after (this tree)", measure(args, state, None, "after: this working tree")))
    if len(runs) == 2:
        (_, before), (_, after) = runs
        print(f"--- {args.n} points, the same run: before ({args.baseline}) -> after (this tree)")
        for name in dict.fromkeys([*before, *after]):
            b, a = before.get(name), after.get(name)
            fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
            ratio = f"  ({b / a:.1f}x)" if b and a else ""
            print(f"  {name:<42} {fmt(b):>9} -> {fmt(a):>9}{ratio}")


if __name__ == "__main__":
    main()

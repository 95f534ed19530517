"""The kernel side of a project's first view once its map exists (issue 26: 500 photos at 512 px), and
the bytes of its thumbnails by photo size (a benchmark, not a test).

    python benchmarks/bench_first_view.py [--photos 500] [--sizes 512 256] [--dir FOLDER]

Per photo size: a folder of photo-like JPEGs (benchmarks/real_size/build.py), imported into a project
with the starter's models, its map computed (not timed: the figure is what the display cell costs
after it). Then, timed: `CrafterView(crafter)` (what `crafter.show()` builds: points, labels, the
thumbnail source) and the display cell's whole output (`display.static_bundle`: the widget plus the
kernel-drawn PNG snapshot and the summary), each in a fresh view; then the thumbnail pages the
browser would receive zoomed in on every image (their bytes: they depend on the tile size, not on
the photos').
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "real_size"))

import datacrafter_widget as dc  # noqa: E402
from build import CLASSES, write_photos  # noqa: E402
from datacrafter_widget.ui import display  # noqa: E402
from datacrafter_widget.ui.view import CrafterView  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=500)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 256])
    ap.add_argument("--dir", default="", help="keep the photos and projects here (default: a temporary folder)")
    args = ap.parse_args()
    models = dc.starter.models()
    with tempfile.TemporaryDirectory(prefix="dc-first-view-") as tmp:
        work = pathlib.Path(args.dir or tmp)
        pages: dict[int, int] = {}
        for size in args.sizes:
            folder = write_photos(work / f"photos-{args.photos}-{size}", -(-args.photos // len(CLASSES)), size, seed=7)
            ds = dc.Dataset.from_folder(folder, check="header")
            crafter = dc.DataCrafter(ds, models=models, project=work / f"project-{size}")
            with crafter:
                t = time.perf_counter()
                crafter.update_projection()
                map_s = time.perf_counter() - t
                t = time.perf_counter()
                view = CrafterView(crafter)
                view_s = time.perf_counter() - t
                view.wait(timeout=600)
                view.widget.close()
                t = time.perf_counter()
                bundle = display.static_bundle(crafter, CrafterView(crafter).widget)
                cell_s = time.perf_counter() - t
                assert "image/png" in bundle and bundle.get("application/vnd.jupyter.widget-view+json")
                w = view.widget
                t = time.perf_counter()
                if hasattr(w, "atlas"):  # the widget before thumbnails on demand: one atlas, sent with the view
                    pages[size], tile = len(w.atlas), w.atlas_grid.get("tile")
                else:
                    n, tile = w.thumb_meta["count"], w.thumb_meta["tile"]
                    pages[size] = sum(len(w.thumbnail_page(range(s, min(n, s + 256)))[0]) for s in range(0, n, 256))
                pages_s = time.perf_counter() - t
                print(
                    f"{len(ds)} photos at {size} px (map {map_s:.1f} s, not part of the view): "
                    f"CrafterView {view_s:.2f} s; the display cell's output (widget + snapshot PNG + summary) "
                    f"{cell_s:.2f} s; every thumbnail as pages, read and encoded when the browser asks: "
                    f"{pages_s:.2f} s, {pages[size] / 1024:.0f} KB at {tile} px",
                    flush=True,
                )
        if len(pages) > 1:
            base = pages[args.sizes[0]]
            print(
                "thumbnail bytes by photo size: "
                + ", ".join(f"{s} px {b / 1024:.0f} KB ({b / base:.2f}x)" for s, b in pages.items())
            )


if __name__ == "__main__":
    main()

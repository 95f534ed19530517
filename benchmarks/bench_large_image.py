"""A very large photo on import: this checkout (downscaled to MAX_IMAGE_SIDE) against a baseline commit.

    python benchmarks/bench_large_image.py [--side 12000] [--baseline 06acf87]

Writes one SIDE x SIDE PNG (a smooth gradient with texture) and one small image into a class folder
tree, then, in a fresh process per version: Dataset.from_folder + DataCrafter(ds, project=...) (the
import into the store, no models). Prints each wall time, the stored PNG size and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN = """
import json, sys, time, warnings
from pathlib import Path
warnings.simplefilter("ignore")
import datacrafter_widget as dc
from datacrafter_widget.controller.crafter import DataCrafter
root, project = Path(sys.argv[1]), Path(sys.argv[2])
t0 = time.perf_counter()
ds = dc.Dataset.from_folder(root)
with DataCrafter(ds, project=project) as c:
    s = c.samples
    big = s[s["label"] == "big"].iloc[0]
    size = c.store.image(big["id"]).size
    png = (project / big["file"]).stat().st_size
print(json.dumps({"seconds": time.perf_counter() - t0, "stored": list(size), "png_bytes": png}))
"""


def export(ref: str, into: Path) -> Path:
    data = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "datacrafter_widget"], capture_output=True, check=True
    )
    (into / "src.tar").write_bytes(data.stdout)
    with tarfile.open(into / "src.tar") as t:
        t.extractall(into, filter="data")
    return into


def make_folder(root: Path, side: int) -> None:
    import numpy as np
    from PIL import Image

    (root / "big").mkdir(parents=True)
    (root / "small").mkdir()
    x = np.linspace(0, 255, side, dtype=np.float32)
    rng = np.random.default_rng(0)
    rows = []
    for start in range(0, side, 1000):  # row blocks: a few hundred MB at most
        n = min(1000, side - start)
        y = np.linspace(start, start + n, n, dtype=np.float32)[:, None] * 255 / side
        block = np.stack([x[None, :] + 0 * y, y + 0 * x[None, :], (x[None, :] + y) / 2], axis=-1)
        block += rng.normal(0, 4, block.shape).astype(np.float32)
        rows.append(np.clip(block, 0, 255).astype(np.uint8))
    Image.MAX_IMAGE_PIXELS = None
    Image.fromarray(np.concatenate(rows)).save(root / "big" / "photo.png", compress_level=1)
    Image.new("RGB", (64, 64), (10, 20, 30)).save(root / "small" / "a.png")


def timed(src: Path, root: Path, project: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(  # cwd: not this checkout, which `python -c` would put first on sys.path
        [sys.executable, "-c", RUN, str(root), str(project)], capture_output=True, text=True, env=env, cwd=root
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=12000)
    ap.add_argument("--baseline", default="06acf87")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        make_folder(tmp_path / "data", args.side)
        made = time.perf_counter() - t0
        (tmp_path / "baseline").mkdir()
        base = export(args.baseline, tmp_path / "baseline")
        results = {
            "baseline": timed(base, tmp_path / "data", tmp_path / "p-base"),
            "this checkout": timed(REPO, tmp_path / "data", tmp_path / "p-new"),
        }
    print(f"one {args.side} x {args.side} PNG + one small image (writing the PNG took {made:.1f} s)")
    for name, r in results.items():
        print(
            f"  {name:<14} {r['seconds']:6.1f} s  stored {r['stored'][0]} x {r['stored'][1]}, "
            f"{r['png_bytes'] / 1e6:.1f} MB PNG in the project"
        )
    print(f"  baseline / this checkout: {results['baseline']['seconds'] / results['this checkout']['seconds']:.1f}x")


if __name__ == "__main__":
    main()

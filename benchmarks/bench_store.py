"""Benchmark the sample store: commit, reopen and compaction times (prints the figures).

    python benchmarks/bench_store.py [--n 2000] [--batch 16]

Baselines measured in the same run on the same images: writing the PNGs plus one parquet file with
pandas (no atomic commits, no log), and reading that parquet back. The store's extra cost is what
crash safety (temp file + rename per commit, fsync when durable) and the append log add.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datacrafter_widget.data.store import SampleStore  # noqa: E402


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), mode="RGB") for _ in range(n)]


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="samples to store")
    ap.add_argument("--batch", type=int, default=16, help="images per add() commit")
    args = ap.parse_args(argv)
    ims = images(args.n)
    rows = [{"label": str(i % 10), "prompt": f"a photo of a {i % 10}", "split": "generated"} for i in range(args.n)]
    figures: dict[str, float] = {}
    root = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        # baseline: PNGs + one parquet written by pandas at the end
        t = time.perf_counter()
        (root / "plain").mkdir()
        for i, im in enumerate(ims):
            im.save(root / "plain" / f"{i}.png")
        pd.DataFrame(rows).to_parquet(root / "plain" / "samples.parquet")
        figures["baseline_write_s"] = time.perf_counter() - t
        pd.read_parquet(root / "plain" / "samples.parquet")  # warm-up: the first read imports the engine
        t = time.perf_counter()
        pd.read_parquet(root / "plain" / "samples.parquet")
        figures["baseline_read_s"] = time.perf_counter() - t

        for durable in (False, True):
            path = root / f"store-{durable}"
            t = time.perf_counter()
            with SampleStore(path, durable=durable) as store:
                for i in range(0, args.n, args.batch):
                    store.add(ims[i : i + args.batch], rows[i : i + args.batch])
            figures[f"store_write_s_durable_{durable}"] = time.perf_counter() - t
        t = time.perf_counter()
        store = SampleStore(root / "store-True", readonly=True)
        assert len(store) == args.n
        figures["store_reopen_s"] = time.perf_counter() - t
        with SampleStore(root / "store-False", durable=False) as store:
            ids = list(store.samples["id"])
            t = time.perf_counter()
            for i in range(0, len(ids), 50):
                store.update(ids[i : i + 50], feedback="bad")
            figures["store_update_s"] = time.perf_counter() - t
            t = time.perf_counter()
            store.compact()
            figures["store_compact_s"] = time.perf_counter() - t
    finally:
        shutil.rmtree(root, ignore_errors=True)

    commits = -(-args.n // args.batch)
    base = figures["baseline_write_s"]
    print(f"{args.n} images of 32x32, {commits} add() commits of {args.batch}")
    print(
        f"baseline (PNGs + one pandas parquet): write {base:.2f}s, read parquet {1000 * figures['baseline_read_s']:.1f} ms"
    )
    for durable in (False, True):
        w = figures[f"store_write_s_durable_{durable}"]
        print(
            f"store durable={durable}: write {w:.2f}s = {w / base:.2f}x baseline, {1000 * w / commits:.1f} ms per commit"
        )
    print(
        f"store reopen ({args.n} samples, readonly): {1000 * figures['store_reopen_s']:.1f} ms "
        f"= {figures['store_reopen_s'] / figures['baseline_read_s']:.1f}x reading the baseline parquet"
    )
    print(
        f"store update (feedback on 50 ids per commit): {figures['store_update_s']:.2f}s; compact: {1000 * figures['store_compact_s']:.1f} ms"
    )
    return figures


if __name__ == "__main__":
    main()

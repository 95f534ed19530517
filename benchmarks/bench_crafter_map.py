"""A 10,000-image project with the starter models: DataCrafter creation and the first map, profiled.

    python benchmarks/bench_crafter_map.py [--n 10000] [--profile] [--threads 2] [--import-only]

Prints the wall time of (1) building the dataset in memory (not the product's cost), (2)
`DataCrafter(ds, models, project)` on a new folder (the import into the store), (3) the first
`crafter.projection` split into its steps: image embeddings, content labels, M2M layout, and (4)
the widget view's first `refresh` with the map ready. --profile prints the top functions by
cumulative time of steps 2 and 3 (cProfile), to show where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def profiled(enabled: bool, fn, *args, **kwargs):
    """Runs fn, returning (result, seconds, top-of-profile text or "")."""
    prof = cProfile.Profile() if enabled else None
    t = time.perf_counter()
    if prof:
        prof.enable()
    out = fn(*args, **kwargs)
    if prof:
        prof.disable()
    dt = time.perf_counter() - t
    text = ""
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(18)
        text = buf.getvalue()
    return out, dt, text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--import-only", action="store_true", help="stop after DataCrafter(...) (the store import)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import pandas as pd

    import datacrafter_widget as dc
    from datacrafter_widget.ui.widget import CrafterView

    t = time.perf_counter()
    base = dc.starter.colored_digits(shots=25, pool_variants=max(3, -(-args.n // 1247)))
    pool = base.pool.frame.iloc[: args.n].reset_index(drop=True)
    train = dc.Dataset(pool[["image", "label", "caption"]], classes=base.classes, name="pool10k")
    ds = dc.Dataset(
        pd.concat([train.frame, base.test.frame[["image", "label", "caption"]]], ignore_index=True),
        classes=base.classes,
        splits={"train": train, "test": base.test},
        name="bench",
    )
    print(
        f"dataset in memory: {len(train)} train + {len(base.test)} test images ({time.perf_counter() - t:.1f} s, not counted)"
    )
    models = dc.starter.models()
    folder = Path(tempfile.mkdtemp(prefix="dc-bench-map-"))
    try:
        crafter, create_s, prof1 = profiled(args.profile, dc.DataCrafter, ds, models=models, project=folder / "p")
        print(f"DataCrafter(ds, models, project) over {len(crafter.samples)} images: {create_s:.1f} s")
        if prof1:
            print(prof1)
        if args.import_only:
            crafter.close()
            return
        ids = crafter.samples["id"].tolist()
        _, emb_s, _ = profiled(False, crafter.embeddings, ids)
        print(f"  first map, step 1: image embeddings ({len(ids)} images): {emb_s:.1f} s")
        _, lab_s, prof2 = profiled(args.profile, crafter.content_labels)
        print(f"  first map, step 2: content labels: {lab_s:.1f} s")
        if prof2:
            print(prof2)
        _, map_s, prof3 = profiled(args.profile, crafter.update_projection)
        print(f"  first map, step 3: M2M layout (embeddings and labels cached): {map_s:.1f} s")
        if prof3:
            print(prof3)
        print(f"first map of a new {len(ids)}-image project, everything included: {emb_s + lab_s + map_s:.1f} s")
        view, view_s, _ = profiled(False, CrafterView, crafter)
        print(f"widget view built with the map ready (points, atlas, labels): {view_s:.1f} s")
        view.wait()
        crafter.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Student benchmark: does the default small CNN learn digit shape from few images?

The student is the product's yardstick (issue 10): with 5 real shots per class it must stay low
(the room generated data can fill), and real extra images (an ideal generator) must lift it far.
Settings on the starter coloured digits, each trained from scratch with the default recipe
(loop/student.py) and evaluated on the seed's test split (300 images, uniform backgrounds):

  pool150        150 real pool images per class, no train shots           target mean >= 0.93
  5shot+200pool  5 shots/class (spurious 0.95) + 200 real pool images     target mean >= 0.80
  5shot          5 shots/class (spurious 0.95), real only                 stays low
  5shot-sp0      5 shots/class (spurious 0.0), real only                  stays low

Pool images are drawn per class without replacement with the seed's own generator (the pool's
scans never appear in any train or test split). Prints every seed, then mean, std, a 95% t
interval and seconds per training (wall time: noisy on a shared machine).

Measured (2026-12-02, default recipe: width 16, 500 steps, batch 64, lr 4e-3, wd 5e-2, dropout 0.2;
seeds 0-4 run as parallel --seed-list processes on a heavily shared 2-core machine, so the wall
times, ~15-20 min per training at ~4% of a core, say nothing about speed; ~55 CPU-seconds each):
pool150 0.957 [0.946, 0.969]; 5shot+200pool 0.836 [0.782, 0.890]; 5shot 0.180 [0.158, 0.202];
5shot-sp0 0.273 [0.243, 0.302] (mean, 95% interval).

Training layout (2026-12-07, `--threads 1 --layouts nchw,channels_last --settings 5shot,5shot+200pool`,
both layouts per seed in one run; benchmarks/results/session9/compute/): channels-last trains 1.52x
(5shot, 10.4 s vs 15.8 s) and 1.45x (5shot+200pool) faster, accuracy within 0.003 of NCHW's
(0.181 vs 0.179; 0.833 vs 0.837), so it is the default.

    python benchmarks/bench_student.py                    # 5 seeds, all four settings
    python benchmarks/bench_student.py --seeds 2 --settings 5shot+200pool --steps 600
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np
import torch
from scipy import stats

import datacrafter_widget as dc
from datacrafter_widget.loop import student as student_module
from datacrafter_widget.loop.student import evaluate, train_student

SETTINGS = {
    # name: (spurious, train shots used?, pool images per class)
    "pool150": (0.95, False, 150),
    "5shot+200pool": (0.95, True, 20),
    "5shot": (0.95, True, 0),
    "5shot-sp0": (0.0, True, 0),
}
TARGETS = {"pool150": ">= 0.93", "5shot+200pool": ">= 0.80", "5shot": "low", "5shot-sp0": "low"}


def training_data(name: str, seed: int):
    spurious, with_train, per_class = SETTINGS[name]
    ds = dc.starter.colored_digits(shots=5, spurious=spurious, seed=seed)
    images, labels = (ds.images(), list(ds.labels)) if with_train else ([], [])
    if per_class:
        rng = np.random.default_rng(seed)
        pool_labels = np.asarray(ds.pool.labels).astype(str)
        idx = [
            int(i) for c in ds.classes for i in rng.choice(np.flatnonzero(pool_labels == c), per_class, replace=False)
        ]
        images += ds.pool.images(idx)
        labels += [pool_labels[i] for i in idx]
    return ds, images, labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    p.add_argument(
        "--seed-list", default="", help="explicit comma list of seeds (e.g. 3,4 to split a run over processes)"
    )
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {list(SETTINGS)}")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--layouts",
        default="channels_last",
        help="comma list of channels_last (the default) and nchw: the CNN's training layout; both = a same-run comparison",
    )
    for opt, typ in (
        ("steps", int),
        ("width", int),
        ("batch-size", int),
        ("lr", float),
        ("weight-decay", float),
        ("dropout", float),
        ("label-smoothing", float),
    ):
        p.add_argument(f"--{opt}", type=typ, default=None, help="override the student's default")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [s for s in names if s not in SETTINGS]
    if bad:
        raise SystemExit(f"unknown setting(s) {bad}: choose from {list(SETTINGS)}")
    overrides = {
        k: getattr(args, k)
        for k in ("steps", "width", "batch_size", "lr", "weight_decay", "dropout", "label_smoothing")
        if getattr(args, k) is not None
    }
    print(
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, overrides {overrides or 'none'}", flush=True
    )
    layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    if not layouts or set(layouts) - {"channels_last", "nchw"}:
        raise SystemExit(f"--layouts {args.layouts!r}: a comma list of channels_last and nchw")
    summary = []
    for name in names:
        for seed in [int(x) for x in args.seed_list.split(",")] if args.seed_list else range(args.seeds):
            ds, images, labels = training_data(name, seed)
            for layout in layouts:  # interleaved per seed, so both layouts see the same machine load
                student_module.CNN_CHANNELS_LAST = layout == "channels_last"
                t = time.perf_counter()
                student = train_student(images, labels, ds.classes, kind="cnn", seed=seed, progress=False, **overrides)
                sec = time.perf_counter() - t
                acc = evaluate(student, ds.test)["accuracy"]
                summary.append((name, layout, seed, acc, sec))
                print(
                    f"{name:14s} {layout:13s} seed {seed}  n_train {len(images):5d}  test acc {acc:.3f}  "
                    f"train {sec:6.1f} s",
                    flush=True,
                )
    print()
    print(
        f"{'setting':14s} {'layout':13s} {'seeds':>5s} {'mean':>6s} {'std':>6s} {'95% interval':>15s} {'s/train':>8s}  target"
    )
    for name in names:
        for layout in layouts:
            rows = [r for r in summary if r[0] == name and r[1] == layout]
            a = np.asarray([r[3] for r in rows])
            std = float(a.std(ddof=1)) if len(a) > 1 else 0.0
            half = float(stats.t.ppf(0.975, len(a) - 1) * std / np.sqrt(len(a))) if len(a) > 1 else float("nan")
            sec = float(np.mean([r[4] for r in rows]))
            print(
                f"{name:14s} {layout:13s} {len(a):5d} {a.mean():6.3f} {std:6.3f}   [{a.mean() - half:.3f}, "
                f"{a.mean() + half:.3f}] {sec:8.1f}  {TARGETS[name]}"
            )
    if len(layouts) == 2:
        for name in names:
            by = {layout: {r[2]: r for r in summary if r[0] == name and r[1] == layout} for layout in layouts}
            seeds = sorted(by["nchw"])
            ratio = np.mean([by["nchw"][s][4] for s in seeds]) / np.mean([by["channels_last"][s][4] for s in seeds])
            diff = np.mean([by["channels_last"][s][3] - by["nchw"][s][3] for s in seeds])
            print(f"{name}: nchw / channels_last seconds {ratio:.2f}x, accuracy channels_last - nchw {diff:+.3f}")


if __name__ == "__main__":
    main()

"""`datacrafter info`: wall time of the command, this checkout against a baseline commit, same run.

    python benchmarks/bench_cli_info.py [--baseline 06acf87] [--runs 5]

The baseline's package files are exported (git archive) to a temp folder; both run as
`python -m datacrafter_widget.app.cli info` in fresh processes, alternating, so machine load hits
both alike. Prints each median, the ratio, and what each imported (torch, pandas).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROBE = (
    "import runpy, sys; sys.argv = ['datacrafter', 'info']; "
    "runpy.run_module('datacrafter_widget.app.cli', run_name='__main__', alter_sys=True)"
)
IMPORTED = "import sys; print('torch' in sys.modules, 'pandas' in sys.modules, file=sys.stderr)"


def export(ref: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "datacrafter_widget"], capture_output=True, check=True
    )
    tar = into / "src.tar"
    tar.write_bytes(archive.stdout)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return into


def timed(root: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", f"import atexit; atexit.register(lambda: exec({IMPORTED!r}))\n{PROBE}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    seconds = time.perf_counter() - t0
    if out.returncode not in (0, None):
        raise SystemExit(f"info failed under {root}:\n{out.stderr[-2000:]}")
    return seconds, out.stderr.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default="06acf87", help="commit to compare with (default: before the change)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = export(args.baseline, Path(tmp))
        times: dict[str, list[float]] = {"baseline": [], "this checkout": []}
        seen: dict[str, str] = {}
        for _ in range(args.runs):
            for name, root in (("baseline", base), ("this checkout", REPO)):
                seconds, imported = timed(root)
                times[name].append(seconds)
                seen[name] = imported
    print(f"datacrafter info, {args.runs} runs each, HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}")
    for name, values in times.items():
        torch_loaded, pandas_loaded = seen[name].split()
        print(
            f"  {name:<14} median {statistics.median(values):6.2f} s  (min {min(values):.2f}, max {max(values):.2f}); "
            f"imported torch: {torch_loaded}, pandas: {pandas_loaded}"
        )
    ratio = statistics.median(times["baseline"]) / statistics.median(times["this checkout"])
    print(f"  baseline / this checkout: {ratio:.1f}x")


if __name__ == "__main__":
    main()

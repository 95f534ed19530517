"""Compute benchmark (issue 25): the product on an idle and on a loaded CPU, old policy against new.

The load is one CPU hog process per core (`python -c "while True: pass"`), started beside each
measurement and stopped after it. "old" is the policy before datacrafter_widget/compute.py, selected
through the policy's own settings (so nothing else differs): OpenMP's default (spinning) wait
policy, torch's default threads (one per core) for every step but the map's layout (1 thread), and
background jobs on as many threads, at normal priority, all at once. "new" is the policy's defaults.
Each measurement runs in a fresh process (the OpenMP wait policy is read once, when torch loads).

Phases (each prints its figures, then the ratios loaded / idle):
  student   `train_student` on the starter kit, 5 shots, the default student (seconds)
  run       `datacrafter run examples/starter.toml` (the quickstart's loop, headless): seconds and
            the longest gap between two outputs (stdout or stderr: log lines and tqdm bars)
  map       the first map of the quickstart project (its 100 generated + 50 real images, embeddings
            stored at generation as in the notebook): the widget's background job, layout and
            content labels computed from scratch ("new-niced": the same job at low priority, niced)

    python benchmarks/bench_compute.py                        # every phase, old and new, idle and loaded
    python benchmarks/bench_compute.py --phases student --policies new --repeat 2
    python benchmarks/bench_compute.py --phases run --timeout 900

Targets (issue 25): student loaded/idle <= 2.0; run loaded/idle <= 2.5 and idle <= 120 s; first map
loaded/idle <= 2.5; no output gap > 10 s idle or > 30 s loaded. On a machine shared with other work
"idle" is not idle: the load average is printed before every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: the policy before compute.py, in the policy's own settings (cores filled in at run time)
OLD = {
    "DATACRAFTER_WAIT_POLICY": "active",
    "DATACRAFTER_THREADS": "{cores}",
    "DATACRAFTER_STUDENT_THREADS": "default",
    "DATACRAFTER_SAMPLER_THREADS": "default",
    "DATACRAFTER_EMBED_THREADS": "default",
    "DATACRAFTER_MAP_THREADS": "1",
    "DATACRAFTER_BACKGROUND_THREADS": "{cores}",
    "DATACRAFTER_BACKGROUND_NICE": "0",
    "DATACRAFTER_BACKGROUND_TURNS": "0",
}

STUDENT = """
import time, json
import datacrafter_widget as dc
from datacrafter_widget.loop.student import train_student
ds = dc.starter.colored_digits(shots=5, spurious=0.9, seed=0)
images, labels = ds.images(), list(ds.labels)
t = time.perf_counter()
train_student(images, labels, ds.classes, seed=0, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "policy": repr(dc.compute.policy())}))
"""

PREPARE = """
import sys
import datacrafter_widget as dc
ds = dc.starter.colored_digits(shots=5, spurious=0.9, seed=0)
crafter = dc.DataCrafter(ds, models=dc.starter.models(), project=sys.argv[1])
crafter.generate(per_class=10, strategy="class", progress=False)
crafter.close()
"""

FIRST_MAP = """
import sys, time, json
import datacrafter_widget as dc
from datacrafter_widget.controller.jobs import Job
models = dc.starter.models()
crafter = dc.DataCrafter.open(sys.argv[1], models=models)
t = time.perf_counter()
low = len(sys.argv) > 2 and sys.argv[2] == "low"  # as a low-priority job (niced), to compare
job = Job(lambda ctx: crafter.update_projection(), description="first map").start(low_priority=low)  # as the widget does
job.wait(timeout=3600)
print(json.dumps({"seconds": time.perf_counter() - t, "images": len(crafter.projection)}))
crafter.close()
"""


def env_for(policy: str, cores: int) -> dict[str, str]:
    """The environment of a measured process: "old", "new", or either with settings changed, e.g.
    "new+BACKGROUND_NICE=0" (DATACRAFTER_BACKGROUND_NICE=0 on top of the new policy)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATACRAFTER_") and k != "OMP_WAIT_POLICY"}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("OMP_NUM_THREADS", None)
    base, *changes = policy.replace("-niced", "").split("+")
    if base not in ("old", "new"):
        raise SystemExit(f"policy {policy!r}: old or new, optionally +NAME=VALUE settings")
    if base == "old":
        env.update({k: v.format(cores=cores) for k, v in OLD.items()})
    for change in changes:
        name, _, value = change.partition("=")
        env["DATACRAFTER_" + name.upper()] = value
    return env


class Load:
    """One busy process per core while the block runs (or none, for idle)."""

    def __init__(self, loaded: bool, cores: int) -> None:
        self.loaded, self.cores = loaded, cores
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Load":
        if self.loaded:
            self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.cores)]
            time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def loadavg() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def python_json(code: str, env: dict[str, str], *args: str, timeout: float) -> dict:
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"seconds": timeout, "stopped": True}
    if out.returncode != 0:
        raise RuntimeError(f"the measured process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed_run(env: dict[str, str], project: Path, timeout: float, log: Path | None = None) -> dict:
    """`datacrafter run examples/starter.toml`: wall seconds and the longest gap between outputs
    (the whole output goes to `log` when given, each chunk stamped with its second)."""
    cmd = [sys.executable, "-m", "datacrafter_widget.app.cli", "run", str(REPO / "examples" / "starter.toml")]
    cmd += ["--project", str(project), "--overwrite"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(REPO))
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    last, gap, gap_at, tail = t0, 0.0, 0.0, b""
    stopped = False
    while True:
        now = time.monotonic()
        if now - t0 > timeout:
            proc.kill()
            stopped = True
            break
        if not sel.select(timeout=0.5):
            if proc.poll() is not None:
                break
            continue
        chunk = proc.stdout.read()
        if not chunk:
            if proc.poll() is not None:
                break
            continue
        now = time.monotonic()
        if now - last > gap:
            gap, gap_at = now - last, last - t0
        last, tail = now, (tail + chunk)[-4000:]
        if log is not None:
            with log.open("ab") as f:
                f.write(f"\n<{now - t0:.1f}s>".encode() + chunk)
    proc.wait()
    seconds = time.monotonic() - t0
    if time.monotonic() - last > gap and not stopped:
        gap, gap_at = time.monotonic() - last, last - t0
    if proc.returncode not in (0, None) and not stopped:
        raise RuntimeError(f"datacrafter run failed:\n{tail.decode(errors='replace')}")
    return {"seconds": seconds, "gap": gap, "gap_at": gap_at, "stopped": stopped}


def fmt(r: dict) -> str:
    s = f"{r['seconds']:7.1f} s" + (" (stopped at the timeout)" if r.get("stopped") else "")
    if "gap" in r:
        s += f", longest output gap {r['gap']:5.1f} s (at {r['gap_at']:.0f} s)"
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default="student,map,run", help="comma list of student, map, run")
    ap.add_argument("--policies", default="old,new", help="comma list of old, new (+NAME=VALUE: a setting changed)")
    ap.add_argument("--loads", default="idle,loaded", help="comma list of idle, loaded")
    ap.add_argument("--repeat", type=int, default=1, help="measurements per cell (the median is kept)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds before a measurement is stopped")
    ap.add_argument("--logs", default="", help="a folder for the output of each `datacrafter run` (run phase)")
    args = ap.parse_args()
    if args.logs:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    loads = [p.strip() for p in args.loads.split(",") if p.strip()]
    print(f"cores {cores}, {loadavg()}, python {sys.version.split()[0]}; load = {cores} hog process(es)", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_compute_"))
    results: dict[tuple[str, str, str], dict] = {}
    try:
        if "map" in phases:
            print("preparing the quickstart project (10 images per class, class prompts)", flush=True)
            python_json(
                PREPARE + "\nprint('{}')", env_for("new", cores), str(work / "quickstart"), timeout=args.timeout
            )
        for phase in phases:
            for load in loads:
                for policy in policies:
                    runs = []
                    for k in range(args.repeat):
                        env = env_for(policy, cores)
                        print(f"{phase:8s} {policy} {load:6s} #{k + 1}: {loadavg()} ...", flush=True)
                        with Load(load == "loaded", cores):
                            if phase == "student":
                                r = python_json(STUDENT, env, timeout=args.timeout)
                            elif phase == "map":
                                copy = work / f"map-{policy}-{load}-{k}"
                                shutil.copytree(work / "quickstart", copy)
                                for name in ("layout.safetensors", "map.json", "content_labels.json"):
                                    (copy / name).unlink(missing_ok=True)
                                low = "low" if "-niced" in policy else "normal"
                                r = python_json(FIRST_MAP, env, str(copy), low, timeout=args.timeout)
                            else:
                                log = Path(args.logs) / f"run-{policy}-{load}-{k}.log" if args.logs else None
                                r = timed_run(env, work / f"run-{policy}-{load}-{k}", args.timeout, log)
                        print(f"{'':8s} {policy} {load:6s} #{k + 1}: {fmt(r)}", flush=True)
                        runs.append(r)
                    runs.sort(key=lambda r: r["seconds"])
                    results[(phase, policy, load)] = runs[len(runs) // 2]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\nsummary (median of --repeat; ratio = loaded / idle of the same policy in this run)")
    for phase in phases:
        for policy in policies:
            idle, loaded = results.get((phase, policy, "idle")), results.get((phase, policy, "loaded"))
            parts = [f"{phase:8s} {policy}"]
            if idle:
                parts.append(f"idle {fmt(idle)}")
            if loaded:
                parts.append(f"loaded {fmt(loaded)}")
            if idle and loaded:
                more = " (at least: stopped)" if loaded.get("stopped") else ""
                parts.append(f"ratio {loaded['seconds'] / idle['seconds']:.2f}{more}")
            print(" | ".join(parts))


if __name__ == "__main__":
    main()

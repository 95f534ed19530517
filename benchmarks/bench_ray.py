"""Images/s of the local backend against Ray with 1 and 2 local workers, on the starter generator, in one run.

    python benchmarks/bench_ray.py                      # starts a local Ray instance
    python benchmarks/bench_ray.py --address auto       # or joins a running cluster (ray start --head)

The same requests (prompts, seeds, steps, batch size) go through each backend; the overhead ratio
is Ray's images/s over local's (goal: 1 worker >= 0.9x local). Every worker and the local run use
the same number of torch threads (--threads), so the ratio is transport and scheduling overhead,
not more cores. Worker start-up (loading the models once per worker, paid on the first round of a
session) is printed apart from the steady-state rate. Local runs before and after the Ray runs;
their mean is the baseline, and their spread shows how noisy this machine is. The images of every
Ray run are compared with the local ones (max abs pixel difference).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _requests(n: int, steps: int, guidance: float):
    from datacrafter_widget.controller.backends import ImageRequest

    return [
        ImageRequest(index=i, group=0, prompt=f"a photo of a {i % 10}", seed=1000 + i, steps=steps, guidance=guidance)
        for i in range(n)
    ]


def _run(backend, models, reqs, batch_size: int) -> tuple[float, dict[int, np.ndarray]]:
    t = time.perf_counter()
    out: dict[int, np.ndarray] = {}
    for b in backend.generate(models, reqs, batch_size=batch_size):
        for i, im in zip(b.indices, b.images):
            out[i] = np.asarray(im, dtype=np.int16)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads locally and per Ray worker")
    ap.add_argument("--address", default=None, help="a Ray cluster to join (default: start a local instance)")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray
    import torch

    import datacrafter_widget as dc
    from datacrafter_widget.controller.backends import LocalBackend, RayBackend

    torch.set_num_threads(args.threads)
    paths = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    runtime_env = {
        "env_vars": {"PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    }
    if args.address:
        ray.init(address=args.address, runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(num_cpus=2 * args.threads, runtime_env=runtime_env, include_dashboard=False, log_to_driver=False)

    models = dc.starter.models()
    gen = models.generator
    reqs = _requests(args.images, args.steps, gen.default_guidance)
    print(
        f"starter generator {gen.name}, {args.images} images, {args.steps} steps, batch size {args.batch_size}, "
        f"{args.threads} torch thread(s) per process, machine load {os.getloadavg()[0]:.1f}"
    )

    local = LocalBackend()
    _run(local, models, reqs[: args.batch_size], args.batch_size)  # warm-up (first-call allocations)
    t_local_1, ref = _run(local, models, reqs, args.batch_size)
    rows = []
    for workers in (1, 2):
        backend = RayBackend(workers=workers, cpus_per_worker=args.threads)
        t = time.perf_counter()
        backend._ensure_pool(models)  # each worker loads the models once
        startup = time.perf_counter() - t
        _run(backend, models, reqs[: args.batch_size * workers], args.batch_size)  # warm-up on every worker
        seconds, images = _run(backend, models, reqs, args.batch_size)
        diff = max(int(np.abs(images[i] - ref[i]).max()) for i in ref)
        rows.append((workers, startup, seconds, diff))
        backend.close()
    t_local_2, _ = _run(local, models, reqs, args.batch_size)
    base = (t_local_1 + t_local_2) / 2
    local_rate = args.images / base
    print(f"{'backend':<16}{'start-up s':>11}{'seconds':>9}{'images/s':>10}{'vs local':>10}{'max |diff|':>11}")
    print(f"{'local (before)':<16}{'-':>11}{t_local_1:>9.2f}{args.images / t_local_1:>10.3f}{'':>10}{'':>11}")
    print(f"{'local (after)':<16}{'-':>11}{t_local_2:>9.2f}{args.images / t_local_2:>10.3f}{'':>10}{'':>11}")
    for workers, startup, seconds, diff in rows:
        rate = args.images / seconds
        print(
            f"{f'ray x{workers}':<16}{startup:>11.1f}{seconds:>9.2f}{rate:>10.3f}{rate / local_rate:>9.2f}x{diff:>11d}"
        )
    print(
        f"overhead ratio, 1 Ray worker / local: {args.images / rows[0][2] / local_rate:.2f} (goal >= 0.9); "
        f"2 workers / 1 worker: {rows[0][2] / rows[1][2]:.2f} (ideal 2.0 on 2 free cores)"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()

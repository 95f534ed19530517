"""The compute policy: how many torch threads each kind of work uses, and how background jobs share the cores.

Why: on a busy CPU (a laptop running other work, a shared Colab runtime) torch's default costs a
multiple of the load, not a share of it. Torch's OpenMP workers spin while they wait for one
another; when a core they wait for is taken by another process, every parallel region waits for the
slowest worker. Measured with benchmarks/bench_compute.py on a shared 2-core machine (the README's
"Compute" section has the figures): with a passive OpenMP wait policy and one thread, the student
trains in 15.7 s beside other work and 42.6 s with a CPU hog per core added; with torch's defaults
57.5 s and more than 200 s. The
product's own background work (the widget's first map, the held-out students, generation in the
background) also competes with the notebook: it runs on fewer threads, one background job at a
time, and work nobody waits for (the held-out students) at a lower OS priority.

Everything is decided here, once:

- `wait_policy`: OpenMP's OMP_WAIT_POLICY, set to PASSIVE when `datacrafter_widget` is imported
  before torch and the variable is not set already (libgomp reads it once, when torch loads it).
- `threads`: torch intra-op threads of a foreground step ("auto": the cores this process may use,
  see `auto_threads`), and per kind of work: `student_threads` (the small CNN student),
  `sampler_threads` (the diffusion sampler), `embed_threads` (CLIP embedding), `map_threads` (the
  map's layout refinement); a kind left at "default" uses `threads`.
- `background_threads`, `background_nice`: the threads and the extra OS niceness (Linux, per
  thread) of background jobs (the niceness only for low-priority ones: the held-out students);
  `background_turns`: background jobs take turns (one runs at a time).

Override, for this process, `dc.compute.set(threads=2)`; for every process, the environment
variable `DATACRAFTER_<NAME>` (`DATACRAFTER_THREADS=2`, `DATACRAFTER_BACKGROUND_NICE=0`). The
environment wins over set(), which wins over the default, so the owner of a shared machine can cap
every notebook on it. `dc.compute.summary()` (or `dc.compute.policy()`) shows what is in force.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULTS",
    "HEARTBEAT_S",
    "KINDS",
    "ComputeError",
    "Policy",
    "auto_threads",
    "background",
    "busy_cores",
    "get",
    "in_background",
    "policy",
    "prepare_openmp",
    "reset",
    "set",
    "step",
    "summary",
    "threads",
]

#: the kinds of work that choose their own thread count
KINDS = ("student", "sampler", "embed", "map")

#: name -> (default, what it decides)
DEFAULTS: dict[str, tuple[Any, str]] = {
    "threads": ("auto", "torch threads of a foreground step: a number, or 'auto' (free cores, see auto_threads)"),
    "student_threads": (1, "torch threads while the small CNN student trains ('default': threads)"),
    "sampler_threads": ("default", "torch threads of the diffusion sampler ('default': threads)"),
    "embed_threads": ("default", "torch threads of CLIP embedding ('default': threads)"),
    "map_threads": (1, "torch threads of the map's layout refinement ('default': threads)"),
    "background_threads": (1, "torch threads of a background job (the widget's map, held-out students, ...)"),
    "background_nice": (
        10,
        "extra OS niceness of low-priority background jobs, the held-out students (0: none; Linux)",
    ),
    "background_turns": (1, "1: background jobs take turns, one at a time; 0: they run at once"),
    "wait_policy": ("passive", "OpenMP wait policy set before torch loads: 'passive' or 'active' (OMP_WAIT_POLICY)"),
}
#: seconds between two progress reports of a long step at most: a unit of work that takes longer (a
#: student's chunk of steps, evolution's batch of candidates on a busy CPU) reports its count again
HEARTBEAT_S = 2.0
_ENV = "DATACRAFTER_"
_set: dict[str, Any] = {}
_local = threading.local()
_turn = threading.Lock()


class ComputeError(ValueError):
    """A compute setting that is not valid; the message names the setting and the values it takes."""


def _check(name: str, value: Any, source: str) -> Any:
    if name not in DEFAULTS:
        raise ComputeError(f"unknown compute setting {name!r}: the settings are {sorted(DEFAULTS)}")
    if name == "wait_policy":
        text = str(value).strip().lower()
        if text not in ("passive", "active"):
            raise ComputeError(f"{source}: wait_policy is 'passive' or 'active', not {value!r}")
        return text
    if isinstance(value, str):
        text = value.strip().lower()
        if name == "threads" and text == "auto":
            return "auto"
        if name.endswith("_threads") and name != "background_threads" and text == "default":
            return "default"
        try:
            value = int(text)
        except ValueError:
            raise ComputeError(f"{source}: {name} takes a whole number{_words(name)}, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ComputeError(f"{source}: {name} takes a whole number{_words(name)}, not {value!r}")
    low = 0 if name in ("background_nice", "background_turns") else 1
    if value < low or (name == "background_nice" and value > 19) or (name == "background_turns" and value > 1):
        bounds = {"background_nice": "0..19", "background_turns": "0 or 1"}.get(name, ">= 1")
        raise ComputeError(f"{source}: {name}={value!r} must be {bounds}")
    return value


def _words(name: str) -> str:
    if name == "threads":
        return " or 'auto'"
    if name.endswith("_threads") and name != "background_threads":
        return " or 'default'"
    return ""


def get(name: str) -> Any:
    """The setting in force: the DATACRAFTER_<NAME> environment variable, then set(), then the default."""
    env_name = _ENV + name.upper()
    env = os.environ.get(env_name)
    if env is not None and env.strip():
        return _check(name, env, f"environment variable {env_name}={env!r}")
    if name in _set:
        return _set[name]
    _check(name, DEFAULTS[name][0], "default")
    return DEFAULTS[name][0]


def set(**settings: Any) -> None:  # noqa: A001 - read as dc.compute.set(threads=...)
    """Change settings for this process, e.g. dc.compute.set(threads=2, background_nice=5)."""
    checked = {name: _check(name, value, f"dc.compute.set({name}={value!r})") for name, value in settings.items()}
    for name in checked:
        env_name = _ENV + name.upper()
        if os.environ.get(env_name, "").strip():
            warnings.warn(
                f"dc.compute.set({name}=...) is overridden by the environment variable {env_name}="
                f"{os.environ[env_name]!r}: unset it to use this value",
                stacklevel=2,
            )
    _set.update(checked)


def reset(*names: str) -> None:
    """Forget values given with set() (all of them without names)."""
    for name in names or list(_set):
        _check(name, DEFAULTS[name][0], "reset")
        _set.pop(name, None)


# ---- OpenMP ------------------------------------------------------------------------------------
def prepare_openmp() -> str:
    """Set OMP_WAIT_POLICY before torch loads OpenMP (called when datacrafter_widget is imported).

    Returns the wait policy torch runs with: the variable's value, or "active (torch was imported
    first)" where torch had loaded OpenMP before this could set it.
    """
    current = os.environ.get("OMP_WAIT_POLICY")
    if current:
        return current.lower()
    if "torch" in sys.modules:
        return "active (torch was imported before datacrafter_widget)"
    wanted = get("wait_policy")
    os.environ["OMP_WAIT_POLICY"] = wanted.upper()
    return wanted


def _waits_passively() -> bool:
    return os.environ.get("OMP_WAIT_POLICY", "").lower() == "passive" and _openmp_policy.startswith("passive")


# ---- threads -----------------------------------------------------------------------------------
def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[float, float] | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields[:8]), idle


def busy_cores(window: float = 0.1) -> float:
    """How many of the machine's cores other work keeps busy now: /proc/stat over `window` seconds
    (Linux), else the 1-minute load average. Read at the start of a step, when this thread is idle."""
    before = _cpu_times()
    if before is None:
        try:
            return float(os.getloadavg()[0])
        except OSError:
            return 0.0
    time.sleep(window)
    after = _cpu_times()
    assert after is not None
    total, idle = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return 0.0
    return (1.0 - idle / total) * (os.cpu_count() or 1)


_busy: list[float] = []  # [time read, busy cores]: one reading serves the steps of the next AUTO_EVERY_S


#: seconds one reading of the machine's load serves 'auto' (steps come in bursts: batches, chunks)
AUTO_EVERY_S = 2.0


def auto_threads() -> int:
    """'auto' threads: the cores this process may use (sched_getaffinity, at most OMP_NUM_THREADS when
    that is set) that other work leaves free, at least 1. With an active (spinning) wait policy a
    partly busy machine gets 1 thread: spinning workers that wait for a taken core multiply the cost
    (see the module docstring)."""
    cores = _cores()
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        cores = min(cores, int(omp))
    if cores <= 1:
        return 1
    now = time.monotonic()
    if not _busy or now - _busy[0] > AUTO_EVERY_S:
        _busy[:] = [now, busy_cores()]
    free = _cores() - _busy[1]
    if not _waits_passively() and free < _cores() - 0.5:
        return 1
    return max(1, min(cores, int(free + 0.5)))


def threads(kind: str, *, background: bool | None = None) -> int:
    """Torch threads for a step of `kind` (one of KINDS) in this thread: the background setting in a
    background job, else the kind's own setting, else `threads` ('auto' resolved now)."""
    if kind not in KINDS:
        raise ComputeError(f"unknown kind of work {kind!r}: the kinds are {list(KINDS)}")
    if in_background() if background is None else background:
        return int(get("background_threads"))
    value = get(f"{kind}_threads")
    if value == "default":
        value = get("threads")
    return auto_threads() if value == "auto" else int(value)


@contextlib.contextmanager
def step(kind: str) -> Iterator[int]:
    """Run a step of `kind` with the policy's torch threads in this thread (restored afterwards).

    torch.set_num_threads is per thread under OpenMP, so a background job's setting does not change
    the notebook's own. Yields the thread count.
    """
    import torch

    n = threads(kind)
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if n != before:
            torch.set_num_threads(before)


# ---- background jobs ---------------------------------------------------------------------------
def in_background() -> bool:
    """True in a thread that runs a background job (see `background`)."""
    return bool(getattr(_local, "background", False))


def _lower_priority(nice: int) -> bool:
    if nice <= 0 or not hasattr(os, "setpriority"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        return False
    return True


@contextlib.contextmanager
def background(
    waiting: Callable[[], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    *,
    low_priority: bool = False,
) -> Iterator[bool]:
    """Mark the calling thread as a background job for the duration: `background_threads` torch
    threads and, with background_turns, one background job at a time; a low-priority job (work
    nobody waits for, such as the held-out students) also runs at a lower OS priority (this thread
    only, Linux). Jobs someone waits for (the first map, a round) keep the normal priority: niceness
    is relative to every process, so on a CPU busy with other programs a niced job gets ~10% of a
    core (benchmarks/bench_compute.py, map phase). `waiting()` is called once if the job has to wait
    for its turn; `cancelled()` is asked while it waits, and a cancelled job goes on without its turn
    (it only stops). Yields whether the priority was lowered."""
    import torch

    _local.background = True
    lowered = _lower_priority(int(get("background_nice"))) if low_priority else False
    n = int(get("background_threads"))
    torch.set_num_threads(n)
    took = False
    if int(get("background_turns")):
        took = _turn.acquire(blocking=False)
        if not took and waiting is not None:
            waiting()
        while not took and not (cancelled is not None and cancelled()):
            took = _turn.acquire(timeout=0.2)
    try:
        yield lowered
    finally:
        if took:
            _turn.release()
        _local.background = False


# ---- what is in force ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """The policy in force, resolved now (its repr is the one-line view)."""

    cores: int
    wait_policy: str
    student: int
    sampler: int
    embed: int
    map: int
    background_threads: int
    background_nice: int
    background_turns: bool

    def __repr__(self) -> str:
        return (
            f"ComputePolicy(cores={self.cores}, OpenMP wait={self.wait_policy}, threads: student={self.student} "
            f"sampler={self.sampler} embed={self.embed} map={self.map}; background jobs: "
            f"{self.background_threads} thread(s), low-priority ones at nice +{self.background_nice}, "
            f"{'one at a time' if self.background_turns else 'at once'})"
        )


def policy() -> Policy:
    """The settings in force, with 'auto' resolved for the foreground now."""
    fg = {kind: threads(kind, background=False) for kind in KINDS}
    return Policy(
        cores=_cores(),
        wait_policy=os.environ.get("OMP_WAIT_POLICY", "").lower() or _openmp_policy,
        background_threads=int(get("background_threads")),
        background_nice=int(get("background_nice")),
        background_turns=bool(get("background_turns")),
        **fg,
    )


def summary() -> dict[str, Any]:
    """Every setting in force (before 'auto' is resolved), e.g. to print them."""
    return {name: get(name) for name in DEFAULTS}


_openmp_policy = prepare_openmp()

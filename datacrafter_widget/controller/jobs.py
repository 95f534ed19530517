"""Long work (generation) in a worker thread: progress, cancel, finished work kept.

The kernel stays free while a job runs, so the widget keeps answering. A job's function gets a
`JobContext` to report progress and to ask whether it was cancelled; it must commit its results
itself as each unit finishes (the controller stores every finished batch), so cancelling or a
failure never loses finished work and never leaves anything half-written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Union

from .. import compute


class JobCancelled(Exception):
    """Raised by JobContext.check() so a job function can stop at a safe point."""


#: the one cancel convention of the public API: None, a threading.Event or a no-argument callable
Cancel = Union[threading.Event, Callable[[], bool], None]


def is_cancelled(cancel: Cancel) -> bool:
    """True if `cancel` (None, a threading.Event or a no-argument callable) says stop: the one cancel
    convention for long work that runs outside a Job (student training, evolution, GAP)."""
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):  # threading.Event, or any event with is_set() (multiprocessing's too)
        return bool(cancel.is_set())
    return bool(cancel())


def stop_check(cancel: Cancel, ctx: "JobContext | None" = None) -> Callable[[], bool] | None:
    """The `should_stop` callable the loop layer takes (it knows nothing of Events or Jobs): True once
    `cancel` says stop or the job behind `ctx` is cancelled; None when there is nothing to ask."""
    if cancel is None and ctx is None:
        return None
    return lambda: (ctx is not None and ctx.cancelled()) or is_cancelled(cancel)


class JobContext:
    """Handed to a job function: report progress, check for cancellation."""

    def __init__(self, job: "Job") -> None:
        self._job = job

    @property
    def cancel_event(self) -> threading.Event:
        return self._job._cancel

    def cancelled(self) -> bool:
        return self._job._cancel.is_set()

    def check(self) -> None:
        if self.cancelled():
            raise JobCancelled()

    def report(self, done: float, total: int | None = None, message: str | None = None) -> None:
        self._job._update(done, total, message)

    def keep(self, partial_result: Any) -> None:
        """Record what has finished so far; it stays `job.result` if the job is cancelled or fails."""
        self._job.result = partial_result


class Job:
    """A unit of long work with `.progress` (0..1), `.cancel()`, `.wait()`, and listeners.

    status: "pending" -> "running" -> "done" | "cancelled" | "failed".
    Listeners (`on_progress(fn)`) are called with the job from the worker thread; a widget should
    only copy numbers into traits there.
    """

    def __init__(self, fn: Callable[[JobContext], Any], *, total: int = 0, description: str = "") -> None:
        self._fn = fn
        self.description = description
        self.total = int(total)
        self.done = 0.0
        self.message = ""
        self.status = "pending"
        self.result: Any = None
        self.error: BaseException | None = None
        self.started: float | None = None
        self.finished: float | None = None
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._listeners: list[Callable[["Job"], None]] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Job({self.description!r}, status={self.status}, {self.done:.1f}/{self.total})"

    # ---- state ---------------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        if self.status == "done":
            return 1.0
        return float(min(1.0, self.done / self.total)) if self.total else 0.0

    @property
    def running(self) -> bool:
        return self.status in ("pending", "running") and not self._finished.is_set()

    def on_progress(self, fn: Callable[["Job"], None]) -> None:
        self._listeners.append(fn)

    def _update(self, done: float, total: int | None, message: str | None) -> None:
        with self._lock:
            self.done = float(done)
            if total is not None:
                self.total = int(total)
            if message is not None:
                self.message = message
        self._notify()

    def _notify(self) -> None:
        for fn in list(self._listeners):
            try:
                fn(self)
            except Exception:  # noqa: BLE001 - a broken listener must not kill the job
                pass

    # ---- control -------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the job to stop at the next safe point; finished work stays stored."""
        self._cancel.set()

    def run(self) -> Any:
        """Run in the calling thread (blocking). Exceptions propagate; cancellation does not."""
        self.status = "running"
        self.started = time.time()
        self._notify()
        try:
            result = self._fn(JobContext(self))
            if result is not None:
                self.result = result
            self.status = "cancelled" if self._cancel.is_set() else "done"
        except JobCancelled:
            self.status = "cancelled"
        except KeyboardInterrupt:
            self._cancel.set()
            self.status = "cancelled"
        except BaseException as err:
            self.error = err
            self.status = "failed"
            raise
        finally:
            self.finished = time.time()
            self._finished.set()
            self._notify()
        return self.result

    def start(self, *, low_priority: bool = False) -> "Job":
        """Run in a daemon worker thread and return at once, with the compute policy's background
        settings (fewer torch threads, one background job at a time; low_priority: work nobody waits
        for also runs at a lower OS priority): the notebook's own work keeps the cores it needs
        (datacrafter_widget.compute)."""

        waited: list[bool] = []

        def waiting() -> None:
            waited.append(True)
            self._update(self.done, None, f"{self.description}: waiting for another background job to finish")

        def target() -> None:
            try:
                with compute.background(waiting=waiting, cancelled=self._cancel.is_set, low_priority=low_priority):
                    if waited:
                        self._update(self.done, None, "")
                    self.run()
            except BaseException:  # noqa: BLE001 - kept in self.error, re-raised by wait()
                pass

        self._thread = threading.Thread(target=target, name=f"datacrafter-{self.description or 'job'}", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ends; return its result, or raise its error."""
        if not self._finished.wait(timeout):
            raise TimeoutError(
                f"job {self.description!r} still running after {timeout}s ({self.done:.0f}/{self.total})"
            )
        if self.error is not None:
            raise self.error
        return self.result


def tqdm_listener(total: int, description: str) -> Callable[[Job], None]:
    """A progress listener that drives a tqdm bar (plain Python / terminal)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=description, unit="img")

    def update(job: Job) -> None:
        bar.total = job.total
        bar.n = round(job.done, 2)
        bar.refresh()
        if not job.running:
            bar.close()

    return update

"""The compute policy (datacrafter_widget/compute.py): where settings come from, what background jobs get."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from datacrafter_widget import compute
from datacrafter_widget.controller.jobs import Job


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for name in compute.DEFAULTS:
        monkeypatch.delenv("DATACRAFTER_" + name.upper(), raising=False)
    compute.reset()
    yield
    compute.reset()


def test_resolution_order_env_then_set_then_default(monkeypatch):
    assert compute.get("student_threads") == compute.DEFAULTS["student_threads"][0]
    compute.set(student_threads=3)
    assert compute.get("student_threads") == 3
    assert compute.threads("student") == 3
    monkeypatch.setenv("DATACRAFTER_STUDENT_THREADS", "2")
    assert compute.get("student_threads") == 2  # the environment wins over set()
    with pytest.warns(UserWarning, match="DATACRAFTER_STUDENT_THREADS"):
        compute.set(student_threads=4)  # says that the environment overrides it
    monkeypatch.delenv("DATACRAFTER_STUDENT_THREADS")
    assert compute.get("student_threads") == 4
    compute.reset("student_threads")
    assert compute.get("student_threads") == compute.DEFAULTS["student_threads"][0]


def test_a_kind_left_at_default_follows_threads(monkeypatch):
    compute.set(threads=3, sampler_threads="default")
    assert compute.threads("sampler") == 3
    monkeypatch.setenv("DATACRAFTER_THREADS", "2")
    assert compute.threads("sampler") == 2 and compute.threads("embed") == 2


def test_bad_values_name_the_setting_and_the_fix(monkeypatch):
    with pytest.raises(compute.ComputeError, match="threads takes a whole number or 'auto'"):
        compute.set(threads="many")
    with pytest.raises(compute.ComputeError, match="unknown compute setting 'thread'"):
        compute.set(thread=2)
    monkeypatch.setenv("DATACRAFTER_BACKGROUND_NICE", "40")
    with pytest.raises(compute.ComputeError, match="DATACRAFTER_BACKGROUND_NICE='40'.*0..19"):
        compute.get("background_nice")


def test_auto_uses_the_free_cores(monkeypatch):
    monkeypatch.setattr(compute, "_cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(compute, "_waits_passively", lambda: True)
    for busy, want in ((0.0, 4), (1.1, 3), (3.9, 1), (8.0, 1)):
        monkeypatch.setattr(compute, "busy_cores", lambda busy=busy: busy)
        compute._busy.clear()
        assert compute.auto_threads() == want
    monkeypatch.setattr(compute, "_waits_passively", lambda: False)  # spinning workers: 1 unless idle
    compute._busy.clear()
    assert compute.auto_threads() == 1
    monkeypatch.setattr(compute, "busy_cores", lambda: 0.0)
    compute._busy.clear()
    assert compute.auto_threads() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert compute.auto_threads() == 2


def test_step_sets_threads_in_this_thread_only():
    compute.set(student_threads=1)
    torch.set_num_threads(2)
    seen = {}

    def other():
        torch.set_num_threads(2)
        with compute.step("student") as n:
            seen["inside"] = (n, torch.get_num_threads())
        seen["after"] = torch.get_num_threads()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == {"inside": (1, 1), "after": 2}
    assert torch.get_num_threads() == 2  # this thread's setting is untouched


def _thread_settings() -> dict:
    tid = threading.get_native_id()
    return {
        "threads": torch.get_num_threads(),
        "student": compute.threads("student"),
        "background": compute.in_background(),
        "nice": os.getpriority(os.PRIO_PROCESS, tid) if hasattr(os, "getpriority") else None,
    }


def test_background_jobs_get_the_background_settings():
    compute.set(threads=2, student_threads="default", background_threads=1, background_nice=5)
    fg = Job(lambda ctx: _thread_settings(), description="fg").run()  # run(): the calling thread
    bg = Job(lambda ctx: _thread_settings(), description="bg").start().wait(timeout=60)
    low = Job(lambda ctx: _thread_settings(), description="low").start(low_priority=True).wait(timeout=60)
    assert fg["background"] is False and fg["student"] == 2
    assert bg["background"] is True and bg["threads"] == 1 and bg["student"] == 1
    assert low["background"] is True and low["threads"] == 1
    if fg["nice"] is not None:
        assert bg["nice"] == fg["nice"]  # a job someone waits for keeps the normal priority
        assert low["nice"] == min(19, fg["nice"] + 5)
        # the notebook's thread keeps its own
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == fg["nice"]


def test_background_jobs_take_turns_and_say_so():
    release = threading.Event()
    order: list[str] = []

    def first(ctx):
        order.append("first starts")
        release.wait(30)
        order.append("first ends")

    def second(ctx):
        order.append("second starts")

    a = Job(first, description="map").start()
    while not order:
        release.wait(0.01)
    b = Job(second, description="metrics").start()
    for _ in range(500):
        if "waiting" in b.message:
            break
        release.wait(0.01)
    assert "metrics: waiting for another background job" in b.message and order == ["first starts"]
    release.set()
    a.wait(30)
    b.wait(30)
    assert order == ["first starts", "first ends", "second starts"]
    assert b.message == ""  # the waiting note goes once it runs


def test_a_cancelled_job_stops_waiting_for_its_turn():
    release = threading.Event()
    a = Job(lambda ctx: release.wait(30), description="long").start()
    ran = []
    b = Job(lambda ctx: ran.append(ctx.cancelled()), description="queued").start()
    b.cancel()
    b.wait(30)  # does not wait for `a`
    assert b.status == "cancelled" and a.running
    release.set()
    a.wait(30)


def test_turns_off_lets_background_jobs_run_at_once():
    compute.set(background_turns=0)
    both = threading.Barrier(2, timeout=20)
    a = Job(lambda ctx: both.wait(), description="a").start()
    b = Job(lambda ctx: both.wait(), description="b").start()
    a.wait(30)
    b.wait(30)
    assert a.status == b.status == "done"

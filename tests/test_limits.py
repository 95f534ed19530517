"""Limits on every size a call takes (issue 24): a typo such as steps=10**9 or per_class=10**9 is
refused at once, before anything is planned or recorded, with the limit and how to raise it."""

from __future__ import annotations

import pytest
import torch

import datacrafter_widget as dc
from datacrafter_widget.controller.round_spec import RoundSpec
from datacrafter_widget.models.generator import Generator
from tiny_models import tiny_sd_pipeline

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models():
    return dc.Models(generator=Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=2))


@pytest.fixture
def crafter(models, tmp_path):
    c = dc.DataCrafter(dc.starter.colored_digits(shots=2, seed=0), models=models, project=tmp_path / "proj")
    yield c
    c.cancel()
    c.close()


def test_steps_without_bound_are_refused_before_anything_is_recorded(crafter):
    with pytest.raises(ValueError, match=r"steps=1000000000 is above the limit of 1000.*dc\.limits\.set\(steps="):
        job = crafter.generate_background(per_class=1, steps=10**9, strategy="class")
        job.cancel()  # old code: the round runs away in the background
    assert crafter.rounds == [] and crafter.job is None


def test_per_class_without_bound_is_refused_at_once(crafter):
    with pytest.raises(
        ValueError, match=r"per_class=1000000000 is above the limit of 10000.*DATACRAFTER_LIMIT_PER_CLASS"
    ):
        crafter.generate_background(per_class=10**9, strategy="class")
    assert crafter.rounds == []
    with dc.limits.raised(per_class=60_000), pytest.raises(ValueError, match=r"images in the round.*100000"):
        crafter.generate_background(per_class=60_000, strategy="class")  # 60k x 10 classes
    assert crafter.rounds == []


def test_batch_and_image_size_have_limits(crafter, tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=100000 is above the limit of 512"):
        crafter.generate(per_class=1, strategy="class", batch_size=100_000)
    with dc.limits.raised(image_pixels=100), pytest.raises(ValueError, match=r"images\[0\] \(16x16\).*limit of 100"):
        crafter.store.add([dc.starter.colored_digits(shots=1).image(0).resize((16, 16))], [{"label": "0"}])


def test_gap_and_evolution_sizes_have_limits(crafter):
    crafter.train_student(epochs=1, progress=False, kind="cnn", seed=0)
    with pytest.raises(ValueError, match=r"steps=1000000000 is above the limit of 20000 \(GAP"):
        crafter.adversarial(target="a photo on grass", steps=10**9, per_class=1, progress=False)
    with pytest.raises(ValueError, match=r"n_tokens=100000 is above the limit"):
        crafter.adversarial(target="a photo on grass", steps=2, n_tokens=100_000, per_class=1, progress=False)
    assert crafter.rounds == []
    with pytest.raises(ValueError, match=r"population=1000000000 is above the limit"):
        crafter.evolve(population=10**9, progress=False)


def test_limits_are_raised_by_set_by_a_block_or_by_the_environment(monkeypatch):
    with pytest.raises(dc.limits.LimitError, match="limit of 1000"):
        RoundSpec(steps=1500).validated()
    with dc.limits.raised(steps=2000):
        assert RoundSpec(steps=1500).validated().steps == 1500
    assert dc.limits.get("steps") == 1000
    monkeypatch.setenv("DATACRAFTER_LIMIT_STEPS", "2000")
    assert RoundSpec(steps=1500).validated().steps == 1500
    dc.limits.set(steps=1200)  # set() wins over the environment
    try:
        with pytest.raises(dc.limits.LimitError, match="limit of 1200"):
            RoundSpec(steps=1500).validated()
    finally:
        dc.limits.reset()
    with pytest.raises(KeyError, match="unknown limit 'stepz'"):
        dc.limits.set(stepz=5)
    assert set(dc.limits.summary()) == set(dc.limits.DEFAULTS)


def test_a_memory_heavy_round_says_its_estimate_before_it_starts(crafter, monkeypatch):
    # 512 px images in batches of 16: a plan worth a note; the tiny model's round is not.
    assert dc.limits.estimate_round_mb(1000, 16, 512) > dc.limits.get("memory_note_mb")
    assert dc.limits.estimate_round_mb(10, 8, 32) < 50
    monkeypatch.setattr(dc.limits, "estimate_round_mb", lambda n, bs, res: 5000.0 + n)
    with pytest.warns(dc.limits.ResourceNote, match=r"round 1 \(10 images at \d+px, batches of \d+\).*5,010 MB"):
        crafter.generate(per_class=1, strategy="class", progress=False)
    assert crafter.rounds[0]["status"] == "done"

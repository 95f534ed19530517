"""RoundSpec: every generation argument checked at the API boundary, before a round is recorded;
one seed policy for the API, the widget and the CLI."""

from __future__ import annotations

import json
import math
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

import datacrafter_widget as dc
from datacrafter_widget.controller.plan import check_seed_range
from datacrafter_widget.controller.round_spec import MAX_SEED, ROUND_SEED_STRIDE, RoundSpec, RoundSpecError, round_seed
from datacrafter_widget.loop.strategies import GENERATE_STRATEGIES, STRATEGIES
from datacrafter_widget.models.generator import Generator
from tiny_models import tiny_sd_pipeline

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def gen():
    return Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=2)


@pytest.fixture
def crafter(gen, tmp_path):
    c = dc.DataCrafter(
        dc.starter.colored_digits(shots=1, seed=0), models=dc.Models(generator=gen), project=tmp_path / "proj"
    )
    yield c
    c.close()


BAD = [  # (arguments, the argument the error must name, words of the allowed values)
    (dict(steps=0), "steps=0", "whole number >= 1"),
    (dict(steps=2.5), "steps=2.5", "whole number >= 1"),
    (dict(per_class=2.5), "per_class=2.5", "whole number >= 1"),
    (dict(per_class=0), "per_class=0", "whole number >= 1"),
    (dict(guidance=math.nan), "guidance=nan", "finite number >= 0"),
    (dict(guidance=math.inf), "guidance=inf", "finite number >= 0"),
    (dict(seed=2**70), f"seed={2**70}", f"<= {MAX_SEED}"),
    (dict(seed=-1), "seed=-1", "whole number >= 0"),
    (dict(strategy="custom", prompts=123), "prompts=123", "a string, a list of strings"),
    (dict(strategy="custom", prompts=[None]), "prompts holds None", "must be a string"),
    (dict(strategy="custom", prompts={"3": [None]}), "prompts['3'] holds None", "must be a string"),
    (dict(batch_size=0), "batch_size=0", "whole number >= 1"),
    (dict(batch_size=-4), "batch_size=-4", "whole number >= 1"),
    (dict(strength=0.5), "strength=0.5 applies to strategy='perturb' only", "add 'perturb'"),
    (dict(strategy="perturb", strength=1.5), "strength=1.5", "> 0.0 and <= 1.0"),
    (dict(latent_perturbation=0.3), "latent_perturbation=0.3 applies to strategy='perturb' only", "add 'perturb'"),
    (dict(strategy="sdxl"), "unknown strategy 'sdxl'", "custom"),
    (dict(strategy="gap"), "strategy='gap'", "crafter.adversarial"),
    (dict(strategy=["class", "class"]), "more than once", "name each strategy once"),
    (dict(filter="yes"), "filter='yes'", "True or False"),
]


@pytest.mark.parametrize("kwargs,names,allowed", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_arguments_are_refused_before_any_round_is_recorded(crafter, kwargs, names, allowed):
    kwargs = {"strategy": "class", **kwargs}
    with pytest.raises(RoundSpecError) as err:
        crafter.generate(per_class=kwargs.pop("per_class", 1), progress=False, **kwargs)
    assert names in str(err.value) and allowed in str(err.value)
    assert crafter.rounds == [] and (crafter.samples["source"] == "generated").sum() == 0


def test_the_same_checks_apply_to_dicts_from_the_widget_and_the_toml_config():
    with pytest.raises(RoundSpecError, match=r"steps=0: steps must be a whole number >= 1"):
        RoundSpec.from_dict({"strategy": "class", "steps": 0})
    with pytest.raises(RoundSpecError, match=r"unknown round setting\(s\) \['stpes'\]"):
        RoundSpec.from_dict({"strategy": "class", "stpes": 4})
    spec = RoundSpec.from_dict({"strategy": "custom", "per_class": 3.0, "prompts": {"3": "a red 3"}, "seed": 7})
    assert spec.per_class == 3 and isinstance(spec.per_class, int) and spec.prompts == {"3": ["a red 3"]}
    assert spec.strategies == ("custom",)
    # json round trip: what rounds.json keeps makes the same spec again
    assert RoundSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_the_strategy_list_is_one_list_with_evolved_and_gap():
    assert STRATEGIES == ("class", "caption", "perturb", "custom", "evolved", "gap")
    assert GENERATE_STRATEGIES == STRATEGIES[:-1]


def test_seed_policy():
    assert round_seed(3) == 3 * ROUND_SEED_STRIDE and round_seed(3, 11) == 11 and round_seed(3, 0) == 0
    assert RoundSpec(strategies="class", seed=MAX_SEED).validated().seed == MAX_SEED  # exact, no float rounding
    check_seed_range(MAX_SEED - 1, 2, MAX_SEED - 1)  # the last seed is MAX_SEED: fits
    with pytest.raises(RoundSpecError, match="above"):
        check_seed_range(MAX_SEED, 2, MAX_SEED)


def test_rounds_json_and_rows_are_made_from_the_spec(crafter):
    ids = crafter.generate(per_class=1, strategy="class", classes=["3"], seed=40, steps=2, guidance=4.0, progress=False)
    entry = crafter.rounds[-1]
    spec = RoundSpec.from_dict({k: entry[k] for k in RoundSpec.__dataclass_fields__})
    assert spec.strategies == ("class",) and spec.classes == ("3",) and spec.seed == 40 and spec.steps == 2
    row = crafter.store.row(ids[0])
    assert (row["seed"], row["steps"], row["guidance"], row["strategy"]) == (40, 2, 4.0, "class")


def test_a_long_prompt_is_stored_whole_and_warned_once_as_truncated(crafter):
    prompt = ("a red 3 on a white background" + " very" * 2000)[:9_996].rstrip()
    prompt += "x" * (10_000 - len(prompt))  # no trailing blank: prompts are stored as written, whitespace-normalised
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = crafter.generate(
            per_class=2, strategy="custom", classes=["3"], prompts={"3": prompt}, steps=1, filter=False, progress=False
        )
    long = [w for w in caught if "longer than the" in str(w.message)]
    assert len(long) == 1 and "the rows store them whole" in str(long[0].message)
    assert [crafter.store.row(i)["prompt"] for i in ids] == [prompt, prompt] and len(prompt) == 10_000


def test_same_spec_same_seeds_and_images_in_the_same_round_number(gen, tmp_path):
    """The seed policy makes a round a function of (spec, round number): two projects, same images."""
    spec = RoundSpec.from_dict({"strategy": "class", "per_class": 1, "classes": ["3", "7"], "steps": 2})
    images = []
    for name in ("a", "b"):
        with dc.DataCrafter(
            dc.starter.colored_digits(shots=1, seed=0), models=dc.Models(generator=gen), project=tmp_path / name
        ) as c:
            ids = c.generate(spec=spec, progress=False)
            rows = c.samples.set_index("id").loc[ids]
            assert rows["seed"].tolist() == [ROUND_SEED_STRIDE, ROUND_SEED_STRIDE + 1]
            images.append([np.asarray(c.store.image(i)) for i in ids])
    assert all(np.array_equal(a, b) for a, b in zip(*images))


def test_same_images_from_crafter_generate_and_datacrafter_run_for_the_same_plan(tmp_path):
    """The CLI's [[rounds]] table and the API call make the same RoundSpec, so the same seeds and images."""
    from datacrafter_widget.app.headless import run
    from datacrafter_widget.data.store import SampleStore
    from datacrafter_widget.models.embedder import Embedder
    from tiny_models import tiny_open_clip

    model, preprocess, tokenizer = tiny_open_clip()
    models = dc.Models(
        generator=Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=2, default_guidance=3.0),
        embedder=Embedder(model, preprocess, tokenizer, name="tiny-clip"),
    )
    table = {
        "strategy": ["class", "custom"],
        "per_class": 1,
        "prompts": "a {class} on a plain background",
        "steps": 2,
        "classes": ["1", "7"],
    }
    config = {
        "project": str(tmp_path / "cli"),
        "dataset": {"kind": "starter", "shots": 1, "seed": 0},
        "rounds": [table],
        "student": {"epochs": 1, "evaluate_each_round": False},
    }
    run(config, models=models, progress=False, log=lambda line: None)
    with SampleStore(tmp_path / "cli", readonly=True) as store:
        s = store.samples
        cli = s[s["source"] == "generated"].sort_values("id")
        cli_images = [np.asarray(store.image(i)) for i in cli["id"]]
    with dc.DataCrafter(dc.starter.colored_digits(shots=1, seed=0), models=models, project=tmp_path / "api") as c:
        ids = c.generate(
            per_class=1,
            strategy=["class", "custom"],
            prompts="a {class} on a plain background",
            steps=2,
            classes=["1", "7"],
            progress=False,
        )
        api = c.samples.set_index("id").loc[ids]
        api_images = [np.asarray(c.store.image(i)) for i in ids]
    assert len(ids) == 4 and cli["seed"].tolist() == api["seed"].tolist() == [ROUND_SEED_STRIDE + k for k in range(4)]
    assert cli["prompt"].tolist() == api["prompt"].tolist() and cli["strategy"].tolist() == api["strategy"].tolist()
    assert all(np.array_equal(a, b) for a, b in zip(cli_images, api_images))

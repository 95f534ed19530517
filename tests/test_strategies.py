"""Prompt strategies -> generation requests (pure logic, no models)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from datacrafter_widget.loop.strategies import (
    CLASS_TEMPLATES,
    PERTURB_STRENGTHS,
    StrategyError,
    build_requests,
    fill,
    group_requests,
    negatives_by_class,
)

CLASSES = ["cat", "dog"]
REAL = pd.DataFrame(
    {
        "id": ["r000001", "r000002", "r000003"],
        "label": ["cat", "cat", "dog"],
        "caption": ["a cat on a sofa", "", "a dog in the park"],
    }
)
CAPTIONS = {"r000001": "a cat on a sofa", "r000002": "", "r000003": "a dog in the park"}


def test_class_strategy_cycles_templates_with_sequential_seeds():
    reqs = build_requests("class", classes=CLASSES, per_class=5, seed=100)
    assert [r.seed for r in reqs] == list(range(100, 110))
    assert [r.label for r in reqs] == ["cat"] * 5 + ["dog"] * 5
    assert reqs[0].prompt == "a photo of a cat" and reqs[1].prompt == fill(CLASS_TEMPLATES[1], "cat")
    assert reqs[4].prompt == "a photo of a cat"  # 4 templates, cycled
    assert all(r.strategy == "class" and not r.is_img2img and math.isnan(r.strength) for r in reqs)
    own = build_requests("class", classes=CLASSES, per_class=1, seed=0, prompts=["a sketch of a {class}"])
    assert [r.prompt for r in own] == ["a sketch of a cat", "a sketch of a dog"]


def test_caption_strategy_prompts_with_each_real_caption():
    reqs = build_requests("caption", classes=CLASSES, per_class=3, seed=0, real=REAL, captions=CAPTIONS)
    cat = [r for r in reqs if r.label == "cat"]
    assert [r.parent_id for r in cat] == ["r000001", "r000002", "r000001"]
    assert cat[0].prompt == "a photo of cat, a cat on a sofa" and cat[0].caption == "a cat on a sofa"
    assert cat[1].prompt == "a photo of a cat"  # no caption: the class-name prompt
    dog = [r for r in reqs if r.label == "dog"]
    assert all(r.prompt == "a photo of dog, a dog in the park" for r in dog)
    assert all(not r.is_img2img for r in reqs)  # captions-as-prompts is text-to-image
    custom = build_requests(
        "caption",
        classes=["dog"],
        per_class=1,
        seed=0,
        real=REAL,
        captions=CAPTIONS,
        caption_template="{caption}, {class} breed",
    )
    assert custom[0].prompt == "a dog in the park, dog breed"


def test_perturb_strategy_is_img2img_in_strength_levels():
    reqs = build_requests("perturb", classes=CLASSES, per_class=4, seed=0, real=REAL, captions=CAPTIONS)
    assert all(r.is_img2img and r.parent_id and r.latent_perturbation > 0 for r in reqs)
    assert [r.strength for r in reqs[:4]] == [*PERTURB_STRENGTHS, PERTURB_STRENGTHS[0]]
    assert all(0.5 <= r.strength <= 0.9 for r in reqs)
    fixed = build_requests(
        "perturb", classes=CLASSES, per_class=2, seed=0, real=REAL, strength=0.6, latent_perturbation=0.0
    )
    assert {r.strength for r in fixed} == {0.6} and {r.latent_perturbation for r in fixed} == {0.0}
    with pytest.raises(StrategyError, match="strength"):
        build_requests("perturb", classes=CLASSES, per_class=1, seed=0, real=REAL, strength=1.5)
    with pytest.raises(StrategyError, match="no real training image"):
        build_requests("perturb", classes=["cat", "bird"], per_class=1, seed=0, real=REAL)


def test_custom_strategy_and_negative_prompts_per_class():
    reqs = build_requests(
        "custom",
        classes=CLASSES,
        per_class=2,
        seed=0,
        prompts={"cat": ["a cat in snow", "a cat at night"], "dog": "a {class} swimming"},
        negative_prompts={"cat": "dog, blurry"},
    )
    assert [r.prompt for r in reqs] == ["a cat in snow", "a cat at night", "a dog swimming", "a dog swimming"]
    assert [r.negative_prompt for r in reqs] == ["dog, blurry", "dog, blurry", "", ""]
    only_cat = build_requests("custom", classes=CLASSES, per_class=1, seed=0, prompts={"cat": "a cat"})
    assert [r.label for r in only_cat] == ["cat"]
    assert negatives_by_class("blurry", CLASSES) == {"cat": "blurry", "dog": "blurry"}


def test_bad_input_names_the_problem():
    with pytest.raises(StrategyError, match="unknown strategy 'magic'"):
        build_requests("magic", classes=CLASSES, per_class=1, seed=0)
    with pytest.raises(StrategyError, match=r"unknown class\(es\) \['bird'\]"):
        build_requests("custom", classes=CLASSES, per_class=1, seed=0, prompts={"bird": "a bird"})
    with pytest.raises(StrategyError, match=r"negative_prompts names unknown class\(es\) \['bird'\]"):
        build_requests("class", classes=CLASSES, per_class=1, seed=0, negative_prompts={"bird": "x"})
    with pytest.raises(StrategyError, match="empty"):
        build_requests("custom", classes=CLASSES, per_class=1, seed=0, prompts={"cat": "  "})
    with pytest.raises(StrategyError, match="needs prompts"):
        build_requests("custom", classes=CLASSES, per_class=1, seed=0)
    with pytest.raises(StrategyError, match="at least 1"):
        build_requests("class", classes=CLASSES, per_class=0, seed=0)
    with pytest.raises(StrategyError, match="starts from real images"):
        build_requests("caption", classes=CLASSES, per_class=1, seed=0, real=None)


def test_grouping_batches_classes_and_strategies_together():
    reqs = (
        build_requests("class", classes=CLASSES, per_class=2, seed=0)
        + build_requests("caption", classes=CLASSES, per_class=2, seed=4, real=REAL, captions=CAPTIONS)
        + build_requests("perturb", classes=CLASSES, per_class=3, seed=8, real=REAL, captions=CAPTIONS)
    )
    groups = group_requests(reqs)
    # every text-to-image request (both strategies, both classes) shares one group; img2img by strength
    assert groups[0] == list(range(8))
    assert sorted(i for g in groups for i in g) == list(range(len(reqs)))
    for g in groups[1:]:
        assert len({reqs[i].strength for i in g}) == 1 and all(reqs[i].is_img2img for i in g)
    assert fill("a {} {class}, {caption},", "cat") == "a cat cat"


def test_spread_first_puts_one_caption_of_every_context_before_any_repeat():
    from datacrafter_widget.loop.strategies import spread_first

    rng = np.random.default_rng(0)
    contexts = np.eye(4)
    # 12 captions of context 0, 2 of each other context, shuffled
    which = rng.permutation([0] * 12 + [1, 1, 2, 2, 3, 3])
    emb = contexts[which] + 0.01 * rng.normal(size=(len(which), 4))
    order = spread_first(emb)
    assert sorted(order) == list(range(len(which)))
    assert sorted(which[order[:4]].tolist()) == [0, 1, 2, 3]

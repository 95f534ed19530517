"""The colored-digits starter dataset: spurious correlation as specified, determinism, disjoint splits."""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import pytest

from datacrafter_widget.data.dataset import DatasetError
from datacrafter_widget.data.images import png_bytes
from datacrafter_widget.starter.digits import BACKGROUNDS, CLASSES, TIED_BACKGROUND, caption_for, colored_digits


@functools.lru_cache(maxsize=None)
def build(shots: int, spurious: float, seed: int):
    return colored_digits(shots=shots, spurious=spurious, seed=seed, pool_variants=1)


def tied_rate(frame: pd.DataFrame) -> float:
    return float((frame["background"] == frame["label"].map(TIED_BACKGROUND)).mean())


def chi2_p(frame: pd.DataFrame) -> float:
    from scipy.stats import chi2_contingency

    table = pd.crosstab(frame["label"], frame["background"])
    return float(chi2_contingency(table.to_numpy())[1])


@pytest.mark.parametrize("spurious,seed", [(0.0, 0), (0.3, 0), (0.3, 1), (0.8, 2), (1.0, 0)])
def test_train_background_tied_to_class_with_probability_spurious(spurious, seed):
    train = build(25, spurious, seed).train
    assert len(train) == 250 and sorted(train.frame["label"].value_counts().unique()) == [25]
    chance = 1 / len(BACKGROUNDS)
    expected = spurious + (1 - spurious) * chance  # forced to the tied colour, else uniform over all
    sd = math.sqrt(expected * (1 - expected) / len(train))
    rate = tied_rate(train.frame)
    assert abs(rate - expected) <= 4 * sd + 1e-9
    # the chance-corrected agreement is the measured correlation; it estimates `spurious`
    kappa = (rate - chance) / (1 - chance)
    assert abs(kappa - spurious) <= 4 * sd / (1 - chance) + 1e-9


def test_test_split_has_no_class_background_association():
    for spurious, seed in [(1.0, 0), (0.8, 2)]:
        ds = build(25, spurious, seed)
        test = ds.test.frame
        assert len(test) == 300
        sd = math.sqrt(0.2 * 0.8 / len(test))
        assert abs(tied_rate(test) - 0.2) <= 4 * sd
        assert chi2_p(test) > 0.001
    # the same statistic does detect the association where it exists
    assert chi2_p(build(25, 0.8, 2).train.frame) < 1e-10


def test_same_seed_same_bytes_and_other_seed_differs():
    a = colored_digits(shots=5, spurious=0.5, seed=7, pool_variants=1)
    b = colored_digits(shots=5, spurious=0.5, seed=7, pool_variants=1)
    for split in ("pool", "train", "test"):
        fa, fb = getattr(a, split).frame, getattr(b, split).frame
        pd.testing.assert_frame_equal(fa.drop(columns="image"), fb.drop(columns="image"))
        assert [png_bytes(im) for im in fa["image"]] == [png_bytes(im) for im in fb["image"]]
    c = colored_digits(shots=5, spurious=0.5, seed=8, pool_variants=1)
    assert [png_bytes(im) for im in a.train.frame["image"]] != [png_bytes(im) for im in c.train.frame["image"]]


def test_splits_never_share_a_source_scan():
    pools = set()
    for seed in (0, 1, 2):
        ds = build(25, 0.3 if seed == 1 else (0.0 if seed == 0 else 0.8), seed)
        pool, train, test = (set(getattr(ds, s).frame["source_index"]) for s in ("pool", "train", "test"))
        assert not (pool & train) and not (pool & test) and not (train & test)
        assert len(train) == 250  # no scan used twice inside train
        pools.add(frozenset(pool))
    assert len(pools) == 1  # the pool is the same for every seed, so starter models never see a train/test scan


def test_images_attributes_and_captions():
    ds = build(25, 0.3, 0)
    assert ds is ds.train and ds.classes == CLASSES
    frame = ds.test.frame
    for i in range(0, len(frame), 37):
        row = frame.iloc[i]
        im = ds.test.image(i)
        assert im.mode == "RGB" and im.size == (32, 32)
        assert row["label"] == row["digit"]
        assert row["caption"] == caption_for(
            row["digit"], row["foreground"], row["background"], row["thickness"], row["slant"]
        )
        corner = np.array(im.getpixel((0, 0)))
        assert np.abs(corner - np.array(BACKGROUNDS[row["background"]])).max() <= 2
    assert set(frame["background"]) == set(BACKGROUNDS)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"shots": 0}, "shots=0"),
        ({"shots": 26}, "shots=26"),
        ({"spurious": 1.5}, "spurious=1.5"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(DatasetError, match=match):
        colored_digits(**kwargs)

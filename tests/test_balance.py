"""Rebalancing from "fewer of these" lassos: the target histogram, the mixture weights, the prompt order."""

from __future__ import annotations

import numpy as np

from datacrafter_widget.loop.balance import (
    NONE,
    axis_target,
    axis_targets,
    measure_following,
    mixture_weights,
    spread,
    spread_joint,
)


def _person(rng, n, generator, own_rate, other_rate):
    """Cells drawn from `generator`; each image lassoed for its cell (own_rate per cell) or for another reason."""
    values = rng.choice(len(generator), size=n, p=generator)
    lassoed = (rng.random(n) < np.asarray(own_rate)[values]) | (rng.random(n) < other_rate)
    return values, lassoed


def test_lassoing_the_excess_of_one_cell_asks_for_an_even_histogram():
    rng = np.random.default_rng(0)
    generator = [0.41, 0.26, 0.23, 0.07, 0.03]
    # The person lassoes black down to 0.2 and, for other reasons (another attribute), 30% of everything.
    values, lassoed = _person(rng, 2000, generator, [(0.41 - 0.2) / 0.41, 0, 0, 0, 0], 0.3)
    seen, target, capped = axis_target(values, lassoed, 5)
    assert capped == [0]
    assert np.allclose(seen, generator, atol=0.03)
    assert np.allclose(target, 0.2, atol=0.02) and abs(target.sum() - 1) < 1e-9


def test_a_cap_below_the_even_share_holds():
    rng = np.random.default_rng(1)
    values, lassoed = _person(rng, 3000, [0.6, 0.2, 0.2], [0.9, 0, 0], 0.1)
    _, target, capped = axis_target(values, lassoed, 3)
    assert capped == [0]
    assert 0.05 < target[0] < 0.12  # what the person kept of cell 0: 0.6 x 0.1
    assert np.isclose(target[1], target[2]) and np.isclose(target.sum(), 1)


def test_lassos_spread_evenly_over_an_axis_carry_no_signal():
    rng = np.random.default_rng(2)
    values, lassoed = _person(rng, 500, [0.41, 0.26, 0.23, 0.07, 0.03], [0] * 5, 0.5)
    assert axis_target(values, lassoed, 5) is None
    assert axis_target(values, np.zeros(len(values), bool), 5) is None  # no lassos at all
    assert axis_target(values[:5], lassoed[:5], 5) is None  # too few judged images


def test_a_rare_cell_with_a_few_lassos_is_not_capped():
    """3 of 4 pink images lassoed while half of everything is lassoed: chance, not a request."""
    values = np.array([0] * 100 + [1] * 100 + [2] * 4)
    lassoed = np.zeros(len(values), bool)
    lassoed[:50] = lassoed[100:150] = True
    lassoed[200:203] = True
    assert axis_target(values, lassoed, 3) is None


def test_mixture_weights_follow_what_the_generator_does():
    target = np.array([0.2, 0.2, 0.2, 0.2, 0.2])
    own = np.array([0.41, 0.26, 0.23, 0.07, 0.03])
    follow = np.vstack([own, np.eye(5)])  # row 0: no phrase (the generator's own histogram)
    w = mixture_weights(follow, target)
    assert np.all(w >= 0) and np.isclose(w.sum(), 1)
    assert np.allclose(follow.T @ w, target, atol=1e-6)
    # A generator that ignores the pink phrase (it draws its own histogram then): the other
    # phrases make up for it as far as they can, and pink gets no weight it cannot use.
    follow[5] = own
    w = mixture_weights(follow, target)
    assert np.isclose(w.sum(), 1)
    assert np.abs(follow.T @ w - target).sum() < np.abs(own - target).sum()


def test_mixture_weights_prefer_the_phrase_that_keeps_the_class():
    # Two phrases land in the wanted cell equally well; one of them makes the generator lose the
    # class (the class filter keeps 40% of its images): the weight goes to the other one.
    target = np.array([0.5, 0.5])
    follow = np.array([[0.5, 0.5], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    keep = np.array([0.9, 0.4, 0.9, 0.9])
    w = mixture_weights(follow, target, keep=keep)
    assert w[2] > 0.3 and w[1] < 0.05, w
    # the histogram still reaches the target
    assert np.abs(follow.T @ w - target).sum() < 0.1


def test_measure_following_reads_the_histogram_off_the_kept_images():
    batches = {
        NONE: (np.array([0, 1, 0, 1]), np.array([True, True, True, True])),
        "red": (np.array([0, 0, 1, 1]), np.array([True, True, False, False])),
    }
    follow, keep = measure_following(["red"], lambda p: batches[p], 2)
    assert np.allclose(follow, [[0.5, 0.5], [1.0, 0.0]])
    assert np.allclose(keep, [1.0, 0.5])


def test_every_prefix_of_the_spread_follows_the_weights():
    weights = {NONE: 0.1, "a": 0.5, "b": 0.25, "c": 0.15}
    order = spread(weights, 40, np.random.default_rng(0))
    for k in range(1, 41):
        counts = {p: order[:k].count(p) for p in weights}
        assert all(abs(counts[p] - weights[p] * k) < 1.0 + 1e-9 for p in weights), (k, counts)
    assert spread({"a": 1.0, "b": 0.0}, 3, np.random.default_rng(0)) == ["a", "a", "a"]


def test_one_lasso_per_cell_is_read_per_lasso_even_when_lassos_avoid_each_other():
    """The person lassoes the excess black backgrounds, then (among the images left) the excess red
    and orange digits. Those lassos avoid the black images, so read all together the lassos
    misstate the foreground caps (red at 0.13 instead of 0.2, seen when `groups` is left out); read
    lasso by lasso, each says which cell it wants fewer of, and by how much."""
    rng = np.random.default_rng(3)
    n = 600
    bg = rng.choice(5, size=n, p=[0.41, 0.26, 0.23, 0.07, 0.03])
    fg = rng.choice(5, size=n, p=[0.36, 0.11, 0.11, 0.11, 0.31])
    groups = np.full(n, -1)
    black = np.flatnonzero(bg == 0)
    groups[black[: int((0.41 - 0.2) * n)]] = 0
    red = np.flatnonzero((fg == 0) & (groups < 0))
    groups[red[: int((0.36 - 0.2) * n)]] = 1
    orange = np.flatnonzero((fg == 4) & (groups < 0))
    groups[orange[: int((0.31 - 0.2) * n)]] = 2
    cells = {"background": (bg, 5), "foreground": (fg, 5)}
    got = axis_targets(cells, groups >= 0, groups=groups)
    assert got["background"][2] == [0] and got["foreground"][2] == [0, 4]
    assert np.allclose(got["background"][1], 0.2, atol=0.01)
    assert np.allclose(got["foreground"][1], 0.2, atol=0.01)


def test_the_joint_spread_varies_the_combinations_and_keeps_every_prefix_balanced():
    # Two axes of five even phrases (colour, background): spread one by one, both orders cycle with
    # period five and a class repeats five (colour, background) pairs; jointly, 24 slots (a class's
    # mixture) give at least 20 pairs.
    colours = {c: 0.2 for c in ("red", "green", "blue", "purple", "orange")}
    backs = {b: 0.2 for b in ("black", "white", "gray", "pink", "lightblue")}
    for seed in range(10):
        assert len(set(spread_joint([colours, backs], 24, np.random.default_rng(seed)))) >= 20
    combos = spread_joint([colours, backs], 25, np.random.default_rng(0))
    for axis, w in ((0, colours), (1, backs)):
        for k in range(1, 26):
            counts = {p: sum(1 for c in combos[:k] if c[axis] == p) for p in w}
            assert max(abs(n - 0.2 * k) for n in counts.values()) <= 1.0, (axis, k, counts)
    # uneven weights, and a component ("") of the generator's own choice
    combos = spread_joint([{"": 0.1, "a": 0.6, "b": 0.3}, {"x": 0.5, "y": 0.5}], 40, np.random.default_rng(1))
    first = [c[0] for c in combos]
    assert first.count("a") == 24 and first.count("b") == 12 and first.count("") == 4
    assert len(set(combos)) == 6

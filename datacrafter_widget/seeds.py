"""The seed policy: which seed every generated image gets, in one place.

Image k of a round (in request order: strategy, then class, then image) gets
`image_seed(round_seed(round, seed), k)`, i.e. `round_seed(round, seed) + k`. An explicit seed
wins, otherwise round r starts at r * ROUND_SEED_STRIDE, so the same round in the same project
gives the same seeds, and so the same images, whether it came from Python, the widget or the CLI.
The paths that make images all follow it: the round planner (loop/strategies.py), GAP rounds
(class i's images are k = i * per_class + j), prompt evolution's candidate batches (k = 0 .. batch-1,
the seeds of the round the evolved prompts will generate in), and `Generator(prompts, seed=s)`
with one int seed (image k gets image_seed(s, k)).

Seeds of other random streams are derived from an image's or a run's seed where they are drawn
and say so there (GAP's token optimisation, the latent perturbation's noise, the VAE sample, the
starter's training phases); they never change which seed an image is stored with.

A leaf module (imports nothing) so that every layer can use it.
"""

from __future__ import annotations

__all__ = ["ROUND_SEED_STRIDE", "image_seed", "round_seed"]

ROUND_SEED_STRIDE = 100_000  # default seeds of round r start at r * ROUND_SEED_STRIDE


def round_seed(round_number: int, seed: int | None = None) -> int:
    """The seed of a round's first image; image k of the round gets image_seed(round_seed(...), k).

    An explicit `seed` wins, otherwise round r starts at r * ROUND_SEED_STRIDE, so rounds of up to
    100,000 images never share a seed and a round is reproducible from its number alone.
    """
    return int(seed) if seed is not None else int(round_number) * ROUND_SEED_STRIDE


def image_seed(base: int, k: int) -> int:
    """The seed of image k of a run whose first image has seed `base`: base + k."""
    return int(base) + int(k)

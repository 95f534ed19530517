"""Upper bounds on every size a call takes, in one place, each with a documented way to raise it.

Why: a typo such as `steps=10**9` or `per_class=10**9` is accepted by type checks alone and then
eats the kernel (memory grows until the machine kills it, or a background job plans forever with
no result and no error). Every size a call takes is checked here before anything is planned or
recorded; the error gives the limit and how to raise it.

Raise a limit for this process::

    import datacrafter_widget as dc
    dc.limits.set(steps=2000)                 # until changed again
    with dc.limits.raised(per_class=50_000):  # only inside the block
        crafter.generate(per_class=20_000)

or for every process, before it starts: `DATACRAFTER_LIMIT_STEPS=2000` (the name in capitals after
`DATACRAFTER_LIMIT_`). A value set with `set` wins over the environment, which wins over the default.

Memory: a plan whose estimate (batch activations, planned requests) is above `memory_note_mb`
says its estimate before it starts (a `ResourceNote` warning).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = [
    "DEFAULTS",
    "LimitError",
    "ResourceNote",
    "check",
    "check_round",
    "estimate_round_mb",
    "get",
    "note_memory",
    "raised",
    "reset",
    "set",
    "summary",
]

#: name -> (default, what it bounds)
DEFAULTS: dict[str, tuple[int, str]] = {
    "steps": (1000, "sampling steps per image (generate, regenerate, evolve)"),
    "per_class": (10_000, "images per class and strategy in one round (generate, adversarial)"),
    "round_images": (100_000, "images in one round, all classes and strategies together"),
    "batch_size": (512, "images rendered in one batch"),
    "image_pixels": (64_000_000, "pixels of one image stored in a project (width x height)"),
    "resolution": (4096, "the generator's image side in pixels"),
    "gap_steps": (20_000, "GAP token-optimisation steps per class"),
    "gap_tokens": (256, "GAP learned tokens per class"),
    "evolve_population": (1000, "evolution candidates per class and generation"),
    "evolve_generations": (1000, "evolution generations"),
    "memory_note_mb": (2048, "a plan estimated above this many MB says so before it starts"),
}
_ENV = "DATACRAFTER_LIMIT_"
_set: dict[str, int] = {}


class LimitError(ValueError):
    """A size above its limit; the message gives the limit and how to raise it."""


class ResourceNote(UserWarning):
    """A plan's memory estimate, said before a memory-heavy plan starts."""


def _known(name: str) -> None:
    if name not in DEFAULTS:
        raise KeyError(f"unknown limit {name!r}: the limits are {sorted(DEFAULTS)}")


def get(name: str) -> int:
    """The limit in force: set() first, then the DATACRAFTER_LIMIT_<NAME> environment variable, then the default."""
    _known(name)
    if name in _set:
        return _set[name]
    env = os.environ.get(_ENV + name.upper())
    if env is not None and env.strip():
        try:
            value = int(env.replace("_", ""))
        except ValueError:
            raise LimitError(f"environment variable {_ENV + name.upper()}={env!r} is not a whole number") from None
        if value < 1:
            raise LimitError(f"environment variable {_ENV + name.upper()}={env!r} must be >= 1")
        return value
    return DEFAULTS[name][0]


def set(**limits: int) -> None:  # noqa: A001 - read as dc.limits.set(steps=...)
    """Raise (or lower) limits for this process, e.g. dc.limits.set(steps=2000, per_class=50_000)."""
    for name, value in limits.items():
        _known(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LimitError(f"dc.limits.set({name}={value!r}): a limit is a whole number >= 1")
    _set.update(limits)


def reset(*names: str) -> None:
    """Forget values given with set() (all of them without names): the environment or default applies again."""
    for name in names or list(_set):
        _known(name)
        _set.pop(name, None)


@contextlib.contextmanager
def raised(**limits: int) -> Iterator[None]:
    """Limits changed only inside a `with` block."""
    before = dict(_set)
    set(**limits)
    try:
        yield
    finally:
        _set.clear()
        _set.update(before)


def _how(name: str) -> str:
    return f"raise it with dc.limits.set({name}=...) or the environment variable {_ENV + name.upper()}"


def check(name: str, value: Any, what: str | None = None) -> None:
    """Raise LimitError if a whole-number size is above its limit (None and non-numbers are left to the caller)."""
    if value is None or isinstance(value, bool):
        return
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return
    limit = get(name)
    if number > limit:
        raise LimitError(
            f"{what or name}={value!r} is above the limit of {limit} ({DEFAULTS[name][1]}): use a smaller value, "
            f"or, if you mean it, {_how(name)}"
        )


def check_round(*, per_class: Any = None, steps: Any = None, batch_size: Any = None, images: Any = None) -> None:
    """The sizes of one generation round (RoundSpec.validated and the round's plan)."""
    check("per_class", per_class)
    check("steps", steps)
    check("batch_size", batch_size)
    check("round_images", images, "images in the round (per_class x classes x strategies)")


def estimate_round_mb(n_images: int, batch_size: int, resolution: int) -> float:
    """Rough peak memory (MB) of a round beyond the model weights: one batch through the VAE decoder (its
    widest layers hold about three 128-channel float32 maps per pixel, ~1.5 KB a pixel; on a GPU this is
    GPU memory) plus each planned request and its stored row (about 4 KB per image)."""
    pixels = max(1, int(resolution)) ** 2
    batch = min(max(1, int(batch_size)), max(1, int(n_images)))
    return (batch * pixels * 1536 + int(n_images) * 4096) / 2**20


def _physical_mb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (AttributeError, OSError, ValueError):
        return None


def note_memory(what: str, estimate_mb: float) -> None:
    """Say a memory-heavy plan's estimate (a ResourceNote warning) before it starts."""
    if estimate_mb > get("memory_note_mb"):
        total = _physical_mb()
        warnings.warn(
            f"{what}: estimated peak memory about {estimate_mb:,.0f} MB beyond the model weights"
            + (f" (this machine has {total:,.0f} MB of RAM)" if total is not None else "")
            + "; a smaller batch_size lowers it",
            ResourceNote,
            stacklevel=3,
        )


def summary() -> dict[str, int]:
    """Every limit in force, e.g. to print them."""
    return {name: get(name) for name in DEFAULTS}

"""What a generation round is, as plain data.

`RoundSpec` is the single description of a round. Every entry point makes one and nothing else:
`crafter.generate(...)` (the API), the widget's Generate button (`RoundSpec.from_dict(message)`),
the `[[rounds]]` tables of a `datacrafter run` TOML config (`RoundSpec.from_dict(table)`), and
from it come the round's entry in rounds.json (`spec.to_dict()` plus status fields) and the
settings columns of its store rows. `RoundSpec.validated()` checks every argument at the API
boundary, before anything is recorded; errors name the argument and the values it allows.

Seeds follow the one seed policy (datacrafter_widget/seeds.py, re-exported here): image k of a
round (in request order: strategy, then class, then image) gets seed `round_seed(round, seed) + k`;
an explicit seed wins, otherwise round r starts at r * ROUND_SEED_STRIDE. The same spec in the same
round number therefore gives the same seeds, and so the same images, whether it came from Python,
the widget or the CLI.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Union

from .. import limits
from ..loop.strategies import GENERATE_STRATEGIES, StrategyError
from ..seeds import ROUND_SEED_STRIDE, round_seed  # re-exported: the seed policy a spec follows

__all__ = ["RoundSpec", "RoundSpecError", "round_seed", "ROUND_SEED_STRIDE", "MAX_SEED", "Prompts"]

MAX_SEED = 2**63 - 1  # seeds are stored as int64

#: prompts: one template for every class, a list of templates, or {class: prompt or [prompts]}
Prompts = Union[str, Sequence[str], Mapping[str, Union[str, Sequence[str]]]]


class RoundSpecError(StrategyError):
    """A round argument out of range or of the wrong type; the message names it and the allowed values."""


def _number(name: str, value: Any, allowed: str, none: str, ok: bool, in_range: Callable[[Any], bool]) -> float | None:
    """The checks numbers share: None allowed only when `none` says what it means, then type, then range."""
    if none:
        allowed += f", or None ({none})"
    if value is None:
        if none:
            return None
        raise RoundSpecError(f"{name}=None: {name} must be {allowed}")
    if not ok or not in_range(value):
        raise RoundSpecError(f"{name}={value!r}: {name} must be {allowed}")
    return float(value)


def _whole(name: str, value: Any, *, minimum: int, maximum: int | None = None, none: str = "") -> int | None:
    """A whole number >= minimum (integral floats such as 2.0 accepted), or None when `none` says what None means."""
    allowed = f"a whole number >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = real and (isinstance(value, numbers.Integral) or (math.isfinite(float(value)) and float(value).is_integer()))
    checked = _number(
        name, value, allowed, none, ok, lambda v: minimum <= int(v) and (maximum is None or int(v) <= maximum)
    )
    return None if checked is None else int(value)  # int(value), not int(float): exact beyond 2**53


def _real(
    name: str, value: Any, *, low: float, high: float | None = None, open_low: bool = False, none: str = ""
) -> float | None:
    """A finite real number in range, or None when `none` says what None means."""
    lo = f"> {low}" if open_low else f">= {low}"
    allowed = f"a finite number {lo}" + (f" and <= {high}" if high is not None else "")
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    return _number(
        name,
        value,
        allowed,
        none,
        ok,
        lambda v: (float(v) > low if open_low else float(v) >= low) and (high is None or float(v) <= high),
    )


def _text_list(name: str, value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if isinstance(items, (Mapping, bytes)) or not isinstance(items, Sequence):
        raise RoundSpecError(f"{name}={value!r}: give a string or a list of strings")
    bad = [v for v in items if not isinstance(v, str)]
    if bad:
        raise RoundSpecError(f"{name} holds {bad[0]!r} ({type(bad[0]).__name__}): every prompt must be a string")
    if not items:
        raise RoundSpecError(f"{name}=[]: give at least one prompt")
    return list(items)


def _prompts(value: Any) -> str | list[str] | dict[str, list[str]] | None:
    allowed = "a string, a list of strings, or {class: string or [strings]}"
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        out: dict[str, list[str]] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise RoundSpecError(f"prompts key {k!r} is not a class name: prompts must be {allowed}")
            out[k] = _text_list(f"prompts[{k!r}]", v)
        return out
    if isinstance(value, (bytes, numbers.Number)) or not isinstance(value, Sequence):
        raise RoundSpecError(f"prompts={value!r}: prompts must be {allowed}")
    return _text_list("prompts", value)


def _negatives(value: Any) -> str | dict[str, str] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return dict(value)
    raise RoundSpecError(f"negative_prompts={value!r}: negative_prompts must be a string or {{class: string}}")


@dataclass(frozen=True)
class RoundSpec:
    """One generation round, as plain json-able data (see the module docstring for who makes it).

    strategies: names from `loop.strategies.GENERATE_STRATEGIES` ("evolved" takes its prompts
    from prompts.json); per_class images per class and strategy; None values mean "the
    generator's / crafter's default", resolved when the round runs and recorded in rounds.json.
    """

    strategies: tuple[str, ...] = ("caption",)
    per_class: int = 20
    classes: tuple[str, ...] | None = None
    prompts: str | list[str] | dict[str, list[str]] | None = None
    negative_prompts: str | dict[str, str] | None = None
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = None
    latent_perturbation: float | None = None
    caption_template: str | None = None
    seed: int | None = None
    filter: bool = True
    batch_size: int | None = None

    # ---- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "RoundSpec":
        """A validated spec from a dict (a widget message, a TOML [[rounds]] table, a rounds.json entry).

        "strategy" is accepted for "strategies"; keys that are not spec fields are an error.
        """
        if not isinstance(data, Mapping):
            raise RoundSpecError(f"a round must be a table / dict of settings, got {type(data).__name__}")
        values: dict[str, Any] = dict(data)  # plain data of any type: validated() checks each value
        if "strategy" in values:
            if "strategies" in values:
                raise RoundSpecError("give either strategy or strategies, not both")
            values["strategies"] = values.pop("strategy")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise RoundSpecError(f"unknown round setting(s) {unknown}: the settings are {sorted(names)}")
        return cls(**values).validated()

    def validated(self) -> "RoundSpec":
        """This spec with every value checked and normalised (tuples, ints, floats); raises RoundSpecError."""
        strategies = [self.strategies] if isinstance(self.strategies, str) else self.strategies
        if isinstance(strategies, Mapping) or not isinstance(strategies, Sequence) or not strategies:
            raise RoundSpecError(
                f"strategy={self.strategies!r}: give one of {list(GENERATE_STRATEGIES)} or a list of them"
            )
        strategies = tuple(strategies)
        for s in strategies:
            if s == "gap":
                raise RoundSpecError(
                    "strategy='gap' learns prompt tokens against the student: run it with "
                    "crafter.adversarial(target=...), not crafter.generate"
                )
            if s not in GENERATE_STRATEGIES:
                raise RoundSpecError(f"unknown strategy {s!r}: use one of {list(GENERATE_STRATEGIES)}")
        dupes = sorted({s for s in strategies if strategies.count(s) > 1})
        if dupes:
            raise RoundSpecError(
                f"strategy lists {dupes} more than once: name each strategy once (per_class sets the count)"
            )
        classes = self.classes
        if classes is not None:
            classes = (classes,) if isinstance(classes, str) else classes
            if not isinstance(classes, Sequence) or not all(isinstance(c, str) for c in classes):
                raise RoundSpecError(f"classes={self.classes!r}: give a class name or a list of class names")
            classes = tuple(classes)
        img2img = "perturb" in strategies
        strength = _real(
            "strength", self.strength, low=0.0, high=1.0, open_low=True, none="the perturb levels 0.5, 0.7, 0.9"
        )
        lp = _real("latent_perturbation", self.latent_perturbation, low=0.0, none="the default scale 0.3")
        for name, value in (("strength", strength), ("latent_perturbation", lp)):
            if value is not None and not img2img:
                raise RoundSpecError(
                    f"{name}={value} applies to strategy='perturb' only (image-to-image), but the "
                    f"strategies are {list(strategies)}: drop {name} or add 'perturb'"
                )
        if self.caption_template is not None and not isinstance(self.caption_template, str):
            raise RoundSpecError(
                f"caption_template={self.caption_template!r}: give a string with {{class}} and {{caption}}"
            )
        if not isinstance(self.filter, bool) and type(self.filter).__name__ != "bool_":
            raise RoundSpecError(f"filter={self.filter!r}: filter must be True or False")
        checked = replace(
            self,
            strategies=strategies,
            per_class=int(_whole("per_class", self.per_class, minimum=1) or 0),
            classes=classes,
            prompts=_prompts(self.prompts),
            negative_prompts=_negatives(self.negative_prompts),
            steps=_whole("steps", self.steps, minimum=1, none="the generator's default"),
            guidance=_real("guidance", self.guidance, low=0.0, none="the generator's default"),
            strength=strength,
            latent_perturbation=lp,
            seed=_whole("seed", self.seed, minimum=0, maximum=MAX_SEED, none="round * 100000"),
            filter=bool(self.filter),
            batch_size=_whole("batch_size", self.batch_size, minimum=1, none="the crafter's batch_size"),
        )
        limits.check_round(per_class=checked.per_class, steps=checked.steps, batch_size=checked.batch_size)
        return checked

    # ---- output ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, object]:
        """Plain json-able dict (lists, not tuples); `RoundSpec.from_dict(spec.to_dict()) == spec`."""
        out = asdict(self)
        out["strategies"] = list(self.strategies)
        out["classes"] = None if self.classes is None else list(self.classes)
        return out

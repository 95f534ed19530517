"""The starter kit's prompt vocabulary and grammar, handed to prompt evolution as arguments.

Prompt evolution (loop/evolution.py) is model-agnostic: it mutates phrases from a vocabulary and
renders genomes with a `compose` function. The starter models were trained on one caption
grammar ("a thick red 3 on a black background, slanted left"), so the starter kit supplies both.
"""

from __future__ import annotations

from ..loop.evolution import Genome
from .digits import BACKGROUNDS, FOREGROUNDS

__all__ = ["starter_vocabulary", "starter_compose", "starter_axes"]


def starter_vocabulary() -> list[str]:
    """Attribute phrases the starter models were trained on (colours, backgrounds, strokes, slants)."""
    return (
        [*FOREGROUNDS]
        + [f"on a {b} background" for b in BACKGROUNDS]
        + ["thin", "thick", "slanted left", "slanted right"]
    )


def starter_axes() -> dict[str, list[str]]:
    """The attribute axes whose histogram prompt evolution may rebalance (mutually exclusive phrases)."""
    return {"background": [f"on a {b} background" for b in BACKGROUNDS], "foreground": [*FOREGROUNDS]}


def starter_compose(g: Genome) -> str:
    """Render a genome in the starter caption grammar: 'a photo of a thick red 3 on a black background, slanted left'."""
    # One word per attribute: a second colour / background / stroke / slant would contradict the first
    # ('a 9 on a lightblue background, on a pink background'), so only the first of each is kept.
    groups = {
        "stroke": [p for p in g.phrases if p in ("thin", "thick")],
        "colour": [p for p in g.phrases if p in FOREGROUNDS],
        "where": [p for p in g.phrases if p.startswith("on a ")],
        "lean": [p for p in g.phrases if p.startswith("slanted")],
    }
    if not g.phrases:
        # No attribute chosen: the class prompt itself, as the "class" strategy writes it. The bare
        # grammar ('a 3') is another prompt, and a class that evolution left unchanged must not change.
        return f"a photo of a {g.label}"
    stroke, colour, where, lean = (groups[k][:1] for k in ("stroke", "colour", "where", "lean"))
    grouped = {p for v in groups.values() for p in v}
    other = [p for p in g.phrases if p not in grouped]
    # 'a photo of a ...', the class prompt's register. In training (starter/train.py sample_prompt) a
    # caption opens with 'a photo of a' only when attributes were dropped, so after it a missing
    # stroke or slant word means "unsaid"; after the bare 'a' it also means "regular" / "upright"
    # (full captions), which narrows the images (loop track, benchmarks/results/NOTES.md).
    text = " ".join(["a photo of a", *stroke, *colour, g.label, *where])
    return ", ".join([text, *lean, *other])

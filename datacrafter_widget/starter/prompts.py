"""The starter kit's prompt vocabulary and grammar, handed to prompt evolution as arguments.

Prompt evolution (loop/evolution.py) is model-agnostic: it mutates phrases from a vocabulary and
renders genomes with a `compose` function. The starter models were trained on one caption
grammar ("a thick red 3 on a black background, slanted left"), so the starter kit supplies both.
"""
from __future__ import annotations

from ..loop.evolution import Genome
from .digits import BACKGROUNDS, FOREGROUNDS

__all__ = ["starter_vocabulary", "starter_compose"]


def starter_vocabulary() -> list[str]:
    """Attribute phrases the starter models were trained on (colours, backgrounds, strokes, slants)."""
    return ([*FOREGROUNDS] + [f"on a {b} background" for b in BACKGROUNDS]
            + ["thin", "thick", "slanted left", "slanted right"])


def starter_compose(g: Genome) -> str:
    """Render a genome in the starter caption grammar: 'a thick red 3 on a black background, slanted left'."""
    stroke = [p for p in g.phrases if p in ("thin", "thick")][:1]
    colour = [p for p in g.phrases if p in FOREGROUNDS][:1]
    where = [p for p in g.phrases if p.startswith("on a ")][:1]
    lean = [p for p in g.phrases if p.startswith("slanted")][:1]
    other = [p for p in g.phrases if p not in stroke + colour + where + lean]
    text = " ".join(["a", *stroke, *colour, g.label, *where])
    return ", ".join([text, *lean, *other])

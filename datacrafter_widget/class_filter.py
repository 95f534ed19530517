"""ALIA-style class-consistency filter: flag generated images that look like another class.

ALIA drops edits that a classifier no longer recognises as the intended class. Here the CLIP
embedder's zero-shot prediction is used and the image is *flagged*, not deleted: the person can
still inspect it in the widget, and training skips flagged images by default.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

OFF_CLASS = "off-class"


@dataclass
class ClassFilter:
    """Flag an image when the zero-shot class differs from the intended one.

    `margin` > 0 makes the filter more lenient: an image is flagged only when the predicted
    class beats the intended one by more than `margin` in probability.
    """

    embedder: object
    classes: Sequence[str]
    templates: Sequence[str] | None = None
    margin: float = 0.0

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        return self.embedder.zero_shot(np.asarray(embeddings, dtype=np.float32), list(self.classes), self.templates)

    def check(self, embeddings: np.ndarray, intended: Sequence[str]) -> list[tuple[str, str]]:
        """(flag, reason) per image: ("", "") when on-class, ("off-class", why) otherwise."""
        classes = list(self.classes)
        unknown = sorted({c for c in intended if c not in classes})
        if unknown:
            raise ValueError(f"intended class(es) {unknown} are not among the filter's classes {classes}")
        if len(intended) == 0:
            return []
        probs = self.probabilities(embeddings)
        out = []
        for p, want in zip(probs, intended):
            j = int(p.argmax())
            k = classes.index(want)
            if classes[j] != want and float(p[j] - p[k]) > self.margin:
                out.append((OFF_CLASS, f"zero-shot class {classes[j]!r} (p={p[j]:.2f}) instead of {want!r} (p={p[k]:.2f})"))
            else:
                out.append(("", ""))
        return out

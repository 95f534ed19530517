"""ALIA-style class-consistency filter: flag generated images that look like another class.

ALIA drops edits that a classifier no longer recognises as the intended class. Here the CLIP
embedder classifies each generated image and the image is *flagged*, not deleted: the person can
still inspect it in the widget, and training skips flagged images by default.

Two CLIP classifiers are available: zero-shot text prompts ("a photo of a {class}", ALIA's choice)
and class prototypes (the mean image embedding of each class's real training images). A small
or domain-specific CLIP may not know the class *names* (the starter CLIP knows colours well but
not digit names), so with mode="auto" the filter first checks both on the labelled real images
(prototypes leave-one-out) and uses the more accurate one; `report` says which and how well.
If neither gets at least `min_accuracy` of the real images right (default: half, and clearly above
chance), "auto" flags nothing: an embedder that cannot tell the classes apart would only flag noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OFF_CLASS = "off-class"
MODES = ("auto", "zero-shot", "prototypes")


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass
class ClassFilter:
    """Flag an image when its predicted class differs from the intended one.

    `margin` > 0 makes the filter more lenient: an image is flagged only when the predicted
    class beats the intended one by more than `margin` in probability. Call `fit` with the real
    images' embeddings and labels to enable prototypes (and mode="auto").
    """

    embedder: Any
    classes: Sequence[str]
    templates: Sequence[str] | None = None
    margin: float = 0.0
    mode: str = "auto"
    min_accuracy: float | None = None  # auto mode: max(0.5, 1/k + 0.25) unless given
    prototypes: np.ndarray | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown filter mode {self.mode!r}: use one of {list(MODES)}")
        self.classes = [str(c) for c in self.classes]

    @property
    def active_mode(self) -> str:
        if self.mode == "auto":
            return self.report.get("mode", "zero-shot")
        return self.mode

    def fit(self, real_embeddings: np.ndarray, real_labels: Sequence[str]) -> "ClassFilter":
        """Class prototypes from labelled real images; with mode="auto", pick the more accurate classifier."""
        emb = _unit(np.asarray(real_embeddings, dtype=np.float32))
        labels = np.asarray([str(x) for x in real_labels])
        if len(emb) != len(labels):
            raise ValueError(f"{len(emb)} embeddings but {len(labels)} labels: pass one label per real image")
        k = len(self.classes)
        sums = np.zeros((k, emb.shape[1]), dtype=np.float64)
        counts = np.zeros(k, dtype=np.int64)
        index = {c: i for i, c in enumerate(self.classes)}
        rows = np.array([index.get(l, -1) for l in labels])
        for j in range(len(emb)):
            if rows[j] >= 0:
                sums[rows[j]] += emb[j]
                counts[rows[j]] += 1
        have = counts > 0
        self.prototypes = _unit(np.where(have[:, None], sums / np.maximum(counts, 1)[:, None], 0.0))
        known = rows >= 0
        zs_acc = float((self._zero_shot(emb[known]).argmax(1) == rows[known]).mean()) if known.any() else float("nan")
        # leave-one-out prototypes: an image never votes for its own class prototype
        loo_hits = []
        for j in np.flatnonzero(known).tolist():
            c = int(rows[j])
            if counts[c] < 2:
                continue
            protos = sums.copy()
            protos[c] -= emb[j]
            protos = _unit(np.where(have[:, None], protos / np.maximum(counts - (np.arange(k) == c), 1)[:, None], 0.0))
            loo_hits.append(int((emb[j] @ protos.T).argmax() == c))
        proto_acc = float(np.mean(loo_hits)) if loo_hits else float("nan")
        self.report = {
            "zero_shot_accuracy_on_real": zs_acc,
            "prototype_accuracy_on_real_leave_one_out": proto_acc,
            "real_images": int(known.sum()),
        }
        if self.mode == "auto":
            mode = (
                "prototypes"
                if (np.isfinite(proto_acc) and (not np.isfinite(zs_acc) or proto_acc > zs_acc))
                else "zero-shot"
            )
            best = proto_acc if mode == "prototypes" else zs_acc
            bar = self.min_accuracy if self.min_accuracy is not None else max(0.5, 1.0 / max(k, 1) + 0.25)
            if not np.isfinite(best) or best < bar:
                mode = "off"
                self.report["reason"] = (
                    f"the embedder classifies only {best:.0%} of the real training images correctly (needs {bar:.0%}): "
                    "flags would be noise, so none are set; use a stronger embedder or set filter_mode explicitly"
                )
        else:
            mode = self.mode
        self.report["mode"] = mode
        return self

    def _zero_shot(self, emb: np.ndarray) -> np.ndarray:
        return self.embedder.zero_shot(np.asarray(emb, dtype=np.float32), list(self.classes), self.templates)

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Class probabilities (n, k) from the active classifier."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if self.active_mode == "prototypes":
            if self.prototypes is None:
                raise ValueError("mode='prototypes' needs fit(real_embeddings, real_labels) first")
            scale = float(getattr(self.embedder, "logit_scale", 100.0))
            return _softmax(scale * _unit(emb) @ self.prototypes.T)
        return self._zero_shot(emb)

    def check(self, embeddings: np.ndarray, intended: Sequence[str]) -> list[tuple[str, str]]:
        """(flag, reason) per image: ("", "") when on-class, ("off-class", why) otherwise."""
        classes = list(self.classes)
        unknown = sorted({c for c in intended if c not in classes})
        if unknown:
            raise ValueError(f"intended class(es) {unknown} are not among the filter's classes {classes}")
        if len(intended) == 0:
            return []
        if self.active_mode == "off":
            return [("", "")] * len(intended)
        probs = self.probabilities(embeddings)
        how = "prototype" if self.active_mode == "prototypes" else "zero-shot"
        out = []
        for p, want in zip(probs, intended):
            j = int(p.argmax())
            k = classes.index(want)
            if classes[j] != want and float(p[j] - p[k]) > self.margin:
                out.append((OFF_CLASS, f"{how} class {classes[j]!r} (p={p[j]:.2f}) instead of {want!r} (p={p[k]:.2f})"))
            else:
                out.append(("", ""))
        return out

"""Labelled image sets that load lazily.

A `Dataset` is a table (one row per image) whose `image` column holds either a file path, loaded
on demand, or an in-memory PIL image (small synthetic sets such as the starter digits). Nothing
here loads every full-size image at once.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from .images import to_rgb

_RESERVED = ("image", "label", "caption")


class DatasetError(ValueError):
    """Bad dataset input; the message names the thing and the fix."""


class Dataset:
    """A labelled image set with optional `pool` / `train` / `test` splits."""

    def __init__(
        self,
        frame: pd.DataFrame,
        *,
        classes: Sequence[str] | None = None,
        splits: dict[str, "Dataset"] | None = None,
        report: list[tuple[str, str]] | None = None,
        name: str = "",
        root: str | Path | None = None,
    ) -> None:
        missing = [c for c in ("image", "label") if c not in frame.columns]
        if missing:
            raise DatasetError(f"dataset table is missing column(s) {missing}; it needs 'image' and 'label'")
        frame = frame.reset_index(drop=True).copy()
        frame["label"] = frame["label"].astype(str)
        if "caption" not in frame.columns:
            frame["caption"] = None
        self.frame = frame
        present = sorted(frame["label"].unique().tolist())
        if classes is None:
            classes = present
        else:
            classes = [str(c) for c in classes]
            unknown = sorted(set(present) - set(classes))
            if unknown:
                raise DatasetError(f"labels {unknown} are not among the classes {classes}")
        self.classes: list[str] = list(classes)
        self.splits: dict[str, Dataset] = dict(splits or {})
        self.report: list[tuple[str, str]] = list(report or [])
        self.name = name
        self.root = Path(root) if root is not None else None

    # ---- size and access -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        counts = self.frame["label"].value_counts()
        per_class = ", ".join(f"{c}: {int(counts.get(c, 0))}" for c in self.classes[:10])
        more = ", ..." if len(self.classes) > 10 else ""
        splits = f", splits={sorted(self.splits)}" if self.splits else ""
        skipped = f", skipped={len(self.report)}" if self.report else ""
        return f"Dataset({self.name or 'unnamed'}: {len(self)} images, {len(self.classes)} classes [{per_class}{more}]{splits}{skipped})"

    def image(self, i: int) -> Image.Image:
        """The i-th image as RGB, read from disk if the row holds a path."""
        value = self.frame.at[int(i), "image"]
        if isinstance(value, Image.Image):
            return to_rgb(value)
        path = Path(value)
        if self.root is not None and not path.is_absolute():
            path = self.root / path
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)

    def images(self, indices: Sequence[int] | None = None) -> list[Image.Image]:
        indices = range(len(self)) if indices is None else indices
        return [self.image(i) for i in indices]

    def __getitem__(self, i: int) -> tuple[Image.Image, str]:
        return self.image(i), str(self.frame.at[int(i), "label"])

    @property
    def labels(self) -> list[str]:
        return self.frame["label"].tolist()

    @property
    def captions(self) -> list[str | None]:
        return [None if pd.isna(c) else str(c) for c in self.frame["caption"].tolist()]

    @property
    def attributes(self) -> list[str]:
        return [c for c in self.frame.columns if c not in _RESERVED]

    def to_dataframe(self) -> pd.DataFrame:
        """image, label, caption and one column per attribute (a copy)."""
        return self.frame.copy()

    def subset(self, indices: Sequence[int], name: str | None = None) -> "Dataset":
        return Dataset(self.frame.iloc[list(indices)], classes=self.classes, name=name or self.name, root=self.root)

    # ---- splits ------------------------------------------------------------------------------
    def _split(self, key: str) -> "Dataset | None":
        return self.splits.get(key)

    @property
    def pool(self) -> "Dataset | None":
        return self._split("pool")

    @property
    def train(self) -> "Dataset | None":
        return self._split("train")

    @property
    def test(self) -> "Dataset | None":
        return self._split("test")

    # ---- constructors ------------------------------------------------------------------------
    @classmethod
    def from_images(
        cls,
        images: Sequence[Image.Image],
        labels: Sequence[Any],
        captions: Sequence[str | None] | None = None,
        *,
        name: str = "images",
    ) -> "Dataset":
        """From in-memory PIL images and their labels (converted to RGB)."""
        if len(images) == 0:
            raise DatasetError("no images given: pass at least one PIL image per class")
        if len(images) != len(labels):
            raise DatasetError(f"{len(images)} images but {len(labels)} labels: pass one label per image")
        if captions is not None and len(captions) != len(images):
            raise DatasetError(f"{len(images)} images but {len(captions)} captions: pass one caption per image or none")
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise DatasetError(f"images[{i}] is a {type(im).__name__}, not a PIL image")
        frame = pd.DataFrame({"image": [to_rgb(im) for im in images], "label": [str(l) for l in labels]})
        frame["caption"] = list(captions) if captions is not None else None
        return cls(frame, name=name)

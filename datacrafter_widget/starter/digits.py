"""The "colored digits" starter dataset, built from scikit-learn's bundled 8x8 digits (no download).

Each of the 1,797 real digit scans is rendered to 32x32 RGB with attributes (foreground colour,
background colour, stroke thickness, slant) and a caption made from them. The split of *source*
scans into pool / train-reserve / test is fixed, independent of `seed`, so the starter models
(trained on the pool) never see a scan that lands in any seed's train or test split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from ..data.dataset import Dataset, DatasetError

SIZE = 32
CLASSES = [str(d) for d in range(10)]
FOREGROUNDS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (35, 170, 60),
    "blue": (40, 80, 235),
    "purple": (150, 50, 190),
    "orange": (250, 140, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "pink": (250, 185, 205),
    "lightblue": (160, 210, 245),
}
THICKNESSES = ["thin", "regular", "thick"]
SLANTS = ["left", "upright", "right"]
# Background tied to each class when the spurious correlation holds (Waterbirds-style).
TIED_BACKGROUND = {c: list(BACKGROUNDS)[int(c) % len(BACKGROUNDS)] for c in CLASSES}

_TEST_PER_CLASS = 30
_TRAIN_RESERVE_PER_CLASS = 25
_PARTITION_SEED = 20240521


def caption_for(digit: str, fg: str, bg: str, thickness: str, slant: str) -> str:
    """Caption from the attributes; also the natural prompt for the starter generator."""
    stroke = "" if thickness == "regular" else f"{thickness} "
    lean = "" if slant == "upright" else f", slanted {slant}"
    return f"a {stroke}{fg} {digit} on a {bg} background{lean}"


def render(scan: np.ndarray, fg: str, bg: str, thickness: str, slant: str) -> Image.Image:
    """Render one 8x8 scan (values 0..16) to a 32x32 RGB image with the given attributes."""
    shear = {"left": -0.35, "upright": 0.0, "right": 0.35}[slant]
    gray = Image.fromarray(np.uint8(np.clip(scan, 0, 16) * (255.0 / 16.0)), mode="L")
    big = gray.resize((SIZE - 4, SIZE - 4), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (SIZE, SIZE), 0)
    canvas.paste(big, (2, 2))
    if shear:
        # x_src = x + shear * (y - centre): leans the top of the digit towards `slant`.
        c = SIZE / 2.0
        canvas = canvas.transform(
            (SIZE, SIZE), Image.Transform.AFFINE, (1.0, shear, -shear * c, 0.0, 1.0, 0.0), Image.Resampling.BILINEAR
        )
    ink = np.asarray(canvas, dtype=np.float32) / 255.0
    threshold = {"thin": 0.55, "regular": 0.38, "thick": 0.18}[thickness]
    mask = np.clip((ink - threshold) / 0.12, 0.0, 1.0)[..., None]
    f = np.array(FOREGROUNDS[fg], dtype=np.float32)
    b = np.array(BACKGROUNDS[bg], dtype=np.float32)
    rgb = mask * f + (1.0 - mask) * b
    return Image.fromarray(np.uint8(np.round(rgb)), mode="RGB")


def _partition() -> dict[str, np.ndarray]:
    """Fixed, seed-independent partition of the 1,797 scans into pool / train reserve / test."""
    from sklearn.datasets import load_digits

    targets = load_digits().target
    rng = np.random.default_rng(_PARTITION_SEED)
    parts: dict[str, list[int]] = {"pool": [], "reserve": [], "test": []}
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(targets == d))
        parts["test"] += idx[:_TEST_PER_CLASS].tolist()
        parts["reserve"] += idx[_TEST_PER_CLASS : _TEST_PER_CLASS + _TRAIN_RESERVE_PER_CLASS].tolist()
        parts["pool"] += idx[_TEST_PER_CLASS + _TRAIN_RESERVE_PER_CLASS :].tolist()
    return {k: np.array(sorted(v)) for k, v in parts.items()}


def _build(
    scans: np.ndarray,
    targets: np.ndarray,
    sources: np.ndarray,
    rng: np.random.Generator,
    backgrounds: list[str],
    name: str,
) -> Dataset:
    rows = []
    for src, bg in zip(sources, backgrounds):
        digit = str(int(targets[src]))
        fg = str(rng.choice(list(FOREGROUNDS)))
        thickness = str(rng.choice(THICKNESSES))
        slant = str(rng.choice(SLANTS))
        rows.append(
            {
                "image": render(scans[src], fg, bg, thickness, slant),
                "label": digit,
                "caption": caption_for(digit, fg, bg, thickness, slant),
                "digit": digit,
                "foreground": fg,
                "background": bg,
                "thickness": thickness,
                "slant": slant,
                "source_index": int(src),
            }
        )
    return Dataset(pd.DataFrame(rows), classes=CLASSES, name=name)


def colored_digits(shots: int = 5, spurious: float = 0.0, seed: int = 0, pool_variants: int = 3) -> Dataset:
    """Few-shot coloured digits with `pool`, `train` and `test` splits.

    shots: images per class in `train` (1..25). spurious: probability that a train image's
    background is forced to the one tied to its class; otherwise it is drawn uniformly from all
    backgrounds, so 0.0 means no correlation and the chance-corrected agreement
    (rate - 1/5) / (1 - 1/5) equals `spurious` in expectation. `test` backgrounds are uniform. pool_variants: renderings of each pool scan.
    The returned Dataset is the train split; `.pool`, `.train`, `.test` give all three.
    """
    if not 1 <= int(shots) <= _TRAIN_RESERVE_PER_CLASS:
        raise DatasetError(f"shots={shots} is out of range: use 1 to {_TRAIN_RESERVE_PER_CLASS} images per class")
    if not 0.0 <= float(spurious) <= 1.0:
        raise DatasetError(f"spurious={spurious} is out of range: use a probability from 0.0 to 1.0")
    if int(pool_variants) < 1:
        raise DatasetError(f"pool_variants={pool_variants} must be at least 1")
    from sklearn.datasets import load_digits

    digits = load_digits()
    scans, targets = digits.images, digits.target
    parts = _partition()
    rng = np.random.default_rng(seed)
    all_bgs = list(BACKGROUNDS)

    pool_sources = np.repeat(parts["pool"], int(pool_variants))
    pool = _build(
        scans, targets, pool_sources, rng, [str(rng.choice(all_bgs)) for _ in pool_sources], "colored_digits/pool"
    )

    train_sources = []
    for d in range(10):
        reserve = parts["reserve"][targets[parts["reserve"]] == d]
        train_sources += rng.choice(reserve, size=int(shots), replace=False).tolist()
    train_bgs = []
    for src in train_sources:
        tied = TIED_BACKGROUND[str(int(targets[src]))]
        train_bgs.append(tied if rng.random() < spurious else str(rng.choice(all_bgs)))
    train = _build(scans, targets, np.array(train_sources), rng, train_bgs, "colored_digits/train")

    test_sources = parts["test"]
    test = _build(
        scans, targets, test_sources, rng, [str(rng.choice(all_bgs)) for _ in test_sources], "colored_digits/test"
    )

    splits = {"pool": pool, "train": train, "test": test}
    for split in splits.values():
        split.splits = splits
    train.name = f"colored_digits(shots={shots}, spurious={spurious}, seed={seed})"
    return train

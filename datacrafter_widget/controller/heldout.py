"""Student accuracy per round on a held-out split: the number that says whether the rounds help.

For round r the student is trained from scratch (loop/student.py, deterministic per seed) on the
real train images plus the generated images accepted so far (rounds 1..r; round 0 is real only,
the "before" figure) and evaluated on the held-out split the user named (default: the dataset's
test split). Each round's student and result are cached in <project>/heldout/round_<r>/ as
student.safetensors + student.json + result.json, keyed on the training ids, the held-out images
and the training options, so re-reading `crafter.metrics` costs nothing until the accepted data,
the feedback or the held-out split changes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..data.dataset import Dataset
from ..data.images import image_hash
from ..data.files import atomic_write_bytes

if TYPE_CHECKING:
    from ..data.store import SampleStore
    from ..models.embedder import Embedder

__all__ = ["HELDOUT_DIR", "STUDENT_COLUMNS", "heldout_fingerprint", "round_training_ids", "student_accuracy_by_round"]

HELDOUT_DIR = "heldout"
RESULT_FILE = "result.json"
STUDENT_COLUMNS = ("student_acc", "student_n_train")
# Bump when the student's default recipe changes, so cached accuracies are not reused across recipes.
RECIPE = "cnn4-v1"


def heldout_fingerprint(ds: Dataset) -> str:
    """Content hash of a held-out split (image bytes + labels): the cache key's view of it."""
    h = hashlib.sha256()
    for im, label in zip(ds.images(), ds.labels):
        h.update(image_hash(im).encode())
        h.update(b"\0" + str(label).encode() + b"\n")
    return h.hexdigest()[:16]


def round_training_ids(samples: pd.DataFrame, rnd: int, *, keep_flagged: bool = False) -> list[str]:
    """Ids the round-`rnd` student trains on: real train rows + generated rows accepted in rounds <= rnd."""
    from ..loop.student import accepted_rows

    real = samples[(samples["source"] == "real") & (samples["split"] == "train")]
    gen = accepted_rows(samples, keep_flagged=keep_flagged)
    gen = gen[pd.to_numeric(gen["round"], errors="coerce").fillna(0) <= rnd]
    return real["id"].astype(str).tolist() + gen["id"].astype(str).tolist()


def _key(ids: Sequence[str], heldout: str, options: Mapping[str, Any]) -> str:
    blob = json.dumps(
        {"ids": sorted(ids), "heldout": heldout, "options": dict(options), "recipe": RECIPE},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class _Claim:
    """Who trains one round's held-out student in this process. The widget's background job and
    the notebook's `crafter.metrics` both train missing rounds: the second comes to the same round
    waits for the first instead of training it again, and a background training yields (stops
    within a chunk of steps) when the foreground asks for its round, so nobody waits for a job
    running at a lower priority."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wanted = threading.Event()  # the foreground waits for this round


_claims: dict[str, _Claim] = {}
_claims_lock = threading.Lock()


def _claim(folder: Path) -> _Claim:
    with _claims_lock:
        return _claims.setdefault(str(folder.resolve()), _Claim())


def _take(claim: _Claim, background: bool) -> None:
    """Hold `claim`; the foreground asks a background holder to yield first."""
    if not background:
        claim.wanted.set()
    claim.lock.acquire()
    if not background:
        claim.wanted.clear()


def student_accuracy_by_round(
    store: SampleStore,
    classes: Sequence[str],
    heldout: Dataset,
    rounds: Sequence[int],
    *,
    embedder: Embedder | None = None,
    options: Mapping[str, Any] | None = None,
    fingerprint: str | None = None,
    progress: bool = True,
    train: bool | Collection[int] = True,
    features: Callable[[list[str]], np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per round in `rounds`: round, student_acc (held-out accuracy), student_n_train.

    options go to student.train_student (seed=, steps=, kind=, ...); cached results are reused
    when the training ids, the held-out split and the options are the same. train: which rounds
    without a cached result are trained now (True: all, False: none, or round numbers); the others
    get NaN, so a chart can show what is known while a student trains. features(ids): the
    samples' cached embeddings, which a probe student trains on instead of embedding them again.
    """
    from .. import compute
    from ..loop.student import StudentError

    if heldout is None or len(heldout) == 0:
        raise StudentError(
            "the held-out split is empty: set crafter.heldout to a Dataset with images, or None to turn the column off"
        )
    options = {"seed": 0, **dict(options or {})}
    fingerprint = fingerprint or heldout_fingerprint(heldout)
    samples = store.samples
    root = Path(store.path) / HELDOUT_DIR
    rows = []
    for rnd in rounds:
        ids = round_training_ids(samples, int(rnd))
        key = _key(ids, fingerprint, options)
        folder = root / f"round_{int(rnd)}"
        acc = _cached_accuracy(folder, key)
        if acc is not None:
            rows.append({"round": int(rnd), "student_acc": acc, "student_n_train": len(ids)})
            continue
        if train is not True and (train is False or int(rnd) not in train):
            rows.append({"round": int(rnd), "student_acc": float("nan"), "student_n_train": len(ids)})
            continue
        background = compute.in_background()
        claim = _claim(folder)
        _take(claim, background)
        try:
            acc = _cached_accuracy(folder, key)  # trained meanwhile by whoever held the claim
            if acc is None:
                acc = _train_round(
                    store, classes, heldout, ids, samples, rnd, key, fingerprint, folder, options,
                    embedder=embedder, progress=progress, features=features,
                    yield_to=claim.wanted.is_set if background else None,
                )  # fmt: skip
            if acc is None and background:  # yielded to the foreground: read its result once it is written
                claim.lock.release()
                while claim.wanted.is_set():  # until the foreground holds the claim
                    time.sleep(0.05)
                _take(claim, True)
                acc = _cached_accuracy(folder, key)
        finally:
            claim.lock.release()
        rows.append(
            {"round": int(rnd), "student_acc": float("nan") if acc is None else acc, "student_n_train": len(ids)}
        )
    return pd.DataFrame(rows, columns=["round", *STUDENT_COLUMNS])


def _train_round(
    store: SampleStore,
    classes: Sequence[str],
    heldout: Dataset,
    ids: list[str],
    samples: pd.DataFrame,
    rnd: int,
    key: str,
    fingerprint: str,
    folder: Path,
    options: Mapping[str, Any],
    *,
    embedder: Embedder | None,
    progress: bool,
    features: Callable[[list[str]], np.ndarray] | None,
    yield_to: Callable[[], bool] | None,
) -> float | None:
    """Train, evaluate and cache one round's student; None when it yielded to the foreground."""
    from ..loop.student import LazyImages, evaluate, train_student

    labels = samples.set_index("id").loc[ids, "label"].astype(str).tolist() if ids else []
    student = train_student(
        LazyImages(store.image, ids),
        labels,
        list(classes),
        embedder=embedder,
        progress=progress,
        features=None if features is None else functools.partial(features, ids),
        should_stop=yield_to,
        **options,
    )
    if student.config.cancelled:
        return None  # the foreground trains this round now
    result = evaluate(student, heldout)
    student.save(folder)
    atomic_write_bytes(
        folder / RESULT_FILE,
        json.dumps(
            {
                "key": key,
                "round": int(rnd),
                "accuracy": result["accuracy"],
                "n_heldout": result["n"],
                "n_train": len(ids),
                "heldout": fingerprint,
                "options": dict(options),
                "recipe": RECIPE,
            },
            indent=1,
            default=str,
        ).encode("utf-8"),
    )
    return float(result["accuracy"])


def _cached_accuracy(folder: Path, key: str) -> float | None:
    """The held-out accuracy cached in `folder` for these training ids, split and options; None if none."""
    cached = _read_result(folder)
    return float(cached["accuracy"]) if cached is not None and cached.get("key") == key else None


def _read_result(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None  # missing or half-written: retrain

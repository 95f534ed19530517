"""How good the data is: the student (trained here, given, or saved in the project), its evaluation,
and the per-round metrics with the held-out student accuracy.

The student is this project's (never kept on the shared Models object). Metrics score each round's
images with the class filter's classifier (zero-shot when no classifier works on the real images)
and, when a held-out split is set, a student trained on each round's data (heldout.py, cached).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..data.dataset import Dataset
from ..loop.class_filter import ClassFilter
from ..models.bundle import Models
from .embeddings import Embeddings
from .jobs import Cancel, stop_check
from .project import Project

if TYPE_CHECKING:
    from ..loop.student import Evaluation, Student

__all__ = ["EvaluationService"]


class EvaluationService:
    """Student, evaluation and metrics of one project."""

    def __init__(self, project: Project, models: Models, embeddings: Embeddings, dataset: Dataset | None) -> None:
        self.project = project
        self.models = models
        self.embeddings = embeddings
        self.dataset = dataset
        # options for the per-round held-out student (student.train_student: seed=, steps=, kind=, ...)
        self.heldout_options: dict[str, Any] = {}
        self._heldout: Dataset | str | None = "auto"
        self._heldout_fp: tuple[int, str] | None = None
        self._student: Student | None = None

    # ---- the student -----------------------------------------------------------------------------
    def train_student(
        self, data: Mapping[str, bool], progress: bool | Callable[[int, int], None], cancel: Cancel, options: Any
    ) -> Student:
        """Train on the training set `data` picks (keep_flagged=, include_generated=); saved in the project."""
        from ..loop.student import train_student, training_set_from_samples

        store = self.project.store
        images, labels, ids = training_set_from_samples(
            store.samples,
            store.image,
            keep_flagged=data["keep_flagged"],
            include_generated=data["include_generated"],
        )
        student = train_student(
            images,
            labels,
            self.project.classes,
            embedder=self._embedder(),
            progress=progress,
            should_stop=stop_check(cancel),
            features=lambda: self.embeddings(ids),  # a probe's features: the cached embeddings
            **options,
        )
        student.save(self.project.path / "student")
        self._student = student
        return student

    def current_student(self) -> Student:
        """Trained here > given in models by the user > saved in this project; StudentError if none."""
        from ..loop.student import Student, StudentError

        if self._student is not None:
            return self._student
        if self.models.has("student"):
            return self.models.student
        folder = self.project.path / "student"
        if (folder / "student.json").is_file():
            try:
                self._student = Student.load(folder, embedder=self._embedder())
            except StudentError:
                raise
            except Exception as exc:  # noqa: BLE001 - a truncated or edited file: the student can be trained again
                raise StudentError(
                    f"the saved student in {folder} is damaged ({type(exc).__name__}: "
                    f"{str(exc)[:120]}): train it again with crafter.train_student()"
                ) from None
            return self._student
        raise StudentError("no student yet: call crafter.train_student() first")

    def student(self) -> Student | None:
        from ..loop.student import StudentError

        try:
            return self.current_student()
        except StudentError:
            return None

    def evaluate(self, ds: Dataset | None = None) -> Evaluation:
        from ..loop.student import StudentError, evaluate

        ds = ds if ds is not None else (self.dataset.test if self.dataset is not None else None)
        if ds is None:
            raise StudentError("the project has no test split: pass a Dataset, e.g. crafter.evaluate(ds.test)")
        return evaluate(self.current_student(), ds)

    def _embedder(self) -> Any:
        return self.models.embedder if self.models.has("embedder") else None

    # ---- held-out split --------------------------------------------------------------------------
    @property
    def heldout(self) -> Dataset | None:
        if isinstance(self._heldout, str):
            return self.dataset.test if self.dataset is not None else None
        return self._heldout

    @heldout.setter
    def heldout(self, value: Dataset | str | None) -> None:
        if not (value is None or isinstance(value, Dataset) or value == "auto"):
            raise TypeError(
                f"heldout must be a dc.Dataset (e.g. ds.test), 'auto' (the test split) or None (off), "
                f"got {type(value).__name__}"
            )
        self._heldout, self._heldout_fp = value, None

    # ---- metrics ---------------------------------------------------------------------------------
    def metrics_table(self, *, progress: bool = True, train: bool | Collection[int] = True) -> pd.DataFrame:
        """One row per generation round (metrics.py), with strategies, flag and bad counts, and student_acc
        (train: which rounds' held-out students may be trained now; the others are cached or NaN)."""
        from ..loop.metrics import round_metrics

        emb_model = self.models.require("embedder", "crafter.metrics")
        classes = self.project.classes
        s = self.project.store.samples
        gen = s[s["source"] == "generated"]
        if not len(gen):
            return self._with_student_accuracy(
                pd.DataFrame(columns=["round", "n_generated"]), progress=progress, train=train
            )
        real = s[(s["source"] == "real") & (s["split"] == "train")]
        real_emb = self.embeddings(real["id"].tolist())
        flt = ClassFilter(emb_model, classes, mode=self.project.filter_mode).fit(real_emb, real["label"].tolist())
        if flt.active_mode == "off":  # no classifier works: fall back to zero-shot for the numbers
            flt = ClassFilter(emb_model, classes, mode="zero-shot")
        index = {c: i for i, c in enumerate(classes)}
        real_probs = flt.probabilities(real_emb)
        real_labels = np.array([index[x] for x in real["label"]])
        parent_probs = dict(zip(real["id"], real_probs))
        rows = []
        for rnd, g in gen.groupby("round", sort=True):
            g_emb = self.embeddings(g["id"].tolist())
            probs = flt.probabilities(g_emb)
            seeds = np.array(
                [parent_probs.get(p, np.full(len(classes), np.nan)) for p in g["parent_id"]], dtype=np.float32
            )
            row = round_metrics(
                probs,
                np.array([index[x] for x in g["label"]]),
                g_emb,
                real_emb,
                seed_probs=seeds,
                real_probs=real_probs,
                real_labels=real_labels,
                round=int(str(rnd)),
            )
            row["strategies"] = ",".join(sorted(set(g["strategy"])))
            row["flagged"] = int((g["flag"] != "").sum())
            row["bad"] = int((g["feedback"] == "bad").sum())
            rows.append(row)
        return self._with_student_accuracy(pd.DataFrame(rows), progress=progress, train=train)

    def _with_student_accuracy(
        self, frame: pd.DataFrame, *, progress: bool = True, train: bool | Collection[int] = True
    ) -> pd.DataFrame:
        """Adds student_acc (held-out accuracy of a student trained on each round's data; heldout.py),
        with a round-0 row for the real images alone; cached per round in <project>/heldout/."""
        from .heldout import STUDENT_COLUMNS, heldout_fingerprint, student_accuracy_by_round

        ds = self.heldout
        if ds is None or len(ds) == 0:
            return frame
        if self._heldout_fp is None or self._heldout_fp[0] != id(ds):
            self._heldout_fp = (id(ds), heldout_fingerprint(ds))
        rounds = [0, *sorted(int(r) for r in frame["round"].dropna())]
        acc = student_accuracy_by_round(
            self.project.store,
            self.project.classes,
            ds,
            rounds,
            fingerprint=self._heldout_fp[1],
            embedder=self._embedder(),
            options=self.heldout_options,
            progress=progress,
            train=train,
            features=self.embeddings,
        )
        if len(frame):
            merged = acc.merge(frame.astype({"round": "int64"}), on="round", how="left")
        else:
            merged = acc.assign(n_generated=0)
        first = merged["round"] == 0
        merged.loc[first, "n_generated"] = 0
        merged["n_generated"] = merged["n_generated"].astype("int64")
        if "strategies" in merged:
            merged.loc[first, "strategies"] = "real only"
        student_cols = list(STUDENT_COLUMNS)
        return merged[["round", *[c for c in merged.columns if c not in ["round", *student_cols]], *student_cols]]

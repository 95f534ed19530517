"""The map at scale (issue 22): what the first map of a notebook waits for."""

from __future__ import annotations

import pytest

import datacrafter_widget as dc
from datacrafter_widget.controller import map_service
from datacrafter_widget.loop import m2m


@pytest.mark.parametrize("kernel", [False, True])
def test_layout_compilation_starts_when_a_notebook_opens_a_project_without_a_map(
    tmp_path, monkeypatch: pytest.MonkeyPatch, kernel: bool
) -> None:
    """In a kernel, a project with an embedder and no map yet starts compiling UMAP's kernels at once
    (most of a first map's time), so the map after the display cell needs only its own work; scripts
    and tests start nothing."""
    monkeypatch.setattr(map_service, "_in_kernel", lambda: kernel)
    monkeypatch.setattr(m2m, "_warm_thread", None)
    with dc.DataCrafter(dc.starter.colored_digits(shots=2), models=dc.starter.models(), project=tmp_path / "p"):
        thread = m2m._warm_thread
        assert (thread is not None) is kernel
        if thread is not None:
            thread.join(timeout=300)
            assert not thread.is_alive()
            assert m2m.warm_up() is thread  # once per process


def test_chart_shows_a_rounds_metrics_at_once_and_says_which_students_are_training(tmp_path, monkeypatch) -> None:
    """Issue 22: the chart does not wait for held-out students. The rounds' metrics are drawn at once
    with a note naming the rounds whose student is still training; students train newest round first;
    when they are done the note goes and their accuracies are in the chart's frame."""
    import threading

    from datacrafter_widget.loop import student as student_module
    from datacrafter_widget.models.embedder import Embedder
    from datacrafter_widget.ui.view import CrafterView
    from tests.tiny_models import tiny_open_clip

    ds = dc.starter.colored_digits(shots=3, spurious=0.95, seed=0)
    heldout = dc.Dataset(ds.test.frame.iloc[::3].reset_index(drop=True), classes=ds.classes, name="heldout")
    model, preprocess, tokenizer = tiny_open_clip()
    models = dc.Models(embedder=Embedder(model, preprocess, tokenizer, name="tiny-clip"))
    gate, trained = threading.Event(), []
    real_train = student_module.train_student

    def slow_train(images, labels, classes, **kw):  # a student that takes as long as the test wants
        trained.append(len(images))
        assert gate.wait(120), "the test never let the student finish"
        return real_train(images, labels, classes, **kw)

    monkeypatch.setattr(student_module, "train_student", slow_train)
    with dc.DataCrafter(ds, models=models, project=tmp_path / "p", heldout=heldout) as crafter:
        crafter.heldout_options = {"steps": 20, "width": 8}
        pool = ds.pool.frame.groupby("label").head(4)
        crafter.store.add(
            list(pool["image"]),
            [{"label": str(lab), "split": "generated", "round": 1, "strategy": "class"} for lab in pool["label"]],
        )
        view = CrafterView(crafter)
        try:
            for _ in range(1200):  # the first map, then the metrics without students
                if view.widget.chart and trained:
                    break
                threading.Event().wait(0.1)
            chart = view.widget.chart
            assert chart, "no chart while a student trains"
            assert "rounds 0, 1: training" in chart
            assert view._metrics_frame is not None and view._metrics_frame["round"].tolist() == [0, 1]
            assert trained == [30 + len(pool)]  # round 1 first (more images): the newest round
        finally:
            gate.set()
            view.wait(timeout=300)
        frame = view._metrics_frame
        assert frame is not None and frame["student_acc"].notna().all()
        assert len(trained) == 2 and "training" not in view.widget.chart


def test_snapshot_reads_thumbnails_only_when_they_are_cheap() -> None:
    """The display cell's still picture: small thumbnails are drawn, but when reading them would hold
    up the cell (512 px photos, ~5 ms each), a probe of a few decides and the picture shows dots."""
    import time

    import numpy as np
    import pandas as pd

    from datacrafter_widget.ui.display import SNAPSHOT_PROBE, snapshot_png
    from datacrafter_widget.ui.widget import CrafterWidget

    n = 300
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.random(n), "y": rng.random(n), "label": "a", "source": "real"})
    for delay, expect_all in ((0.0, True), (0.01, False)):  # 0.01 s x 300 = 3 s: over the budget
        read: list[int] = []

        def source(idx: np.ndarray, delay: float = delay, read: list[int] = read) -> np.ndarray:
            read.extend(idx.tolist())
            time.sleep(delay * len(idx))
            return np.full((len(idx), 32, 32, 3), 200, np.uint8)

        w = CrafterWidget()
        w.set_frame(frame)
        w.set_thumbnail_source(source, n)
        start = time.perf_counter()
        png = snapshot_png(w)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(read) == (n if expect_all else SNAPSHOT_PROBE), (delay, len(read))
        assert time.perf_counter() - start < 2.0

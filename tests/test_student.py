"""The student classifier: learns, is deterministic, saves without pickle, fails clearly."""

from __future__ import annotations

from typing import Any

import threading

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from datacrafter_widget.loop.student import (
    Student,
    StudentError,
    accepted_rows,
    evaluate,
    train_student,
    training_set_from_samples,
)


def _colour_set(n_per_class: int = 6, seed: int = 0):
    """Two classes told apart by a drawn shape (bar vs. cross) on random backgrounds."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in ("bar", "cross"):
        for _ in range(n_per_class):
            a = np.zeros((32, 32, 3), np.uint8) + rng.integers(0, 120, size=3, dtype=np.uint8)
            a[14:18, 4:28] = (250, 250, 250)
            if label == "cross":
                a[4:28, 14:18] = (250, 250, 250)
            images.append(Image.fromarray(a))
            labels.append(label)
    return images, labels


def test_learns_and_evaluates_with_tables():
    images, labels = _colour_set()
    student = train_student(images, labels, epochs=15, seed=0, progress=False)
    test_images, test_labels = _colour_set(seed=1)
    result = evaluate(student, (test_images, test_labels))
    assert result["accuracy"] >= 0.9
    assert list(result["per_class"]["class"]) == ["bar", "cross"]
    assert result["per_class"]["n"].tolist() == [6, 6]
    conf = result["confusion"]
    assert isinstance(conf, pd.DataFrame) and conf.shape == (2, 2)
    assert int(conf.values.sum()) == 12
    assert int(np.trace(conf.values)) == round(result["accuracy"] * 12)


def test_deterministic_per_seed_and_seed_matters():
    images, labels = _colour_set()
    a = train_student(images, labels, epochs=3, seed=3, progress=False)
    b = train_student(images, labels, epochs=3, seed=3, progress=False)
    c = train_student(images, labels, epochs=3, seed=4, progress=False)
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b.net.state_dict()[k]), k
    assert any(not torch.equal(v, c.net.state_dict()[k]) for k, v in a.net.state_dict().items())


def test_a_model_built_in_another_thread_does_not_change_a_training():
    """The widget trains held-out students in a background job while the notebook goes on; building
    a model there (loading the checker, say) draws from torch's global RNG. The default CNN draws
    its initialisation and dropout from its own generator, so the student is the same either way
    (this made the quickstart's round-1 accuracy differ between two runs)."""
    images, labels = _colour_set()
    kw = dict(kind="cnn", steps=30, seed=5, progress=False)
    alone = train_student(images, labels, **kw)
    got: list = []
    t = threading.Thread(target=lambda: got.append(train_student(images, labels, **kw)))
    t.start()
    while t.is_alive():
        torch.nn.Linear(64, 64)  # default init: draws from the global RNG
    t.join()
    for k, v in alone.net.state_dict().items():
        assert torch.equal(v, got[0].net.state_dict()[k]), k


def test_save_load_roundtrip_without_pickle(tmp_path):
    images, labels = _colour_set()
    student = train_student(images, labels, epochs=2, seed=0, progress=False)
    folder = student.save(tmp_path / "student")
    assert sorted(p.name for p in folder.iterdir()) == ["student.json", "student.safetensors"]
    loaded = Student.load(folder)
    assert loaded.classes == student.classes
    assert torch.allclose(loaded.logits(images), student.logits(images))
    with pytest.raises(StudentError, match="no saved student"):
        Student.load(tmp_path / "nothing")


def test_clear_errors():
    images, labels = _colour_set()
    with pytest.raises(StudentError, match="no training images"):
        train_student([], [], progress=False)
    with pytest.raises(StudentError, match="not among the classes"):
        train_student(images, labels, classes=["bar"], progress=False)
    student = train_student(images, labels, epochs=1, progress=False)
    with pytest.raises(StudentError, match=r"unknown to the student.*'circle'|'circle'.*unknown to the student"):
        evaluate(student, (images[:2], ["circle", "bar"]))
    with pytest.raises(StudentError, match="unknown to the student"):
        student.class_index("circle")
    with pytest.raises(StudentError, match="needs an embedder"):
        train_student(images, labels, kind="probe", progress=False)


def test_cancel_keeps_finished_epochs():
    images, labels = _colour_set()
    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if done == 2:
            stop.set()

    student = train_student(images, labels, epochs=10, progress=progress, should_stop=stop.is_set)
    assert student.config.cancelled and student.config.trained_epochs == 2
    # a slow epoch (a busy CPU) reports its count again meanwhile: the same numbers, in order
    assert sorted(set(seen) - {0}) == [1, 2] and seen == sorted(seen)
    assert len(student.predict(images)) == len(images)


def test_probe_on_clip_features_is_differentiable():
    from datacrafter_widget.models.embedder import Embedder
    from tests.tiny_models import tiny_open_clip

    model, preprocess, tokenizer = tiny_open_clip()
    embedder = Embedder(model, preprocess, tokenizer, name="tiny-clip")
    images, labels = _colour_set()
    big = [im.resize((96, 96)) for im in images]
    student = train_student(big, labels, embedder=embedder, progress=False, epochs=50)
    assert student.config.kind == "probe" and student.config.embedder == "tiny-clip"
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    student.logits_from_pixels(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert evaluate(student, (big, labels))["accuracy"] > 0.5


def test_custom_backbone_fine_tuning():
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
    images, labels = _colour_set()
    student = train_student(images, labels, backbone=body, image_size=32, epochs=2, progress=False)
    assert student.config.kind == "backbone" and student.config.backbone == "custom"
    assert student.logits(images).shape == (12, 2)


def test_training_set_uses_accepted_generated_only():
    rows = [
        {"id": "r1", "source": "real", "split": "train", "label": "a", "feedback": "", "flag": ""},
        {"id": "r2", "source": "real", "split": "test", "label": "a", "feedback": "", "flag": ""},
        {"id": "g1", "source": "generated", "split": "generated", "label": "a", "feedback": "", "flag": ""},
        {"id": "g2", "source": "generated", "split": "generated", "label": "b", "feedback": "bad", "flag": ""},
        {"id": "g3", "source": "generated", "split": "generated", "label": "b", "feedback": "removed", "flag": ""},
        {"id": "g4", "source": "generated", "split": "generated", "label": "b", "feedback": "", "flag": "off-class"},
        {
            "id": "g5",
            "source": "generated",
            "split": "generated",
            "label": "b",
            "feedback": "good",
            "flag": "off-class",
        },
    ]
    samples = pd.DataFrame(rows)
    assert accepted_rows(samples)["id"].tolist() == ["g1", "g5"]
    assert accepted_rows(samples, keep_flagged=True)["id"].tolist() == ["g1", "g4", "g5"]
    blank = Image.new("RGB", (8, 8))
    images, labels, ids = training_set_from_samples(samples, lambda i: blank)
    assert ids == ["r1", "g1", "g5"] and labels == ["a", "a", "b"] and len(images) == 3


def _tiny_crafter(tmp_path):
    from datacrafter_widget.controller.crafter import DataCrafter
    from datacrafter_widget.models.bundle import Models
    from datacrafter_widget.models.embedder import Embedder
    from datacrafter_widget.models.generator import Generator
    from datacrafter_widget.starter import colored_digits
    from tests.tiny_models import tiny_open_clip, tiny_sd_pipeline

    model, preprocess, tokenizer = tiny_open_clip()
    models = Models(
        generator=Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=2, default_guidance=3.0),
        embedder=Embedder(model, preprocess, tokenizer, name="tiny-clip"),
    )
    return DataCrafter(colored_digits(shots=1, seed=0), models=models, project=tmp_path / "proj"), models


def test_controller_trains_saves_and_evaluates(tmp_path):
    from datacrafter_widget.controller.crafter import DataCrafter
    from datacrafter_widget.models.bundle import Models

    crafter, models = _tiny_crafter(tmp_path)
    with pytest.raises(StudentError, match="no student yet"):
        crafter.evaluate()
    ids = crafter.generate(per_class=1, strategy="class", classes=["0", "1"], filter=False, progress=False)
    crafter.feedback(bad=[ids[0]])
    student = crafter.train_student(epochs=1, progress=False)
    assert student.config.n_train == 10 + 1  # real train + the one accepted generated image
    assert (tmp_path / "proj" / "student" / "student.safetensors").is_file()
    result = crafter.evaluate()
    assert 0.0 <= result["accuracy"] <= 1.0 and result["n"] == 300
    crafter.close()
    again = DataCrafter.open(tmp_path / "proj", models=Models(embedder=models.embedder))
    assert again.evaluate()["accuracy"] == result["accuracy"]  # the saved student, reloaded
    again.close()


def test_controller_passes_its_cancel_to_training(tmp_path):
    """crafter.train_student(cancel=...) takes the public convention (an Event or a callable) and the
    loop gets it as should_stop: a set Event stops before the first step, a callable after two epochs."""
    crafter, _ = _tiny_crafter(tmp_path)
    try:
        stop = threading.Event()
        stop.set()
        student = crafter.train_student(epochs=3, progress=False, cancel=stop)
        assert student.config.cancelled and student.config.trained_epochs == 0
        epochs = []
        student = crafter.train_student(
            epochs=3, progress=lambda done, total: epochs.append(done), cancel=lambda: len(epochs) >= 2
        )
        assert student.config.cancelled and student.config.trained_epochs == 2 and epochs == [1, 2]
    finally:
        crafter.close()


def test_cnn_keeps_a_spatial_map_and_a_fixed_step_budget():
    from datacrafter_widget.loop.student import CNN_STEPS, _small_cnn

    net = _small_cnn(10, 8).eval()
    body = net[:-3]  # up to the 2x2 map, before flatten / dropout / head
    assert body(torch.zeros(1, 3, 32, 32)).shape == (1, 32, 2, 2)
    assert any(isinstance(m, torch.nn.Dropout) for m in net)
    images, labels = _colour_set()
    stop = threading.Event()
    stop.set()  # cancelled before the first step: only the plan is made
    small = train_student(images[:4] + images[-4:], labels[:4] + labels[-4:], should_stop=stop.is_set, progress=False)
    large = train_student(images, labels, should_stop=stop.is_set, progress=False)
    assert small.config.steps == large.config.steps == CNN_STEPS  # more images never mean less training
    a = train_student(images[:4] + images[-4:], labels[:4] + labels[-4:], steps=7, progress=False)
    b = train_student(images, labels, steps=7, progress=False)
    assert a.config.trained_steps == b.config.trained_steps == 7


def test_cnn_is_differentiable_on_pixels():
    images, labels = _colour_set()
    student = train_student(images, labels, steps=3, progress=False)
    x = torch.rand(2, 3, 48, 48, requires_grad=True)  # other sizes are resized inside, differentiably
    student.logits_from_pixels(x)[:, 0].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_a_student_saved_before_the_four_block_cnn_still_loads(tmp_path):
    import json

    from safetensors.torch import save_file

    from datacrafter_widget.loop.student import _small_cnn_v1

    old = _small_cnn_v1(2, 8).eval()
    folder = tmp_path / "old"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in old.state_dict().items()}, str(folder / "student.safetensors"))
    (folder / "student.json").write_text(
        json.dumps(
            {
                "kind": "cnn",
                "classes": ["bar", "cross"],
                "image_size": 32,
                "width": 8,
                "epochs": 40,
                "lr": 5e-3,
                "weight_decay": 1e-4,
                "batch_size": 32,
                "seed": 0,
                "augment": True,
                "embedder": "",
                "feature_dim": 0,
                "backbone": "",
                "mean": [0.5, 0.5, 0.5],
                "std": [0.25, 0.25, 0.25],
                "trained_epochs": 40,
                "n_train": 12,
                "cancelled": False,
                "history": [],
            }
        )
    )
    loaded = Student.load(folder)
    assert loaded.config.arch == "cnn3"
    images, _ = _colour_set()
    x = (
        torch.stack([torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1) for im in images]) - 0.5
    ) / 0.25
    assert torch.allclose(loaded.logits(images), old(x), atol=1e-5)


# ---- held-out student accuracy per round in crafter.metrics (controller/heldout.py) -----------------
def heldout_crafter(tmp_path, every: int, steps: int):
    """A starter project (3 shots) with a tiny CLIP embedder and every `every`-th test image held out; its
    held-out students train `steps` steps. Returns (dataset, crafter)."""
    import datacrafter_widget as dc
    from datacrafter_widget.models.embedder import Embedder
    from tests.tiny_models import tiny_open_clip

    ds = dc.starter.colored_digits(shots=3, spurious=0.95, seed=0)
    heldout = dc.Dataset(ds.test.frame.iloc[::every].reset_index(drop=True), classes=ds.classes, name="heldout")
    model, preprocess, tokenizer = tiny_open_clip()
    models = dc.Models(embedder=Embedder(model, preprocess, tokenizer, name="tiny-clip"))
    crafter = dc.DataCrafter(ds, models=models, project=tmp_path / "p", heldout=heldout)
    crafter.heldout_options = {"steps": steps, "width": 8}
    return ds, crafter


def test_a_background_heldout_student_yields_its_round_and_nobody_trains_a_round_twice(tmp_path, monkeypatch):
    """The widget's background job and the notebook's crafter.metrics train missing rounds in one
    process: the foreground takes over a round the background is training (which stops within a
    chunk of steps and reads the foreground's result), and a background job that comes to a round
    the foreground is training waits for it instead of training it again."""
    import threading

    from datacrafter_widget import compute
    from datacrafter_widget.loop import student as student_module

    ds, crafter = heldout_crafter(tmp_path, every=6, steps=800)
    real_train = student_module.train_student
    calls: list[tuple[bool, Any]] = []  # (in a background job, the student)
    started = threading.Event()

    def counting(*args, **kwargs):
        started.set()
        student = real_train(*args, **kwargs)
        calls.append((compute.in_background(), student))
        return student

    monkeypatch.setattr(student_module, "train_student", counting)
    got: dict[str, Any] = {}

    def background() -> None:
        with compute.background():
            got["background"] = crafter.metrics_table(progress=False, train=[0])

    # 1. The background starts round 0; the foreground asks for it: the background yields.
    job = threading.Thread(target=background)
    job.start()
    assert started.wait(60)
    foreground = crafter.metrics_table(progress=False)
    job.join(60)
    assert [bg for bg, _ in calls] == [True, False]
    assert calls[0][1].config.cancelled and calls[0][1].config.trained_steps < 800  # it stopped early
    assert not calls[1][1].config.cancelled
    assert got["background"]["student_acc"].tolist() == foreground["student_acc"].tolist()  # read, not NaN

    # 2. The foreground trains round 1; a background job asking for it waits and reads the result.
    pool = ds.pool.frame.groupby("label").head(2)
    crafter.store.add(
        list(pool["image"]),
        [{"label": str(l), "split": "generated", "round": 1, "strategy": "class"} for l in pool["label"]],
    )
    calls.clear()
    started.clear()
    fg = threading.Thread(target=lambda: got.__setitem__("foreground", crafter.metrics_table(progress=False)))
    fg.start()
    assert started.wait(60)

    def background_round_1() -> None:
        with compute.background():
            got["background"] = crafter.metrics_table(progress=False, train=[1])

    job = threading.Thread(target=background_round_1)
    job.start()
    fg.join(60)
    job.join(60)
    assert [bg for bg, _ in calls] == [False]  # trained once, by the foreground
    assert got["background"]["student_acc"].tolist() == got["foreground"]["student_acc"].tolist()


def test_metrics_show_heldout_student_accuracy_per_round(tmp_path, monkeypatch):
    from datacrafter_widget.loop import student as student_module
    from datacrafter_widget.loop.metrics import metrics_chart

    ds, crafter = heldout_crafter(tmp_path, every=3, steps=60)
    before = crafter.metrics
    assert before["round"].tolist() == [0] and before["n_generated"].tolist() == [0]
    assert before["student_n_train"].tolist() == [30] and 0.0 <= before.loc[0, "student_acc"] <= 1.0

    # An "ideal generator" round: real pool images stored as generated rows of round 1.
    pool = ds.pool.frame.groupby("label").head(15)
    ids = crafter.store.add(
        list(pool["image"]),
        [{"label": str(l), "split": "generated", "round": 1, "strategy": "class"} for l in pool["label"]],
    )
    after = crafter.metrics
    assert after["round"].tolist() == [0, 1] and after["n_generated"].tolist() == [0, len(ids)]
    assert after["student_n_train"].tolist() == [30, 30 + len(ids)]
    assert after.loc[0, "student_acc"] == before.loc[0, "student_acc"]  # round 0 is cached, unchanged
    assert after.loc[1, "student_acc"] > after.loc[0, "student_acc"]  # the added images help
    assert {"student_acc", "class_maintenance"} <= set(after.columns)
    files = sorted(p.name for p in (crafter.project / "heldout" / "round_1").iterdir())
    assert files == ["result.json", "student.json", "student.safetensors"]
    metrics_chart(after)  # the chart takes the column

    def no_training(*a, **k):
        raise AssertionError("metrics retrained a student although nothing changed")

    monkeypatch.setattr(student_module, "train_student", no_training)
    again = crafter.metrics
    assert again["student_acc"].tolist() == after["student_acc"].tolist()
    monkeypatch.undo()

    crafter.feedback(bad=ids[:5])  # fewer accepted images: retrained
    assert crafter.metrics["student_n_train"].tolist() == [30, 30 + len(ids) - 5]

    crafter.heldout = None
    assert "student_acc" not in crafter.metrics.columns
    with pytest.raises(TypeError, match="heldout must be a dc.Dataset"):
        crafter.heldout = "test"
    crafter.close()


# ---- torchvision classifiers by name (the Stable Diffusion path's student) --------------------------
def test_torchvision_classifier_by_name_trains_from_scratch_offline(tmp_path, monkeypatch):
    import urllib.request

    def no_network(*a, **k):
        raise AssertionError("the student tried to download something")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    images, labels = _colour_set()
    student = train_student(images, labels, backbone="mobilenet_v3_small", image_size=32, epochs=1, progress=False)
    assert student.config.kind == "backbone" and student.config.backbone == "mobilenet_v3_small"
    assert student.config.weights == "" and student.logits(images).shape == (12, 2)
    loaded = Student.load(student.save(tmp_path / "s"))
    assert torch.allclose(loaded.logits(images), student.logits(images))
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    student.logits_from_pixels(x).sum().backward()
    assert x.grad is not None


def test_user_supplied_weights_load_into_a_named_torchvision_model(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    from datacrafter_widget.loop.student import _named_backbone

    source = torchvision.models.mobilenet_v3_small()  # 1000-class head, as published weights have
    with torch.no_grad():
        source.features[0][0].weight.fill_(0.125)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        net = _named_backbone("torchvision:mobilenet_v3_small", 2, weights=path)
        assert torch.equal(net.features[0][0].weight, source.features[0][0].weight)
        assert net.classifier[-1].out_features == 2  # the head is replaced after loading
    images, labels = _colour_set()
    student = train_student(
        images,
        labels,
        backbone="mobilenet_v3_small",
        weights=tmp_path / "w.safetensors",
        image_size=32,
        steps=1,
        lr=1e-9,
        progress=False,
    )
    assert student.config.weights == str(tmp_path / "w.safetensors")
    assert torch.allclose(student.net.features[0][0].weight, source.features[0][0].weight, atol=1e-6)


def test_bad_backbone_names_and_weights_give_clear_errors(tmp_path):
    from safetensors.torch import save_file

    images, labels = _colour_set()
    with pytest.raises(StudentError, match=r"torchvision has no classifier 'resnet1800'.*did you mean.*resnet18"):
        train_student(images, labels, backbone="resnet1800", epochs=1, progress=False)
    with pytest.raises(StudentError, match="is not understood"):
        train_student(images, labels, backbone="keras:resnet18", epochs=1, progress=False)
    with pytest.raises(StudentError, match="does not exist"):
        train_student(images, labels, backbone="resnet18", weights=tmp_path / "missing.safetensors", progress=False)
    save_file({"conv.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(StudentError, match="do not fit torchvision model 'mobilenet_v3_small'"):
        train_student(
            images,
            labels,
            backbone="mobilenet_v3_small",
            weights=tmp_path / "other.safetensors",
            image_size=32,
            progress=False,
        )
    with pytest.raises(StudentError, match="pass backbone="):
        train_student(images, labels, weights=tmp_path / "other.safetensors", progress=False)


def test_a_probe_trains_on_the_projects_cached_embeddings(tmp_path):
    """The probe (the student for photos) and the per-round held-out students read the embeddings the
    project already has instead of loading every training photo and embedding it again (at 512 px a
    photo is 0.75 MB decoded and a ViT-B-32 pass): the same student, no image embedded twice."""
    import datacrafter_widget as dc
    from tests.tiny_models import tiny_models

    models = tiny_models()
    images, labels = _colour_set()
    big = [im.resize((96, 96)) for im in images]
    test_images, test_labels = _colour_set(n_per_class=3, seed=1)
    heldout = dc.Dataset.from_images([im.resize((96, 96)) for im in test_images], test_labels)
    embedded: list[int] = []
    embed = models.embedder.embed_images

    def counting(ims):
        ims = list(ims)
        embedded.append(len(ims))
        return embed(ims)

    with dc.DataCrafter(dc.Dataset.from_images(big, labels), models=models, project=tmp_path / "p") as crafter:
        crafter.embeddings()  # what the first map computes and keeps
        crafter.heldout = heldout
        models.embedder.embed_images = counting
        try:
            student = crafter.train_student(progress=False, epochs=50)
            trained = sum(embedded)
            metrics = crafter.metrics_table(progress=False)
        finally:
            del models.embedder.embed_images
    assert student.config.kind == "probe"
    assert trained == 0, f"the probe embedded {trained} training images again"
    assert sum(embedded) == len(heldout), embedded  # the held-out student embeds only the held-out split
    assert metrics.loc[metrics["round"] == 0, "student_acc"].notna().all()
    direct = train_student(big, labels, embedder=models.embedder, kind="probe", progress=False, epochs=50)
    torch.testing.assert_close(student.logits(big), direct.logits(big), rtol=1e-4, atol=1e-4)


def test_a_slow_training_still_ticks_every_few_seconds(monkeypatch):
    """A chunk of steps slower than compute.HEARTBEAT_S (a busy CPU) reports its count again meanwhile."""
    from datacrafter_widget import compute

    images, labels = _colour_set()
    seen = []
    monkeypatch.setattr(compute, "HEARTBEAT_S", 0.0)  # every step is "slow"
    train_student(images, labels, kind="cnn", steps=30, seed=0, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (2, 2)  # two chunks of 25 steps
    assert len(seen) >= 30  # and a tick at (nearly) every step of them
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

"""DataCrafter controller with tiny random-weight models (and the starter models when shipped)."""

from __future__ import annotations

import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import datacrafter_widget as dc
from datacrafter_widget.models.captioner import Captioner
from datacrafter_widget.loop.class_filter import ClassFilter
from datacrafter_widget.controller.crafter import JobRunningError, UnknownSampleError
from datacrafter_widget.models.embedder import Embedder
from datacrafter_widget.models.generator import Generator
from datacrafter_widget.models.bundle import MissingModelError
from datacrafter_widget.loop.strategies import StrategyError
from tiny_models import tiny_blip, tiny_open_clip, tiny_sd_pipeline

torch.set_num_threads(1)
STEPS = 3
WEIGHTS = Path(dc.__file__).parent / "starter" / "weights"


class CountingEmbedder(Embedder):
    calls = 0

    def embed_images(self, images):
        CountingEmbedder.calls += len(images)
        return super().embed_images(images)


@pytest.fixture(scope="module")
def ds():
    return dc.starter.colored_digits(shots=2, seed=0)


@pytest.fixture(scope="module")
def models():
    model, preprocess, tokenizer = tiny_open_clip()
    return dc.Models(
        generator=Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=STEPS),
        embedder=CountingEmbedder(model, preprocess, tokenizer, name="tiny-clip"),
    )


@pytest.fixture
def crafter(ds, models, tmp_path):
    c = dc.DataCrafter(ds, models=models, project=tmp_path / "proj")
    yield c
    c.close()


def assert_provenance(c, row, strategy):
    assert row["source"] == "generated" and row["split"] == "generated"
    assert row["strategy"] == strategy and row["prompt"].strip() and row["seed"] >= 0
    assert row["steps"] == STEPS and row["guidance"] == 7.5 and row["model"] == "tiny-sd"
    assert row["round"] >= 1 and row["created"] > 0 and row["label"] in c.classes
    assert (c.project / row["file"]).is_file()
    if strategy in ("caption", "perturb"):
        assert row["parent_id"].startswith("r") and c.store.row(row["parent_id"])["label"] == row["label"]
    if strategy == "perturb":
        assert 0.5 <= row["strength"] <= 0.9 and row["latent_perturbation"] > 0
    else:
        assert math.isnan(row["strength"])


def test_creation_stores_real_images_by_split_and_reopens(ds, models, tmp_path):
    c = dc.DataCrafter(ds, models=models, project=tmp_path / "p")
    s = c.samples
    assert (s["split"] == "train").sum() == len(ds.train) and (s["split"] == "test").sum() == len(ds.test)
    assert (s["source"] == "real").all() and (s["round"] == 0).all()
    train = s[s["split"] == "train"]
    assert train["caption"].tolist() == ds.train.captions  # dataset captions kept
    first = ds.train.image(0)
    assert np.array_equal(np.asarray(c.store.image(train["id"].iloc[0])), np.asarray(first))
    c.close()
    again = dc.DataCrafter(ds, models=models, project=tmp_path / "p")  # same project: nothing re-added
    assert len(again.samples) == len(s)
    again.close()
    other = dc.Dataset.from_images([first, first], ["a", "b"])
    with pytest.raises(ValueError, match="created for classes"):
        dc.DataCrafter(other, project=tmp_path / "p")
    browse = dc.DataCrafter.open(tmp_path / "p")  # no models: browsing works
    assert len(browse.samples) == len(s) and browse.classes == ds.classes
    assert len(browse.dataset.train) == len(ds.train) and browse.dataset.test is not None
    with pytest.raises(MissingModelError, match="generator"):
        browse.generate(per_class=1, strategy="class")
    with pytest.raises(MissingModelError, match="embedder"):
        browse.embeddings()
    browse.close()


@pytest.mark.parametrize("strategy", ["class", "caption", "perturb", "custom"])
def test_every_strategy_stores_provenance_complete_images_that_regenerate(crafter, strategy):
    prompts = {c: f"a red {c} on a black background" for c in crafter.classes} if strategy == "custom" else None
    ids = crafter.generate(per_class=1, strategy=strategy, prompts=prompts, progress=False)
    assert len(ids) == len(crafter.classes)
    s = crafter.samples.set_index("id")
    for i in ids:
        assert_provenance(crafter, s.loc[i].to_dict() | {"file": s.loc[i, "file"]}, strategy)
    assert sorted(s.loc[ids, "label"]) == sorted(crafter.classes)
    if strategy == "caption":  # captions-as-prompts: the parent's caption is in the prompt
        row = s.loc[ids[0]]
        assert row["prompt"] == f"a photo of {row['label']}, {s.loc[row['parent_id'], 'caption']}"
    for i in ids[:2] + ids[-1:]:  # replaying the batch is bit-exact; alone, equal up to rounding
        assert np.array_equal(np.asarray(crafter.regenerate(i)), np.asarray(crafter.store.image(i)))
        diff = np.abs(
            np.asarray(crafter.regenerate(i, alone=True), dtype=int) - np.asarray(crafter.store.image(i), dtype=int)
        )
        assert diff.max() <= 3 and diff.mean() < 0.05
    assert s.loc[ids, "batch_index"].tolist()[:8] == list(range(8))
    assert crafter.rounds[-1]["status"] == "done" and crafter.rounds[-1]["stored"] == len(ids)


def test_mixed_strategies_share_full_batches(ds, tmp_path):
    from test_generator import ProxyPipe

    proxy = ProxyPipe(tiny_sd_pipeline())
    models = dc.Models(generator=Generator(proxy, name="tiny-sd", default_steps=STEPS))
    with dc.DataCrafter(ds, models=models, project=tmp_path / "mix") as c:
        ids = c.generate(
            per_class=1,
            strategy=["class", "caption", "custom"],
            prompts=["a {class} in blue"],
            batch_size=8,
            progress=False,
        )
        assert len(ids) == 30
        assert proxy.batches == [8, 8, 8, 6]  # 3 strategies x 10 classes in full batches, not 30 calls
        assert set(c.samples.set_index("id").loc[ids, "strategy"]) == {"class", "caption", "custom"}
        seeds = c.samples.set_index("id").loc[ids, "seed"].tolist()
        assert len(set(seeds)) == 30 and min(seeds) == c.rounds[-1]["round"] * 100_000


def test_filter_stays_off_when_the_embedder_cannot_tell_the_classes_apart(crafter):
    ids = crafter.generate(per_class=1, strategy="class", progress=False)
    report = crafter.rounds[-1]["class_filter"]
    assert report["mode"] == "off" and "flags would be noise" in report["reason"]  # random-weight CLIP
    assert (crafter.samples.set_index("id").loc[ids, "flag"] == "").all()


def test_filter_flags_off_class_images_with_reasons(crafter):
    crafter.filter_mode = "zero-shot"  # forced: flag by the random CLIP's zero-shot classes
    ids = crafter.generate(per_class=2, strategy="class", progress=False)
    s = crafter.samples.set_index("id")
    real = s[(s["source"] == "real") & (s["split"] == "train")]
    flt = ClassFilter(crafter.models.embedder, crafter.classes, mode="zero-shot").fit(
        crafter.embeddings(list(real.index)), real["label"]
    )
    expected = flt.check(crafter.embeddings(ids), s.loc[ids, "label"].tolist())
    assert s.loc[ids, "flag"].tolist() == [f for f, _ in expected]
    assert crafter.rounds[-1]["class_filter"]["mode"] == flt.active_mode
    flagged = s.loc[ids][s.loc[ids, "flag"] == "off-class"]
    assert len(flagged) > 0  # random-weight CLIP: most images look like some other class
    assert all("instead of" in r and f"'{lab}'" in r for r, lab in zip(flagged["flag_reason"], flagged["label"]))
    off = crafter.generate(per_class=1, strategy="class", filter=False, progress=False)
    assert (crafter.samples.set_index("id").loc[off, "flag"] == "").all()


def test_class_filter_picks_the_classifier_that_works_on_the_real_images():
    model, preprocess, tokenizer = tiny_open_clip()
    emb = Embedder(model, preprocess, tokenizer, name="tiny-clip")
    rng = np.random.default_rng(0)
    classes = ["0", "1", "2"]
    centres = rng.normal(size=(3, emb.dim)).astype(np.float32)
    real_labels = [c for c in classes for _ in range(4)]
    real = centres[[int(c) for c in real_labels]] + 0.1 * rng.normal(size=(12, emb.dim)).astype(np.float32)
    flt = ClassFilter(emb, classes).fit(real, real_labels)
    # the random CLIP cannot read the class names; the prototypes separate the real images perfectly
    assert flt.active_mode == "prototypes" and flt.report["prototype_accuracy_on_real_leave_one_out"] == 1.0
    noise = rng.normal(size=(12, emb.dim)).astype(np.float32)  # embeddings that carry no class at all
    assert ClassFilter(emb, classes).fit(noise, real_labels).active_mode == "off"
    new = centres[[0, 1, 2, 1]] + 0.1 * rng.normal(size=(4, emb.dim)).astype(np.float32)
    checks = flt.check(new, ["0", "1", "2", "2"])
    assert [f for f, _ in checks] == ["", "", "", "off-class"]
    assert checks[3][1].startswith("prototype class '1'") and "instead of '2'" in checks[3][1]
    lenient = ClassFilter(emb, classes, margin=1.0).fit(real, real_labels)
    assert [f for f, _ in lenient.check(new, ["0", "1", "2", "2"])] == ["", "", "", ""]
    zs = ClassFilter(emb, classes, mode="zero-shot").fit(real, real_labels)
    assert zs.active_mode == "zero-shot"
    assert np.allclose(zs.probabilities(new), emb.zero_shot(new, classes))
    with pytest.raises(ValueError, match="unknown filter mode"):
        ClassFilter(emb, classes, mode="magic")
    with pytest.raises(ValueError, match=r"intended class\(es\) \['7'\]"):
        flt.check(new[:1], ["7"])


def test_background_job_cancel_keeps_finished_batches_and_nothing_half_written(crafter):
    crafter.on("progress", lambda job: job.done > 4.5 and job.cancel())  # inside the second batch
    job = crafter.generate_background(per_class=2, strategy="class", batch_size=4)
    with pytest.raises(JobRunningError):
        crafter.generate(per_class=1, strategy="class", progress=False)
    ids = job.wait(timeout=120)
    assert job.status == "cancelled" and len(ids) == 4  # batch 1 kept, interrupted batch 2 dropped
    s = crafter.samples
    gen = s[s["source"] == "generated"]
    assert gen["id"].tolist() == ids
    assert all((crafter.project / f).is_file() for f in gen["file"])
    assert not [p for p in crafter.project.rglob("*") if ".tmp-" in p.name]
    assert crafter.rounds[-1]["status"] == "cancelled" and crafter.rounds[-1]["stored"] == 4
    crafter.close()
    reopened = dc.DataCrafter.open(crafter.project)
    assert (reopened.samples["source"] == "generated").sum() == 4
    reopened.close()


def test_ctrl_c_in_blocking_mode_keeps_finished_batches(crafter):
    fired = []

    def interrupt(job):
        if job.done > 4.5 and not fired:  # once, inside the second batch, as a Ctrl-C would arrive
            fired.append(True)
            raise KeyboardInterrupt

    crafter.on("progress", interrupt)
    ids = crafter.generate(per_class=2, strategy="class", batch_size=4, progress=False)
    assert len(ids) == 4 and crafter.job.status == "cancelled"
    assert (crafter.samples["source"] == "generated").sum() == 4
    assert crafter.rounds[-1]["status"] == "cancelled"


def test_background_job_progress_and_result(crafter):
    seen = []
    crafter.on("samples", lambda ids: seen.append(list(ids)))
    job = crafter.generate_background(per_class=1, strategy="class", batch_size=4)
    ids = job.wait(timeout=120)
    assert job.status == "done" and job.progress == 1.0 and len(ids) == 10
    assert [len(b) for b in seen] == [4, 4, 2] and sum(seen, []) == ids


def test_feedback_selection_and_errors(crafter, capsys):
    ids = crafter.generate(per_class=1, strategy="class")  # plain Python: a tqdm bar on stderr
    assert "generating round" in capsys.readouterr().err
    events = []
    crafter.on("feedback", events.append)
    crafter.on("selection", events.append)
    assert crafter.feedback(bad=ids[:2], good=ids[2:3], bad_labels=["blurry", "wrong colour"]) == {
        "bad": 2,
        "good": 1,
        "removed": 0,
        "cleared": 0,
    }
    s = crafter.samples.set_index("id")
    assert s.loc[ids[:2], "feedback"].tolist() == ["bad", "bad"] and s.loc[ids[2], "feedback"] == "good"
    assert s.loc[ids[0], "feedback_labels"] == '["blurry", "wrong colour"]'
    assert crafter.feedback_log[-1]["bad"] == ids[:2] and crafter.feedback_log[-1]["bad_labels"] == [
        "blurry",
        "wrong colour",
    ]
    before = crafter.samples
    with pytest.raises(UnknownSampleError, match=r"unknown sample ids in bad \['g999999'\]"):
        crafter.feedback(bad=[ids[3], "g999999"])
    pd.testing.assert_frame_equal(crafter.samples, before)  # nothing changed
    crafter.selection = ids[3:5]
    assert crafter.selection == ids[3:5] and events[-1] == ids[3:5]
    with pytest.raises(UnknownSampleError):
        crafter.selection = ["nope"]
    with pytest.raises(ValueError, match="both bad and good"):
        crafter.feedback(bad=ids[:1], good=ids[:1])


def test_generation_errors_name_the_fix(crafter, ds, tmp_path):
    with pytest.raises(StrategyError, match=r"unknown class\(es\) \['cat'\]"):
        crafter.generate(per_class=1, strategy="class", classes=["cat"], progress=False)
    with pytest.raises(StrategyError, match="empty"):
        crafter.generate(per_class=1, strategy="custom", prompts={"3": ""}, progress=False)
    with pytest.raises(StrategyError, match="unknown strategy"):
        crafter.generate(per_class=1, strategy="dream", progress=False)
    with pytest.raises(ValueError, match="real image"):
        crafter.regenerate(crafter.samples["id"].iloc[0])
    with pytest.raises(UnknownSampleError):
        crafter.regenerate("g424242")
    # captions needed but neither the dataset nor a captioner provides them
    nocap = dc.Dataset.from_images(ds.train.images()[:4], ds.train.labels[:4])
    with dc.DataCrafter(nocap, models=dc.Models(generator=crafter.models.generator), project=tmp_path / "nc") as c:
        with pytest.raises(MissingModelError, match="captioner"):
            c.generate(per_class=1, strategy="caption", progress=False)
        assert len(c.generate(per_class=1, strategy="perturb", progress=False)) == len(c.classes)


def test_caption_strategy_uses_the_captioner_and_stores_captions(ds, models, tmp_path):
    blip, processor = tiny_blip()
    with torch.no_grad():
        blip.text_decoder.cls.predictions.bias[: len(processor.tokenizer.all_special_ids) + 1] = -1e4
    cap = Captioner(blip, processor, name="tiny-blip", max_new_tokens=4)
    nocap = dc.Dataset.from_images(ds.train.images()[:4], ds.train.labels[:4])
    m = dc.Models(generator=models.generator, embedder=models.embedder, captioner=cap)
    with dc.DataCrafter(nocap, models=m, project=tmp_path / "cap") as c:
        ids = c.generate(per_class=1, strategy="caption", progress=False)
        s = c.samples.set_index("id")
        real = s[s["source"] == "real"]
        assert (real["caption"] != "").all()  # captioned once, stored for next time
        for i in ids:
            parent = s.loc[s.loc[i, "parent_id"]]
            assert s.loc[i, "prompt"] == f"a photo of {parent['label']}, {parent['caption']}"
    # in the background, captioning happens inside the job (the kernel is not blocked by it)
    with dc.DataCrafter(nocap, models=m, project=tmp_path / "cap-bg") as c:
        job = c.generate_background(per_class=1, strategy="caption")
        ids = job.wait(timeout=120)
        s = c.samples.set_index("id")
        assert (s[s["source"] == "real"]["caption"] != "").all()
        for i in ids:
            parent = s.loc[s.loc[i, "parent_id"]]
            assert s.loc[i, "prompt"] == f"a photo of {parent['label']}, {parent['caption']}"


def test_embeddings_are_computed_once_and_cached_in_the_store(crafter):
    crafter.generate(per_class=1, strategy="class", progress=False)  # generated images get cached as made
    before = CountingEmbedder.calls
    e = crafter.embeddings()
    # generated images were embedded as they were made, the real train images when the class
    # filter was fitted: only the real test images were still missing
    n_missing = (crafter.samples["split"] == "test").sum()
    assert e.shape == (len(crafter.samples), crafter.models.embedder.dim) and e.dtype == np.float32
    assert CountingEmbedder.calls - before == n_missing
    again = crafter.embeddings()
    assert CountingEmbedder.calls - before == n_missing and np.array_equal(e, again)
    some = crafter.samples["id"].tolist()[5:8]
    assert np.array_equal(crafter.embeddings(some), e[5:8])


def test_export_formats(crafter, tmp_path):
    ids = crafter.generate(per_class=1, strategy="class", filter=False, progress=False)
    crafter.feedback(bad=ids[:1])
    out = crafter.export(tmp_path / "if", format="imagefolder")
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert f"train/{crafter.store.row(ids[1])['label']}/{ids[1]}.png" in pngs
    assert not any(ids[0] in p for p in pngs)  # bad feedback left out
    n_test = (crafter.samples["split"] == "test").sum()
    assert sum(p.startswith("test/") for p in pngs) == n_test
    table = pd.read_csv(out / "samples.csv")
    assert {"prompt", "seed", "strategy", "model"} <= set(table.columns) and len(table) == len(pngs)
    csv = crafter.export(tmp_path / "csv", format="csv")
    assert len(list((csv / "images").glob("*.png"))) == len(pngs)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        crafter.export(tmp_path / "csv", format="csv")
    with pytest.raises(ValueError, match="unknown export format"):
        crafter.export(tmp_path / "x", format="zip")
    datasets = pytest.importorskip("datasets")
    hf = datasets.load_from_disk(str(crafter.export(tmp_path / "hf", format="hf")))
    assert set(hf) == {"train", "test"} and len(hf["train"]) + len(hf["test"]) == len(pngs)
    assert hf["train"].features["label"].names == crafter.classes
    assert isinstance(hf["train"][0]["image"], Image.Image)


# ---- with the shipped starter models (issue 3) -------------------------------------------------
starter_models = pytest.mark.skipif(
    not (WEIGHTS.is_dir() and any(WEIGHTS.iterdir())) or not hasattr(dc.starter, "models"),
    reason="starter weights not shipped yet (datacrafter_widget/starter/weights)",
)


@pytest.fixture(scope="module")
def starter():
    return dc.starter.models()


@starter_models
@pytest.mark.slow
def test_starter_models_every_strategy_and_regenerate(starter, tmp_path):
    ds = dc.starter.colored_digits(shots=2, seed=0)
    with dc.DataCrafter(ds, models=starter, project=tmp_path / "starter") as c:
        for strategy in ("class", "caption", "perturb", "custom"):
            prompts = {"3": "a red 3 on a white background"} if strategy == "custom" else None
            ids = c.generate(per_class=1, strategy=strategy, prompts=prompts, classes=["3", "7"], progress=False)
            assert len(ids) == (1 if strategy == "custom" else 2)
            row = c.store.row(ids[0])
            assert row["strategy"] == strategy and row["model"] == c.models.generator.name
            assert row["guidance_min_sigma"] == c.models.generator.guidance_min_sigma == 0.3
            assert np.array_equal(np.asarray(c.regenerate(ids[0])), np.asarray(c.store.image(ids[0])))
        # the floor is provenance: a generator reconfigured since still regenerates the stored image
        gen = c.models.generator
        gen.guidance_min_sigma = None
        try:
            assert np.array_equal(np.asarray(c.regenerate(ids[0])), np.asarray(c.store.image(ids[0])))
            assert gen.guidance_min_sigma is None
        finally:
            gen.guidance_min_sigma = 0.3


@starter_models
@pytest.mark.slow
def test_starter_filter_flags_off_class_images(starter, tmp_path):
    from datacrafter_widget.starter.digits import caption_for

    ds = dc.starter.colored_digits(shots=2, seed=0)
    with dc.DataCrafter(ds, models=starter, project=tmp_path / "flt") as c:
        # label "7" but the prompt asks for a 3: the filter should flag most; honest prompts mostly pass
        wrong, right = (  # one round each, in this order
            c.generate(
                per_class=8,
                strategy="custom",
                classes=["7"],
                prompts={"7": caption_for(digit, "red", "white", "regular", "upright")},
                progress=False,
            )
            for digit in ("3", "7")
        )
        s = c.samples.set_index("id")
        report = c.rounds[-1]["class_filter"]
        if report["mode"] == "off":
            # the filter checked the starter CLIP on the real images and found it cannot tell the
            # digits apart: it must then flag nothing rather than noise
            assert (s.loc[wrong + right, "flag"] == "").all()
            pytest.xfail(f"the shipped starter CLIP cannot classify digits yet: {report}")
        wrong_rate = (s.loc[wrong, "flag"] == "off-class").mean()
        right_rate = (s.loc[right, "flag"] == "off-class").mean()
        assert wrong_rate >= 0.75 and right_rate <= 0.25, (wrong_rate, right_rate)
        assert all("'3'" in r for r in s.loc[wrong][s.loc[wrong, "flag"] == "off-class"]["flag_reason"])


def test_regenerate_replays_gap_rows_from_their_learned_tokens(tmp_path):
    from PIL import ImageOps

    from datacrafter_widget.controller.rounds import gap_round
    from datacrafter_widget.loop.student import train_student

    gen = Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=4, default_guidance=15.0)
    cats = gen(["a photo of a cat"] * 4, seed=0)
    dogs = [ImageOps.invert(im) for im in cats]
    student = train_student(cats + dogs, ["cat"] * 4 + ["dog"] * 4, epochs=2, progress=False, seed=0)
    ds = dc.Dataset.from_images(cats + dogs, ["cat"] * 4 + ["dog"] * 4)
    with dc.DataCrafter(ds, models=dc.Models(generator=gen), project=tmp_path / "gap") as c:
        rnd = c.next_round()
        ids, _ = gap_round(
            c.store,
            gen,
            student,
            ["cat"],
            per_class=3,
            round=rnd,
            seed=1,
            steps=2,
            final_steps=4,
            lr=0.05,
            batch=2,
            sampler_steps=2,
            n_tokens=2,
            guidance=15.0,
        )
        c.log_round({"round": rnd, "strategies": ["gap"], "stored": len(ids), "status": "done"})
        assert c.next_round() == rnd + 1 and c.rounds[-1]["strategies"] == ["gap"]
        for i in ids:
            assert np.array_equal(np.asarray(c.regenerate(i)), np.asarray(c.store.image(i)))
        diff = np.abs(
            np.asarray(c.regenerate(ids[1], alone=True), dtype=int) - np.asarray(c.store.image(ids[1]), dtype=int)
        )
        assert diff.max() <= 3


def test_an_interrupted_import_resumes_without_duplicates(ds, tmp_path):
    from datacrafter_widget.data.store import SampleStore

    store = SampleStore(tmp_path / "resume")  # as if the kernel died after the first chunk of real images
    store.add(ds.train.images([0, 1, 2]), [{"label": ds.train.labels[i], "split": "train"} for i in range(3)])
    store.close()
    with dc.DataCrafter(ds, project=tmp_path / "resume") as c:
        s = c.samples
        assert (s["split"] == "train").sum() == len(ds.train) and (s["split"] == "test").sum() == len(ds.test)
        assert not s.duplicated(["hash", "split"]).any()


def test_the_whole_loop_through_the_controller(ds, tmp_path):
    """student -> metrics -> feedback -> evolve -> generate_evolved -> GAP, all via the public API."""
    model, preprocess, tokenizer = tiny_open_clip()
    models = dc.Models(
        generator=Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=STEPS),
        embedder=Embedder(model, preprocess, tokenizer, name="tiny-clip"),
    )  # own: gets a student
    crafter = dc.DataCrafter(ds, models=models, project=tmp_path / "loop")
    crafter.heldout_options = {"steps": 2}  # the held-out student per round (student_acc), kept quick
    ids = crafter.generate(per_class=1, strategy="class", filter=False, progress=False)
    student = crafter.train_student(epochs=1, progress=False)
    assert crafter.student is student and (crafter.project / "student" / "student.json").is_file()
    result = crafter.evaluate()
    assert 0.0 <= result["accuracy"] <= 1.0 and result["n"] == len(crafter.dataset.test)
    m = crafter.metrics  # round 0: the real images alone (student_acc only)
    assert m["round"].tolist() == [0, 1] and m.loc[1, "n_generated"] == len(ids)
    assert {"informativeness", "class_maintenance", "diversity", "distance", "flagged", "bad", "student_acc"} <= set(
        m.columns
    )
    assert m.loc[1, "strategies"] == "class" and 0.0 <= m.loc[1, "class_maintenance"] <= 1.0
    assert m["student_acc"].between(0, 1).all()

    crafter.feedback(bad=ids[:2], good=ids[2:4], bad_labels=["blurry"])
    bad_classes = sorted(crafter.store.row(i)["label"] for i in ids[:2])
    evolved = crafter.evolve(classes=bad_classes, population=2, generations=1, batch=1, progress=False)
    assert sorted(evolved.prompts) == bad_classes
    new = crafter.generate_evolved(per_class=1, progress=False)
    rows = crafter.samples.set_index("id").loc[new]
    assert sorted(rows["label"]) == bad_classes and set(rows["strategy"]) == {"evolved"}
    assert rows["prompt"].tolist() == [evolved.prompts[c] for c in rows["label"]]

    gap = crafter.adversarial(
        target="a digit on any background",
        steps=1,
        per_class=1,
        sampler_steps=1,
        final_steps=2,
        n_tokens=1,
        batch=1,
        progress=False,
    )
    assert len(gap) == len(crafter.classes)
    assert set(crafter.samples.set_index("id").loc[gap, "strategy"]) == {"gap"}
    assert crafter.rounds[-1]["strategies"] == ["gap"] and crafter.rounds[-1]["status"] == "done"
    assert np.array_equal(np.asarray(crafter.regenerate(gap[0])), np.asarray(crafter.store.image(gap[0])))
    assert crafter.metrics["round"].tolist() == [0, 1, 2, 3]
    crafter.close()
    with dc.DataCrafter.open(crafter.project, models=crafter.models) as again:
        again.models.student = None
        assert again.student is not None  # reloaded from the project folder
        assert again.evaluate()["accuracy"] == result["accuracy"]


def test_missing_model_message_uses_the_right_article() -> None:
    from datacrafter_widget.models.bundle import MissingModel

    assert "crafter.metrics needs an embedder but" in str(MissingModel("embedder").error("crafter.metrics"))
    assert "needs a generator but" in str(MissingModel("generator").error("generate"))
    assert "this step needs a labeler" in str(MissingModel("labeler").error())

"""Nothing lost, every failure named (issue 13): damaged project files, killed kernels, import inputs.

No generator is needed here: the states a kill or a damaged disk leaves are built with the store,
which is how they arise (every commit is atomic; the bookkeeping around it is what can be cut short)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datacrafter_widget as dc
from datacrafter_widget.data.dataset import DatasetError
from datacrafter_widget.data.store import DamagedFileError, DamagedProjectWarning, SampleStore


def make_image(i: int, size: int = 16) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB")


def small_ds(classes=("a", "b"), per_class: int = 3) -> dc.Dataset:
    images = [make_image(100 * k + j) for k in range(len(classes)) for j in range(per_class)]
    labels = [c for c in classes for _ in range(per_class)]
    return dc.Dataset.from_images(images, labels)


@pytest.fixture
def project(tmp_path) -> Path:
    """A closed project: compacted base table, then three more commits (one segment each)."""
    path = tmp_path / "proj"
    with dc.DataCrafter(small_ds(), project=path) as c:
        c.store.compact()
        for k in range(3):
            c.store.add([make_image(900 + k)], [{"label": "a", "split": "train"}])
    return path


# ---- damaged primary files: named, with the fix, also read-only ---------------------------------------
@pytest.mark.parametrize("readonly", [False, True])
def test_truncated_samples_table_or_segment_names_the_file(project, readonly):
    base = project / "samples.parquet"
    data = base.read_bytes()
    base.write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedFileError, match=r"samples\.parquet is damaged.*restore samples\.parquet from a backup"):
        dc.DataCrafter.open(project, readonly=readonly)
    base.write_bytes(data)
    segment = sorted((project / "segments").iterdir())[-1]
    segment.write_bytes(segment.read_bytes()[:40])
    with pytest.raises(DamagedFileError, match=rf"segments/{segment.name} is damaged.*move it out of"):
        dc.DataCrafter.open(project, readonly=readonly)
    segment.unlink()  # the fix the message gives: the project opens without that one commit, and says so
    with pytest.warns(DamagedProjectWarning, match=rf"{segment.name} is missing \(it held 1 new sample"):
        c = dc.DataCrafter.open(project, readonly=readonly)
    with c:
        assert len(c.samples) == 6 + 2


def test_a_deleted_middle_segment_is_reported(project):
    middle = sorted((project / "segments").iterdir())[1]
    middle.unlink()
    with pytest.warns(DamagedProjectWarning, match=rf"{middle.name} is missing.*Restore them"):
        c = dc.DataCrafter.open(project, readonly=True)
    assert len(c.samples) == 6 + 2


def test_a_failed_commit_leaves_no_gap_in_the_segment_numbers(tmp_path, monkeypatch):
    from datacrafter_widget.data import store as store_module

    with SampleStore(tmp_path / "p") as store:
        store.add([make_image(1)], [{"label": "a"}])
        real = store_module._atomic_write_table

        def disk_full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(store_module, "_atomic_write_table", disk_full)
        with pytest.raises(OSError):
            store.add([make_image(2)], [{"label": "a"}])
        monkeypatch.setattr(store_module, "_atomic_write_table", real)
        store.add([make_image(3)], [{"label": "a"}])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DamagedProjectWarning)
        assert len(SampleStore(tmp_path / "p", readonly=True)) == 2


@pytest.mark.parametrize(
    "name, fix",
    [
        ("rounds.json", "move it aside"),
        ("feedback.json", "good / bad marks"),
        ("project.json", "class list"),
    ],
)
def test_damaged_json_documents_name_the_file_and_the_fix(project, name, fix):
    (project / name).write_text('[{"round": 1,')
    if name == "project.json":
        for readonly in (False, True):
            with pytest.raises(DamagedFileError, match=rf"project\.json is damaged.*{fix}"):
                dc.DataCrafter.open(project, readonly=readonly)
        return
    with dc.DataCrafter.open(project) as c:  # the project still opens; using the document names it
        with pytest.raises(DamagedFileError, match=rf"{name} is damaged.*{fix}"):
            c.rounds if name == "rounds.json" else c.feedback_log
        if name == "rounds.json":
            with pytest.raises(DamagedFileError, match="rounds.json"):
                c.next_round()
        (project / name).rename(project / f"{name}.bad")  # the fix the message gives
        assert (c.rounds if name == "rounds.json" else c.feedback_log) == []
        assert c.next_round() == 1


# ---- derived files: rebuilt --------------------------------------------------------------------------------
def test_damaged_map_and_layout_do_not_block_open(project):
    (project / "map.json").write_text("{")
    (project / "layout.safetensors").write_bytes(b"\x00" * 20)
    (project / "content_labels.json").write_text("[")
    for readonly in (True, False):
        with dc.DataCrafter.open(project, readonly=readonly) as c:
            assert c._map.stored.layout is None and len(c.samples) == 9
            assert list(c.projection.columns[:5]) == ["kind", "id", "text", "x", "y"]


def test_a_truncated_embeddings_part_is_dropped_and_computed_again(project):
    with SampleStore(project) as store:
        hashes = store.samples["hash"].tolist()
        store.put_embeddings(hashes[:2], "clip", np.ones((2, 4), np.float32))
        store.put_embeddings(hashes[2:4], "clip", np.full((2, 4), 2, np.float32))
    part = sorted((project / "embeddings").rglob("part-*.safetensors"))[0]
    part.write_bytes(part.read_bytes()[:50])
    with pytest.warns(DamagedProjectWarning, match=rf"{part.name} is damaged.*computed again"):
        ro = SampleStore(project, readonly=True)
        assert ro.missing_embeddings(hashes[:4], "clip") == hashes[:2]
    assert part.exists()  # a reader never deletes
    with pytest.warns(DamagedProjectWarning), SampleStore(project) as store:
        assert store.embeddings(hashes[2:4], "clip")[0, 0] == 2
        assert not part.exists()  # the writer drops the damaged cache part
        store.put_embeddings(hashes[:2], "clip", np.zeros((2, 4), np.float32))  # recomputed rows land
        assert store.missing_embeddings(hashes[:4], "clip") == []


# ---- damaged images ----------------------------------------------------------------------------------------
def test_missing_truncated_or_escaping_images_name_the_sample_and_file(project):
    with dc.DataCrafter.open(project) as c:
        row = c.samples.iloc[0]
        path = project / row["file"]
        data = path.read_bytes()
        path.write_bytes(data[:100])
        with pytest.raises(DamagedFileError, match=rf"sample {row['id']}: its image file {row['file']} .*damaged"):
            c.store.image(row["id"])
        path.unlink()
        with pytest.raises(DamagedFileError, match=rf"sample {row['id']}: its image file {row['file']} is missing"):
            c.store.image(row["id"])
        with pytest.raises(DamagedFileError, match=rf"sample {row['id']}.*missing"):
            c.train_student(epochs=1, progress=False, kind="cnn")
        path.write_bytes(data)
        c.store._materialize().loc[0, "file"] = "../../secret.txt"  # a hand-edited table
        with pytest.raises(DamagedFileError, match="points outside project"):
            c.store.image(row["id"])


# ---- killed kernels ----------------------------------------------------------------------------------------
def test_a_round_left_running_by_a_kill_is_marked_interrupted_on_open(project):
    with SampleStore(project) as store:  # what a kernel killed during round 1 leaves behind
        store.write_json("rounds.json", [{"round": 1, "requested": 10, "status": "running", "stored": 0}])
        store.add([make_image(50), make_image(51)], [{"label": "a", "split": "generated", "round": 1}] * 2)
    with dc.DataCrafter.open(project, readonly=True) as ro:  # a reader cannot know: another kernel may be running
        assert ro.rounds[0]["status"] == "running"
    with dc.DataCrafter.open(project) as c:
        (entry,) = c.rounds
        assert entry["status"] == "interrupted" and entry["stored"] == 2 and entry["requested"] == 10
        assert c.next_round() == 2


def test_an_interrupted_first_import_says_how_to_resume_and_keeps_duplicates_under_other_labels(tmp_path):
    same = make_image(5)
    ds = dc.Dataset.from_images([same, same, make_image(6), same], ["a", "b", "b", "b"])
    path = tmp_path / "p"
    with SampleStore(path) as store:  # as if the kernel died after the first commit of real images
        store.add([same], [{"label": "a", "split": "train"}])
    with pytest.raises(
        ValueError, match=r"first import .* interrupted \(1 image\(s\) stored.*dc\.DataCrafter\(ds, project="
    ):
        dc.DataCrafter.open(path)
    with dc.DataCrafter(ds, project=path) as c:
        s = c.samples
        h = s["hash"].iloc[0]
        assert len(s) == 4 and (s["hash"] == h).sum() == 3  # the same image as "a" and twice as "b"
        assert sorted(s.loc[s["hash"] == h, "label"]) == ["a", "b", "b"]
    with dc.DataCrafter.open(path) as c:
        assert c.classes == ["a", "b"]


def test_each_project_keeps_its_own_student(tmp_path):
    models = dc.Models()
    with dc.DataCrafter(small_ds(("a", "b"), 4), models=models, project=tmp_path / "one") as one:
        first = one.train_student(epochs=1, progress=False, kind="cnn", seed=0)
        assert one.student is first
    assert not models.has("student")  # the shared Models object is left alone
    with dc.DataCrafter(small_ds(("c", "d"), 4), models=models, project=tmp_path / "two") as two:
        assert two.student is None
        with pytest.raises(ValueError, match="train_student"):
            two.evaluate(small_ds(("c", "d"), 1))
    with dc.DataCrafter.open(tmp_path / "one", models=models) as again:
        assert again.student is not None and again.student.classes == ["a", "b"]  # reloaded from its project
    weights = tmp_path / "one" / "student" / "student.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with dc.DataCrafter.open(tmp_path / "one", models=models) as again:
        assert again.student is None
        with pytest.raises(ValueError, match=r"saved student in .*student is damaged.*train_student\(\)"):
            again.evaluate(small_ds(("a", "b"), 1))


# ---- dataset import ----------------------------------------------------------------------------------------
def test_exif_orientation_is_applied(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # stored: red left half of a 40x20 landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show rotated 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "cat" / "phone.jpg", exif=exif.tobytes(), quality=95)
    make_image(1).save(tmp_path / "dog" / "x.png")
    ds = dc.Dataset.from_folder(tmp_path)
    im = ds.image(0)
    assert im.size == (20, 40)  # portrait, as the camera saw it
    top, bottom = np.asarray(im)[5, 10], np.asarray(im)[35, 10]
    assert top[0] > 200 and bottom[0] < 60  # red on top after the turn
    with Image.open(tmp_path / "cat" / "phone.jpg") as raw:
        in_memory = dc.Dataset.from_images([raw.copy(), make_image(2)], ["cat", "dog"])
    assert in_memory.image(0).size == (20, 40)
    with dc.DataCrafter(ds, project=tmp_path / "p") as c:
        stored = c.store.image(c.samples["id"].iloc[0])
        assert stored.size == (20, 40)


def test_a_truncated_jpeg_that_passes_the_header_check_is_named_at_import(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    buffer = io.BytesIO()
    make_image(1, 64).save(buffer, "JPEG")
    (root / "a" / "broken.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    make_image(2).save(root / "a" / "ok.png")
    make_image(3).save(root / "b" / "ok.png")
    ds = dc.Dataset.from_folder(root, check="header")  # only the header: the cut is not seen yet
    with pytest.raises(DatasetError, match=r"broken\.jpg.*cannot be read.*check='decode'.*import resumes"):
        dc.DataCrafter(ds, project=tmp_path / "p")
    with pytest.warns(UserWarning, match="broken.jpg"):
        decoded = dc.Dataset.from_folder(root, check="decode")  # the fix the message gives
    assert [Path(f).name for f, _ in decoded.report] == ["broken.jpg"]
    with dc.DataCrafter(decoded, project=tmp_path / "p") as c:
        assert len(c.samples) == 2


def test_hidden_folders_are_reported(tmp_path):
    (tmp_path / "a" / ".thumbs").mkdir(parents=True)
    (tmp_path / ".cache").mkdir()
    make_image(1).save(tmp_path / "a" / "x.png")
    make_image(2).save(tmp_path / "a" / ".thumbs" / "y.png")
    make_image(3).save(tmp_path / ".cache" / "z.png")
    with pytest.warns(UserWarning, match="skipped 2"):
        ds = dc.Dataset.from_folder(tmp_path)
    assert sorted(Path(f).name for f, _ in ds.report) == [".cache", ".thumbs"]
    assert all("hidden folder" in why for _, why in ds.report) and len(ds) == 1

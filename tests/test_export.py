"""Export (controller/export.py): never deletes what it did not write, never leaves a partial export
under the real name (SIGKILL loop), unique and reversible class folders, damaged images named."""

from __future__ import annotations

import json
import os
import random
import textwrap
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from datacrafter_widget.controller import export as export_module
from datacrafter_widget.controller.export import MANIFEST, ExportError, class_folder, clean_stale, export_project
from datacrafter_widget.data.store import SampleStore, StoreError
from tests.kill_helpers import kill_when_ready

REPO = Path(__file__).resolve().parent.parent
PKG = str(REPO / "datacrafter_widget")


def make_image(i: int, size: int = 16) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB")


def make_project(path: Path, classes=("a", "b"), per_class: int = 2) -> SampleStore:
    store = SampleStore(path)
    images, rows = [], []
    for k, c in enumerate(classes):
        for j in range(per_class):
            images.append(make_image(100 * k + j))
            rows.append({"label": c, "split": "test" if j == per_class - 1 and per_class > 2 else "train"})
    store.add(images, rows)
    store.write_json("project.json", {**store.read_json("project.json"), "classes": list(classes)})
    return store


def exported_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.png")}


def assert_complete(out: Path, store_rows: pd.DataFrame, project: Path) -> None:
    """A complete export: manifest says so, and every row of samples.csv has its exact image."""
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] is True
    table = pd.read_csv(out / "samples.csv")
    assert len(table) == len(store_rows)
    by_id = store_rows.set_index("id")
    for sid, rel in zip(table["id"], table["file"]):
        assert (out / rel).read_bytes() == (project / by_id.loc[sid, "file"]).read_bytes()


# ---- where an export may go --------------------------------------------------------------------------
def test_export_refuses_the_project_its_parent_and_folders_inside_it(tmp_path):
    project = tmp_path / "runs" / "p"
    store = make_project(project)
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if ".lock" not in p.name)
    for target in (project, tmp_path / "runs", tmp_path, project / "images", project / "new-sub"):
        with pytest.raises(ExportError, match="project") as info:
            export_project(store, ["a", "b"], target, overwrite=True)
        assert "choose" in str(info.value)
    after = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if ".lock" not in p.name)
    assert after == before and (tmp_path / "runs" / "notes.txt").read_text() == "mine"
    link = tmp_path / "link-to-project"
    link.symlink_to(project)
    with pytest.raises(ExportError, match="project"):
        export_project(store, ["a", "b"], link, overwrite=True)
    assert len(SampleStore(project, readonly=True)) == len(store)


def test_overwrite_replaces_only_an_earlier_export(tmp_path):
    store = make_project(tmp_path / "p")
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_project(store, ["a", "b"], mine)
    with pytest.raises(ExportError, match=f"no datacrafter export wrote.*{MANIFEST}"):
        export_project(store, ["a", "b"], mine, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "x"

    out = export_project(store, ["a", "b"], tmp_path / "out")
    assert_complete(out, store.samples, store.path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_project(store, ["a", "b"], out)
    store.add([make_image(7)], [{"label": "a", "split": "train"}])
    assert export_project(store, ["a", "b"], out, overwrite=True) == out
    assert_complete(out, store.samples, store.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata", "out", "p"]  # no temp folder left

    (tmp_path / "empty").mkdir()  # an empty folder is fine without overwrite
    assert_complete(export_project(store, ["a", "b"], tmp_path / "empty", format="csv"), store.samples, store.path)

    link = tmp_path / "latest"
    link.symlink_to(out)  # through a link: the folder it points to is replaced, the link stays
    store.add([make_image(8)], [{"label": "b", "split": "train"}])
    assert export_project(store, ["a", "b"], link, overwrite=True) == out.resolve()
    assert link.is_symlink() and link.resolve() == out.resolve()
    assert_complete(link, store.samples, store.path)


def test_hf_export_is_self_contained_and_marked(tmp_path):
    datasets = pytest.importorskip("datasets")
    store = make_project(tmp_path / "p", per_class=3)
    out = export_project(store, ["a", "b"], tmp_path / "hf", format="hf")
    assert json.loads((out / MANIFEST).read_text())["complete"] is True
    store.close()
    store_rows = SampleStore(tmp_path / "p", readonly=True).samples
    dd = datasets.load_from_disk(str(out))
    assert set(dd) == {"train", "test"} and len(dd["train"]) + len(dd["test"]) == len(store_rows)
    first = dd["train"][0]
    assert np.array_equal(np.asarray(first["image"]), np.asarray(make_image(0)))
    export_project(SampleStore(tmp_path / "p", readonly=True), ["a", "b"], out, format="hf", overwrite=True)
    assert len(datasets.load_from_disk(str(out))["test"]) == 2


# ---- class folders -------------------------------------------------------------------------------------
def test_class_folders_are_unique_reversible_and_short_enough(tmp_path):
    long_name = "x" * 300
    classes = ["a/b", "a_b", "a:b", ".", "..", "100%", " padded ", long_name, "über/κλάση"]
    store = make_project(tmp_path / "p", classes=classes, per_class=1)
    out = export_project(store, classes, tmp_path / "out")
    folders = sorted(p.name for p in (out / "train").iterdir() if p.is_dir())
    assert len(folders) == len(classes)
    assert all(len(f.encode()) <= 255 and "/" not in f and not f.startswith(".") for f in folders)
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(manifest["class_folders"].values()) == sorted(classes)
    for folder, label in manifest["class_folders"].items():
        if label != long_name:
            assert unquote(folder) == label  # reversible from the name alone
        ids = [p.stem for p in (out / "train" / folder).iterdir()]
        assert store.samples.set_index("id").loc[ids, "label"].tolist() == [label] * len(ids)
    table = pd.read_csv(out / "samples.csv", keep_default_na=False)
    assert sorted(table["label"]) == sorted(classes)
    assert class_folder(".") == "%2E" and class_folder("a/b") == "a%2Fb" and class_folder("cat") == "cat"


def test_class_names_that_differ_only_in_case_are_refused_by_name(tmp_path):
    store = make_project(tmp_path / "p", classes=("Cat", "cat"), per_class=1)
    with pytest.raises(ExportError, match="'Cat' and 'cat'.*format='csv'"):
        export_project(store, ["Cat", "cat"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert export_project(store, ["Cat", "cat"], tmp_path / "csv", format="csv").is_dir()


# ---- damaged projects ------------------------------------------------------------------------------------
def test_missing_truncated_and_escaping_image_files_are_named(tmp_path):
    store = make_project(tmp_path / "p")
    row = store.samples.iloc[1]
    path = store.path / row["file"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=f"sample {row['id']}: its image file {row['file']} .* truncated or changed"):
        export_project(store, ["a", "b"], tmp_path / "out")
    path.unlink()
    with pytest.raises(StoreError, match=f"sample {row['id']}: its image file {row['file']} is missing.*removed="):
        export_project(store, ["a", "b"], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))
    path.write_bytes(data)

    (tmp_path / "secret.txt").write_text("secret")
    store.update([row["id"]], caption="x")  # the table is fine; now point a row outside the project
    frame = store.samples
    frame.loc[frame["id"] == row["id"], "file"] = "../secret.txt"
    with pytest.raises(StoreError, match=r"points outside project"):
        export_project(_FakeStore(store, frame), ["a", "b"], tmp_path / "out", format="csv")
    assert not (tmp_path / "out").exists()


class _FakeStore:
    """A store whose samples table was edited by hand (the `file` column cannot be set through the API)."""

    def __init__(self, store: SampleStore, frame: pd.DataFrame) -> None:
        self.path, self.samples = store.path, frame


# ---- crash safety ------------------------------------------------------------------------------------------
EXPORTER = textwrap.dedent(
    """
    import sys, types
    pkg = types.ModuleType("datacrafter_widget")   # skip the package __init__ (torch): fast trials
    pkg.__path__ = [sys.argv[-1]]
    sys.modules["datacrafter_widget"] = pkg
    from datacrafter_widget.data.store import SampleStore
    from datacrafter_widget.controller.export import export_project
    store = SampleStore(sys.argv[1], readonly=True)
    print("ready", flush=True)
    k = 0
    while True:
        export_project(store, ["a", "b"], sys.argv[2], format=("imagefolder", "csv")[k % 2], overwrite=True)
        k += 1
        print("done", k, flush=True)
    """
)


def test_sigkill_during_overwrite_never_loses_the_export(tmp_path):
    store = make_project(tmp_path / "p", per_class=30)
    rows = store.samples
    store.close()
    out = tmp_path / "exports" / "ds"
    export_project(SampleStore(tmp_path / "p", readonly=True), ["a", "b"], out)
    script = tmp_path / "exporter.py"
    script.write_text(EXPORTER)
    rnd = random.Random(13)
    leftovers_seen = 0
    for trial in range(6):
        kill_when_ready([str(script), str(tmp_path / "p"), str(out), PKG], rnd.uniform(0.02, 0.3), "exporter")
        # The export under the real name is always a complete one (old or new), never a partial one.
        assert_complete(out, rows, tmp_path / "p")
        leftovers = [p for p in out.parent.iterdir() if p.name != "ds"]
        leftovers_seen += bool(leftovers)
        assert all(p.name.startswith("ds.tmp-") or p.name.startswith("ds.old-") for p in leftovers)
        clean_stale(out)  # what the next export does first
        assert sorted(p.name for p in out.parent.iterdir()) == ["ds"]
        assert_complete(out, rows, tmp_path / "p")
    assert leftovers_seen, "no kill landed inside an export: the loop did not test anything"


def test_a_kill_between_the_two_renames_of_the_fallback_swap_restores_the_old_export(tmp_path, monkeypatch):
    store = make_project(tmp_path / "p")
    out = export_project(store, ["a", "b"], tmp_path / "ds")
    old_files = exported_files(out)
    # Where renameat2 cannot exchange, the swap is two renames; a kill between them leaves:
    dead = 99_999_999
    os.rename(out, tmp_path / f"ds.old-{dead}")
    export_project(store, ["a", "b"], tmp_path / "new")
    os.rename(tmp_path / "new", tmp_path / f"ds.tmp-{dead}")
    (tmp_path / f"ds.tmp-{dead}-not-ours").mkdir()
    (tmp_path / "ds.tmp-12").mkdir()  # a user's folder that looks like ours: no manifest, not empty
    (tmp_path / "ds.tmp-12" / "keep.txt").write_text("x")
    clean_stale(out)
    assert exported_files(out) == old_files
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ds", f"ds.tmp-{dead}-not-ours", "ds.tmp-12", "p"])

    monkeypatch.setattr(export_module, "_exchange", lambda a, b: False)
    store.add([make_image(9)], [{"label": "b", "split": "train"}])
    export_project(store, ["a", "b"], out, overwrite=True)
    assert_complete(out, store.samples, store.path)
    assert (tmp_path / "ds.tmp-12" / "keep.txt").exists()

"""Export never deletes what it did not write (issue 24): a file is deleted only when the export's own
manifest lists it by name and content hash; anything else stops the export and is named; no temp
folder outlives a failed export; targets under a file or behind a dangling link are refused."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from datacrafter_widget.controller import export as export_module
from datacrafter_widget.controller.export import MANIFEST, ExportError, clean_stale, export_project
from tests.test_export import assert_complete, make_image, make_project


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative name -> bytes), without following links."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_overwrite_keeps_files_a_person_added_to_an_earlier_export(tmp_path):
    store = make_project(tmp_path / "p")
    out = export_project(store, ["a", "b"], tmp_path / "exp1")
    (out / "my_notes.txt").write_text("notes")
    (out / "mydir").mkdir()
    (out / "mydir" / "x.txt").write_text("x")
    before = tree(out)
    with pytest.raises(ExportError, match=r"my_notes\.txt.*mydir/x\.txt") as info:
        export_project(store, ["a", "b"], out, overwrite=True)
    assert "move them out" in str(info.value).lower()
    assert tree(out) == before  # nothing deleted, nothing rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp1", "p"]  # and no temp folder left

    # A person's edit of an exported file is theirs too: its content no longer matches the manifest.
    (out / "my_notes.txt").unlink()
    shutil.rmtree(out / "mydir")
    (out / "samples.csv").write_text("edited by hand")
    with pytest.raises(ExportError, match=r"samples\.csv \(changed since the export"):
        export_project(store, ["a", "b"], out, overwrite=True)
    assert (out / "samples.csv").read_text() == "edited by hand"
    (out / "samples.csv").unlink()  # once the person's files are gone, overwrite works
    store.add([make_image(7)], [{"label": "a", "split": "train"}])
    export_project(store, ["a", "b"], out, overwrite=True)
    assert_complete(out, store.samples, store.path)


def test_a_copied_manifest_does_not_make_a_folder_ours(tmp_path):
    store = make_project(tmp_path / "p")
    out = export_project(store, ["a", "b"], tmp_path / "exp")
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("\\documentclass{article}")
    shutil.copy(out / MANIFEST, mine / MANIFEST)
    with pytest.raises(ExportError, match=r"thesis\.tex"):
        export_project(store, ["a", "b"], mine, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "\\documentclass{article}"
    assert (mine / MANIFEST).exists()
    # A manifest from before exports listed their files proves nothing either.
    old = json.loads((out / MANIFEST).read_text())
    old.pop("files")
    (mine / "thesis.tex").unlink()
    (mine / MANIFEST).write_text(json.dumps(old))
    (mine / "train").mkdir()
    (mine / "train" / "keep.png").write_bytes(b"x")
    with pytest.raises(ExportError, match=r"train/keep\.png"):
        export_project(store, ["a", "b"], mine, overwrite=True)
    assert (mine / "train" / "keep.png").read_bytes() == b"x"


def test_a_file_added_while_the_export_runs_is_kept(tmp_path, monkeypatch):
    """The check happens before the new export is written; a file the person adds meanwhile is
    neither deleted nor lost: the old folder is kept under a name the warning gives."""
    store = make_project(tmp_path / "p")
    out = export_project(store, ["a", "b"], tmp_path / "exp")
    real = export_module._write_files

    def slow_write(*args, **kwargs):
        (out / "late.txt").write_text("written during the export")
        return real(*args, **kwargs)

    monkeypatch.setattr(export_module, "_write_files", slow_write)
    with pytest.warns(UserWarning, match=r"late\.txt.*exp\.kept-"):
        export_project(store, ["a", "b"], out, overwrite=True)
    assert_complete(out, store.samples, store.path)
    (kept,) = tmp_path.glob("exp.kept-*")
    assert tree(kept) == {"late.txt": b"written during the export"}


@pytest.mark.parametrize("fail_at", [0, 1, 3])
def test_a_full_disk_leaves_no_temp_folder(tmp_path, monkeypatch, fail_at):
    store = make_project(tmp_path / "p")
    out = export_project(store, ["a", "b"], tmp_path / "exp")
    before = tree(out)
    calls = {"n": 0}
    real_open = open

    def full_disk_open(file, mode="r", *args, **kwargs):  # the (fail_at+1)-th file written in the temp folder fails
        if "w" in mode and ".tmp-" in str(file) and "exp" in str(file):
            calls["n"] += 1
            if calls["n"] > fail_at:
                f = real_open(file, mode, *args, **kwargs)
                f.close()  # the file exists, half written, as after a real ENOSPC
                raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk_open)
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: full_disk_open(self, "wb").write(data))
    with pytest.raises(OSError, match="No space left"):
        export_project(store, ["a", "b"], out, overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "p"]
    assert tree(out) == before


def test_a_target_under_a_file_is_named(tmp_path):
    store = make_project(tmp_path / "p")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ExportError, match=r"notes\.txt is a file.*choose"):
        export_project(store, ["a", "b"], tmp_path / "notes.txt" / "sub" / "exp")
    assert (tmp_path / "notes.txt").read_text() == "x"


def test_a_dangling_link_is_refused_and_nothing_is_made_outside(tmp_path):
    store = make_project(tmp_path / "p")
    outside = tmp_path / "elsewhere" / "target"
    (tmp_path / "tree").mkdir()
    link = tmp_path / "tree" / "exp"
    link.symlink_to(outside)
    with pytest.raises(ExportError, match=r"dangling|points to .*does not exist"):
        export_project(store, ["a", "b"], link)
    assert not (tmp_path / "elsewhere").exists() and link.is_symlink()


def test_stale_temp_folders_are_cleaned_only_of_export_files(tmp_path):
    store = make_project(tmp_path / "p")
    out = export_project(store, ["a", "b"], tmp_path / "exp")
    dead = 99_999_998
    stale = tmp_path / f"exp.tmp-{dead}"
    shutil.copytree(out, stale)
    manifest = json.loads((stale / MANIFEST).read_text())
    manifest.update(complete=False)
    manifest.pop("files", None)
    (stale / MANIFEST).write_text(json.dumps(manifest))
    (stale / "train" / "mine.txt").write_text("a person's file in a temp folder")
    clean_stale(out)
    assert set(tree(stale)) == {MANIFEST, "train/mine.txt"}  # the manifest stays while the folder is not empty
    assert (stale / "train" / "mine.txt").read_text() == "a person's file in a temp folder"
    os.remove(stale / "train" / "mine.txt")
    clean_stale(out)
    assert not stale.exists()

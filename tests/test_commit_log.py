"""The project knows its own commits (issue 24): commits.json lists every segment of the append log
with its checksum, so a missing or damaged segment, the newest included, is named on open with
what it held, instead of the project silently showing an earlier state."""

from __future__ import annotations

import json
import warnings

import pytest

from datacrafter_widget.data.store import DamagedFileError, DamagedProjectWarning, ProjectNote, SampleStore
from tests.test_export import make_image


def project_with_commits(path):
    with SampleStore(path) as store:
        store.add([make_image(1), make_image(2)], [{"label": "a"}, {"label": "b"}])
        store.compact()
        store.add([make_image(3)], [{"label": "a", "split": "generated"}])
        store.update(["r000001"], feedback="good")  # the newest commit: a "good" mark
    return path


@pytest.mark.parametrize("readonly", [False, True])
def test_a_deleted_newest_segment_is_named_with_what_it_held(tmp_path, readonly):
    path = project_with_commits(tmp_path / "p")
    newest = sorted((path / "segments").glob("seg-*.parquet"))[-1]
    newest.unlink()
    with pytest.warns(DamagedProjectWarning, match=rf"{newest.name}.*missing.*feedback.*r000001"):
        store = SampleStore(path, readonly=readonly)
    assert len(store) == 3
    store.close()


def test_a_missing_newest_segment_is_not_reused_and_stays_named(tmp_path):
    path = project_with_commits(tmp_path / "p")
    newest = sorted((path / "segments").glob("seg-*.parquet"))[-1]
    newest.unlink()
    with pytest.warns(DamagedProjectWarning, match=newest.name):
        store = SampleStore(path)
    store.add([make_image(4)], [{"label": "b"}])  # a later commit takes the next number
    store.close()
    assert not newest.exists()
    with pytest.warns(DamagedProjectWarning, match=rf"{newest.name}.*missing"):
        SampleStore(path, readonly=True)


def test_a_changed_segment_that_still_parses_is_named(tmp_path):
    path = project_with_commits(tmp_path / "p")
    first, newest = sorted((path / "segments").glob("seg-*.parquet"))
    newest.write_bytes(first.read_bytes())  # a valid parquet file, but not the one committed
    for readonly in (False, True):
        with pytest.raises(DamagedFileError, match=rf"{newest.name} is damaged.*checksum.*feedback.*r000001"):
            SampleStore(path, readonly=readonly)


def test_a_deleted_samples_table_is_named(tmp_path):
    path = project_with_commits(tmp_path / "p")
    (path / "samples.parquet").unlink()
    with pytest.raises(DamagedFileError, match=r"samples\.parquet is missing.*2 samples.*backup"):
        SampleStore(path, readonly=True)


def test_no_warning_for_a_healthy_project_and_readers_during_compaction(tmp_path):
    path = project_with_commits(tmp_path / "p")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with SampleStore(path) as store:
            for k in range(5):
                store.add([make_image(10 + k)], [{"label": "a"}])
            reader = SampleStore(path, readonly=True)
            store.compact()
            reader.reload()
            assert len(reader) == len(store) == 8


def test_a_commit_killed_before_its_log_entry_is_kept(tmp_path):
    """The segment's rename is the commit point: a kill before commits.json is rewritten loses nothing."""
    path = project_with_commits(tmp_path / "p")
    log = json.loads((path / "commits.json").read_text())
    log["commits"] = log["commits"][:-1]
    (path / "commits.json").write_text(json.dumps(log))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with SampleStore(path) as store:
            assert store.row("r000001")["feedback"] == "good"
    assert json.loads((path / "commits.json").read_text())["commits"][-1]["kind"] == "update"  # repaired


def test_an_old_project_without_a_log_opens_with_a_note_and_is_migrated(tmp_path):
    path = project_with_commits(tmp_path / "p")
    (path / "commits.json").unlink()
    meta = json.loads((path / "project.json").read_text())
    meta.pop("commit_log")
    (path / "project.json").write_text(json.dumps(meta))
    with pytest.warns(ProjectNote, match="commit log"):
        assert len(SampleStore(path, readonly=True)) == 3
    with pytest.warns(ProjectNote, match="commit log"):
        SampleStore(path).close()
    assert (path / "commits.json").exists()
    newest = sorted((path / "segments").glob("seg-*.parquet"))[-1]
    newest.unlink()  # from now on the log catches it
    with pytest.warns(DamagedProjectWarning, match=newest.name):
        SampleStore(path, readonly=True)


def test_a_deleted_log_is_named(tmp_path):
    path = project_with_commits(tmp_path / "p")
    (path / "commits.json").unlink()
    with pytest.warns(DamagedProjectWarning, match=r"commits\.json is missing"):
        SampleStore(path, readonly=True)

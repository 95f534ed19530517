"""SampleStore: round trip, crash safety under SIGKILL, the write lock, schema version, embeddings."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.kill_helpers import child_env, kill_when_ready

from datacrafter_widget.data.images import content_hash, png_bytes
from datacrafter_widget.data.store import (
    COLUMNS,
    ProjectLockedError,
    ReadOnlyError,
    SampleStore,
    SchemaVersionError,
    StoreError,
)

REPO = Path(__file__).resolve().parent.parent
PKG = str(REPO / "datacrafter_widget")


def make_image(i: int, size: int = 16) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB")


def tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


# ---- round trip --------------------------------------------------------------------------------
def test_round_trip_1000_samples(tmp_path):
    project = tmp_path / "proj"
    images = [make_image(i) for i in range(1000)]
    images[7] = images[3]  # identical content: stored once, two samples
    rows = []
    for i in range(1000):
        generated = i >= 400
        rows.append(
            {
                "label": str(i % 10),
                "split": "generated" if generated else ["pool", "train", "test"][i % 3],
                "prompt": f"a photo of a {i % 10}, ünïcödé ✓ <b>not html</b>" if generated else "",
                "negative_prompt": "blurry" if i % 2 else "",
                "seed": i if generated else -1,
                "steps": 20 if generated else -1,
                "guidance": 7.5 if generated else math.nan,
                "strength": 0.5 if i % 5 == 0 and generated else math.nan,
                "parent_id": "r000001" if i % 5 == 0 and generated else "",
                "round": (i // 100) if generated else 0,
                "strategy": "caption" if generated else "",
                "model": "tiny-sd" if generated else "",
                "caption": f"caption {i}",
                "created": 1_700_000_000.0 + i,
                "extra_score": float(i) / 3.0,
            }
        )
    with SampleStore(project) as store:
        ids = []
        for i in range(0, 20):  # one by one
            ids += store.add([images[i]], [rows[i]])
        for start in range(20, 1000, 98):  # then in batches
            ids += store.add(images[start : start + 98], rows[start : start + 98])
        assert len(ids) == len(set(ids)) == 1000
        assert ids[0] == "r000001" and ids[400] == "g000001" and ids[-1] == "g000600"
        store.update(ids[400:450], feedback="bad", feedback_labels=["blurry", "off-class"])
        store.update(ids[450:452], flag=["off-class", ""], flag_reason=["looks like a 7", ""])
        store.write_json("rounds.json", [{"round": 1, "accuracy": 0.5}])
        store.write_json("prompts.json", {"history": ["a photo of a 3"]})
        before = store.samples
    assert list(before.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert (before.loc[400:449, "feedback"] == "bad").all()
    assert json.loads(before.at[400, "feedback_labels"]) == ["blurry", "off-class"]
    assert before.at[450, "flag"] == "off-class" and before.at[450, "flag_reason"] == "looks like a 7"

    reopened = SampleStore(project)
    after = reopened.samples
    pd.testing.assert_frame_equal(before, after)
    assert after["seed"].dtype == np.int64 and after["strength"].dtype == np.float64
    assert math.isnan(after.at[0, "strength"]) and after.at[400, "strength"] == 0.5
    assert after.at[400, "prompt"].startswith("a photo of a 0, ünïcödé ✓")
    assert after["extra_score"].tolist() == pytest.approx([i / 3.0 for i in range(1000)])
    for i, sid in enumerate(ids):
        data = (project / after.at[i, "file"]).read_bytes()
        assert data == png_bytes(images[i])
        assert after.at[i, "hash"] == content_hash(data)
        assert np.array_equal(np.asarray(reopened.image(sid)), np.asarray(images[i]))
    assert len(list((project / "images").glob("*.png"))) == 999  # the duplicate is stored once
    assert reopened.read_json("rounds.json") == [{"round": 1, "accuracy": 0.5}]
    assert reopened.read_json("prompts.json") == {"history": ["a photo of a 3"]}
    assert reopened.read_json("missing.json", default={}) == {}
    assert reopened.read_json("project.json")["schema_version"] == 1
    reopened.compact()
    reopened.close()
    assert not list((project / "segments").glob("*.parquet"))
    pd.testing.assert_frame_equal(before, SampleStore(project, readonly=True).samples)


def test_add_validates_rows(tmp_path):
    with SampleStore(tmp_path / "p") as store:
        with pytest.raises(ValueError, match="one row per image"):
            store.add([make_image(0)], [])
        with pytest.raises(ValueError, match="assigns id"):
            store.add([make_image(0)], [{"id": "x", "label": "a"}])
        with pytest.raises(ValueError, match="feedback"):
            store.add([make_image(0)], [{"label": "a", "feedback": "meh"}])
        with pytest.raises(TypeError, match="not a PIL image"):
            store.add([np.zeros((4, 4, 3))], [{"label": "a"}])
        assert len(store) == 0
        (sid,) = store.add([make_image(0)], [{"label": "a"}])
        with pytest.raises(KeyError, match="nothing was changed"):
            store.update([sid, "r999999"], feedback="bad")
        with pytest.raises(ValueError, match="one per id"):
            store.update([sid], flag=["a", "b"])
        assert store.row(sid)["feedback"] == ""


# ---- crash safety ------------------------------------------------------------------------------
WRITER = textwrap.dedent(
    """
    import sys, types
    # Import the store without the package __init__ (which loads torch): keeps each trial fast.
    pkg = types.ModuleType("datacrafter_widget")
    pkg.__path__ = [sys.argv[-1]]
    sys.modules["datacrafter_widget"] = pkg
    import numpy as np
    from PIL import Image
    from datacrafter_widget.data.store import SampleStore
    SampleStore.COMPACT_SEGMENTS = 7      # compact often, so kills land inside compaction too
    SampleStore.COMPACT_PARTS = 3
    path, durable = sys.argv[1], sys.argv[2] == "1"
    def image(i):
        return Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8), mode="RGB")
    store = SampleStore(path, durable=durable)
    i = int(sys.argv[3])
    print("ready", flush=True)
    while True:
        n = 1 + i % 3
        ids = store.add([image(i + k) for k in range(n)], [{"label": str((i + k) % 10), "prompt": f"p{i + k}"} for k in range(n)])
        print("add", " ".join(f"{sid}:{i + k}" for k, sid in enumerate(ids)), flush=True)
        if i % 4 == 0:
            store.update(ids, feedback="bad", feedback_labels=["blurry"])
            print("bad", " ".join(ids), flush=True)
        if i % 5 == 0:
            h = store.row(ids[0])["hash"]
            store.put_embeddings([h], "clip", np.full((1, 8), i, dtype=np.float32))
            print("emb", h, i, flush=True)
        i += n
    """
)


def test_sigkill_at_random_moments_keeps_every_committed_sample(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    project = tmp_path / "proj"
    committed: dict[str, int] = {}
    bad: set[str] = set()
    emb: dict[str, int] = {}
    rnd = random.Random(1234)
    start = 0
    for trial in range(5):
        args = [str(script), str(project), "1" if trial % 2 else "0", str(start), PKG]
        out = kill_when_ready(args, rnd.uniform(0.1, 0.7), "writer")
        for line in out.splitlines(keepends=True):
            if not line.endswith("\n"):
                continue
            kind, *rest = line.split()
            if kind == "add":
                for pair in rest:
                    sid, i = pair.split(":")
                    committed[sid] = int(i)
            elif kind == "bad":
                bad.update(rest)
            elif kind == "emb":
                emb[rest[0]] = int(rest[1])
        if committed:
            start = max(committed.values()) + 3

        # A reader sees a consistent project even before a writer cleans up after the kill.
        ro = SampleStore(project, readonly=True)
        assert set(committed) <= set(ro.samples["id"])
        with SampleStore(project) as store:  # the next writer removes stale temp files
            assert tmp_files(project) == []
            frame = store.samples.set_index("id")
            assert frame.index.is_unique
            for sid, i in committed.items():
                row = frame.loc[sid]
                assert row["prompt"] == f"p{i}" and row["label"] == str(i % 10)
                assert np.array_equal(np.asarray(store.image(sid)), np.asarray(make_image(i)))
                assert row["hash"] == content_hash((project / row["file"]).read_bytes())
            assert all(frame.loc[sid, "feedback"] == "bad" for sid in bad)
            assert json.loads(frame.loc[sorted(bad)[0], "feedback_labels"]) == ["blurry"] if bad else True
            if emb:
                got = store.embeddings(list(emb), "clip")
                assert got is not None
                assert np.array_equal(got[:, 0], np.array(list(emb.values()), dtype=np.float32))
    assert len(committed) > 30, f"only {len(committed)} commits in 5 trials: the writer barely ran"


# ---- lock --------------------------------------------------------------------------------------
HOLDER = textwrap.dedent(
    """
    import sys, types
    # Import the store without the package __init__ (which loads torch): keeps each trial fast.
    pkg = types.ModuleType("datacrafter_widget")
    pkg.__path__ = [sys.argv[-1]]
    sys.modules["datacrafter_widget"] = pkg
    import time
    from datacrafter_widget.data.store import SampleStore
    store = SampleStore(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_second_writer_in_another_process_is_refused(tmp_path):
    project = tmp_path / "proj"
    with SampleStore(project) as store:
        store.add([make_image(1)], [{"label": "a"}])
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(project), PKG], stdout=subprocess.PIPE, text=True, env=child_env()
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ProjectLockedError) as info:
            SampleStore(project)
        message = str(info.value)
        assert str(project) in message and f"pid {proc.pid}" in message
        assert "readonly=True" in message and "Close the other kernel" in message
        ro = SampleStore(project, readonly=True)  # browsing works while locked
        assert ro.samples["label"].tolist() == ["a"]
        with pytest.raises(ReadOnlyError, match="readonly=True"):
            ro.add([make_image(2)], [{"label": "b"}])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with SampleStore(project) as store:  # the lock died with the process
        assert len(store) == 1


def test_second_writer_in_the_same_process_is_refused(tmp_path):
    project = tmp_path / "proj"
    first = SampleStore(project)
    with pytest.raises(ProjectLockedError, match="this process"):
        SampleStore(project)
    with pytest.raises(ProjectLockedError, match=f"pid {os.getpid()}"):
        SampleStore(project)
    first.add([make_image(1)], [{"label": "a"}])
    ro = SampleStore(project, readonly=True)
    assert len(ro) == 1
    first.add([make_image(2)], [{"label": "b"}])
    assert len(ro) == 1
    ro.reload()
    assert ro.samples["label"].tolist() == ["a", "b"]
    first.close()
    first.close()
    with pytest.raises(StoreError, match="closed"):
        first.add([make_image(3)], [{"label": "c"}])
    with SampleStore(project) as second:
        assert len(second) == 2


# ---- opening -----------------------------------------------------------------------------------
def test_open_errors(tmp_path):
    with pytest.raises(StoreError, match="not a datacrafter project"):
        SampleStore(tmp_path / "nope", readonly=True)
    with pytest.raises(StoreError, match="create=True"):
        SampleStore(tmp_path / "nope", create=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="notes.txt"):
        SampleStore(other)
    newer = tmp_path / "newer"
    SampleStore(newer).close()
    meta = json.loads((newer / "project.json").read_text())
    meta["schema_version"] = 99
    (newer / "project.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaVersionError, match="upgrade"):
        SampleStore(newer)
    with pytest.raises(SchemaVersionError, match="99"):
        SampleStore(newer, readonly=True)
    meta["schema_version"] = 1
    (newer / "project.json").write_text(json.dumps(meta))
    SampleStore(newer).close()  # the refused opens did not keep the lock


def test_json_documents(tmp_path):
    with SampleStore(tmp_path / "p") as store:
        store.write_json("project.json", {"name": "pets", "schema_version": 0})
        assert store.read_json("project.json") == {"name": "pets", "schema_version": 1, "commit_log": 1}
        with pytest.raises(ValueError, match="plain file name"):
            store.write_json("../escape.json", {})


def test_stale_temp_files_are_ignored_and_cleaned(tmp_path):
    project = tmp_path / "p"
    with SampleStore(project) as store:
        store.add([make_image(1)], [{"label": "a"}])
    (project / "segments" / "seg-00000099.parquet.tmp-12345").write_bytes(b"half a parquet")
    (project / "images" / "abc.png.tmp-12345").write_bytes(b"half a png")
    (project / "samples.parquet.tmp-1").write_bytes(b"junk")
    assert len(SampleStore(project, readonly=True)) == 1
    assert len(tmp_files(project)) == 3  # a reader never deletes
    with SampleStore(project) as store:
        assert len(store) == 1
    assert tmp_files(project) == []


# ---- embeddings cache --------------------------------------------------------------------------
def test_embeddings_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(SampleStore, "COMPACT_PARTS", 4)
    project = tmp_path / "p"
    rng = np.random.default_rng(0)
    vectors = {f"h{i:03d}": rng.normal(size=8).astype(np.float32) for i in range(30)}
    keys = list(vectors)
    with SampleStore(project) as store:
        assert store.embeddings(keys[:2], "open_clip:ViT-B-32/laion2b") is None
        for start in range(0, 30, 3):  # 10 puts -> compacted twice
            chunk = keys[start : start + 3]
            store.put_embeddings(chunk, "open_clip:ViT-B-32/laion2b", np.stack([vectors[k] for k in chunk]))
        store.put_embeddings(keys[:2], "other/key", np.ones((2, 4)))
        with pytest.raises(ValueError, match="different key"):
            store.put_embeddings(keys[:1], "other/key", np.ones((1, 5)))
        with pytest.raises(ValueError, match="does not match"):
            store.put_embeddings(keys[:2], "other/key", np.ones((3, 4)))
    parts = list((project / "embeddings").rglob("*.safetensors"))
    assert len(parts) < 10
    ro = SampleStore(project, readonly=True)
    got = ro.embeddings(keys[::-1], "open_clip:ViT-B-32/laion2b")
    assert got.dtype == np.float32 and got.shape == (30, 8)
    assert np.array_equal(got, np.stack([vectors[k] for k in keys[::-1]]))
    assert ro.embeddings(["h000", "zzz"], "open_clip:ViT-B-32/laion2b") is None
    partial = ro.embeddings(["h000", "zzz"], "open_clip:ViT-B-32/laion2b", partial=True)
    assert np.array_equal(partial[0], vectors["h000"]) and np.isnan(partial[1]).all()
    assert ro.missing_embeddings(["zzz", "h001", "zzz", "yyy"], "open_clip:ViT-B-32/laion2b") == ["zzz", "yyy"]
    assert np.array_equal(ro.embeddings(keys[:2], "other/key"), np.ones((2, 4), dtype=np.float32))


def test_embeddings_stored_twice_compact_to_the_latest_row(tmp_path, monkeypatch):
    # Found by the SIGKILL test: a writer killed between committing a sample and reporting it
    # re-adds the same image, so one hash gets a second row; compaction then overran its list.
    monkeypatch.setattr(SampleStore, "COMPACT_PARTS", 3)
    project = tmp_path / "p"
    key = "open_clip:ViT-B-32/laion2b"
    with SampleStore(project) as store:
        store.put_embeddings(["a", "b"], key, np.zeros((2, 4)))
        store.put_embeddings(["b"], key, np.full((1, 4), 2.0))  # b again, newer value
        store.put_embeddings(["c"], key, np.full((1, 4), 3.0))  # third part -> compaction
        assert np.array_equal(store.embeddings(["a", "b", "c"], key)[:, 0], [0.0, 2.0, 3.0])
        for n in range(4):  # compact again with repeats
            store.put_embeddings(["a"], key, np.full((1, 4), 10.0 + n))
    parts = list((project / "embeddings").rglob("*.safetensors"))
    assert len(parts) < 3
    got = SampleStore(project, readonly=True).embeddings(["c", "b", "a"], key)
    assert np.array_equal(got[:, 0], [3.0, 2.0, 13.0])


def test_readonly_reload_while_the_writer_compacts(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(SampleStore, "COMPACT_SEGMENTS", 3)
    project = tmp_path / "p"
    writer = SampleStore(project, durable=False)
    writer.add([make_image(0)], [{"label": "a"}])
    done = threading.Event()
    first_reload = threading.Event()

    def write():
        for i in range(1, 120):
            if i == 60:  # the second half is written while the reader is reloading, however slow its start
                first_reload.wait(timeout=120)
            writer.add([make_image(i)], [{"label": "a"}])
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    reader = SampleStore(project, readonly=True)
    seen: set[str] = set()
    reloads = 0
    while not done.is_set() or reloads == 0:
        reader.reload()
        ids = set(reader.samples["id"])
        assert seen <= ids, "a reader lost samples it had already seen"
        seen = ids
        reloads += 1
        first_reload.set()
    thread.join()
    reader.reload()
    assert len(reader) == 120 and reloads > 1
    writer.close()

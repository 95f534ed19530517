"""Every project file is checked for shape, not only syntax, and named with its path (issue 24);
embeddings carry checksums; every path read from the table stays inside the project."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import datacrafter_widget as dc
from datacrafter_widget.data.store import DamagedFileError, DamagedProjectWarning, SampleStore
from tests.test_export import make_image


@pytest.fixture
def project(tmp_path):
    path = tmp_path / "proj"
    ds = dc.Dataset.from_images([make_image(k) for k in range(4)], ["a", "a", "b", "b"])
    with dc.DataCrafter(ds, project=path) as c:
        c.store.compact()
    return path


@pytest.mark.parametrize(
    "meta, what",
    [
        ({"schema_version": "one"}, "schema_version is 'one'"),
        ({"schema_version": 1, "classes": 5}, "classes is 5"),
        ({"schema_version": 1, "classes": ["a", 2]}, "classes is"),
    ],
)
def test_project_json_of_the_wrong_shape_is_named(project, meta, what):
    (project / "project.json").write_text(json.dumps(meta))
    for readonly in (True, False):
        with pytest.raises(DamagedFileError, match=rf"project\.json is damaged \({what}"):
            dc.DataCrafter.open(project, readonly=readonly)


def test_a_samples_table_of_the_wrong_shape_is_named(project):
    table = pq.read_table(project / "samples.parquet")
    bad = table.set_column(table.schema.get_field_index("id"), "id", pa.array([str(i) for i in range(len(table))]))
    pq.write_table(bad.replace_schema_metadata(table.schema.metadata), project / "samples.parquet")
    with pytest.raises(DamagedFileError, match=r"samples\.parquet is damaged \(sample id '0'"):
        SampleStore(project, readonly=True)
    frame = table.to_pandas().drop(columns=["hash"])
    pq.write_table(
        pa.Table.from_pandas(frame).replace_schema_metadata(table.schema.metadata), project / "samples.parquet"
    )
    with pytest.raises(DamagedFileError, match=r"samples\.parquet is damaged \(it has no 'hash'"):
        SampleStore(project, readonly=True)


def test_garbled_embeddings_are_not_used(project):
    with SampleStore(project) as store:
        hashes = store.samples["hash"].tolist()
        store.put_embeddings(hashes, "clip", np.eye(4, dtype=np.float32))
        with pytest.raises(ValueError, match="NaN or infinite"):
            store.put_embeddings(hashes[:1], "clip", np.full((1, 4), np.nan, np.float32))
    (part,) = (project / "embeddings").rglob("part-*.safetensors")
    data = bytearray(part.read_bytes())
    data[-16:] = np.full(4, 3.0e38, np.float32).tobytes()  # same size, still parses: values garbled
    part.write_bytes(bytes(data))
    with pytest.warns(DamagedProjectWarning, match=rf"{part.name} is damaged.*sha256.*computed again"):
        store = SampleStore(project, readonly=True)
        assert store.embeddings(hashes, "clip") is None
        assert store.missing_embeddings(hashes, "clip") == hashes


def test_set_prompt_refuses_what_is_not_text(project):
    with dc.DataCrafter.open(project) as c:
        for bad in (None, 5, ["x"]):
            with pytest.raises(ValueError, match=rf"prompt for 'a' is {re.escape(repr(bad))}.*not text"):
                c.set_prompt("a", bad)
        with pytest.raises(ValueError, match="not text"):
            c.set_prompt("a", "a photo", negative_prompt=3)
        assert "a" not in c.prompts  # nothing was written to the prompt book


def test_regenerate_reads_gap_files_only_inside_the_project(tmp_path):
    from datacrafter_widget.models.generator import Generator
    from tiny_models import tiny_sd_pipeline

    (tmp_path / "outside.safetensors").write_bytes(b"not yours")
    gen = Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=2)
    ds = dc.Dataset.from_images([make_image(k) for k in range(4)], ["a", "a", "b", "b"])
    with dc.DataCrafter(ds, models=dc.Models(generator=gen), project=tmp_path / "p") as c:
        base = {"label": "a", "split": "generated", "model": "tiny-sd", "steps": 2, "guidance": 1.0, "seed": 1}
        (tokens,) = c.store.add([make_image(9)], [{**base, "embeddings_file": "../outside.safetensors"}])
        (masked,) = c.store.add(
            [make_image(10)],
            [
                {
                    **base,
                    "embeddings_file": "gap/t.safetensors",
                    "parent_id": "r000001",
                    "strength": 0.5,
                    "mask_file": "/etc/passwd",
                }
            ],
        )
        with pytest.raises(
            DamagedFileError, match=rf"sample {tokens}: its embeddings_file '\.\./outside.*points outside"
        ):
            c.regenerate(tokens)
        with pytest.raises(DamagedFileError, match=rf"sample {masked}: its mask_file '/etc/passwd' points outside"):
            c.regenerate(masked)


@pytest.mark.parametrize("name, empty", [("rounds.json", "[]"), ("feedback.json", "[]"), ("prompts.json", "{}")])
def test_a_deleted_document_is_named_not_read_as_none_yet(project, name, empty):
    with SampleStore(project) as store:
        store.write_json(name, json.loads(empty))
    (project / name).unlink()
    for readonly in (True, False):
        with SampleStore(project, readonly=readonly) as store:
            with pytest.raises(
                DamagedFileError, match=rf"{name} is missing, though the project wrote it.*{re.escape(empty)}"
            ):
                store.read_json(name, None)
    (project / name).write_text(empty)  # the fix the message gives
    with SampleStore(project, readonly=True) as store:
        assert store.read_json(name, None) == json.loads(empty)


@pytest.mark.parametrize(
    "name, doc",
    [
        ("rounds.json", [1, "x"]),
        ("rounds.json", {}),
        ("rounds.json", [{"round": "one"}]),
        ("feedback.json", {"good": ["r000001"]}),
        ("feedback.json", [1]),
        ("prompts.json", [1, "x"]),
        ("prompts.json", {"classes": {"a": "a photo"}}),
        ("prompts.json", {"classes": {"a": {"prompt": None, "history": []}}}),
    ],
)
def test_a_document_of_the_wrong_shape_is_named_with_its_path(project, name, doc):
    (project / name).write_text(json.dumps(doc))
    with dc.DataCrafter.open(project) as c:
        uses = {
            "rounds.json": [lambda: c.rounds, c.next_round, lambda: c.feedback(good=["r000001"])],
            "feedback.json": [lambda: c.feedback_log, lambda: c.feedback(good=["r000001"])],
            "prompts.json": [lambda: c.prompts, lambda: c.set_prompt("a", "a photo of an a")],
        }[name]
        for use in uses:
            with pytest.raises(DamagedFileError, match=rf"{name} is damaged \(.*\): restore it from a backup"):
                use()

"""The controller as services over one project: one owner per project file, a runner built without
the facade, one backend protocol, a plan resolved once whose requests are what the backend gets."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import datacrafter_widget as dc
from datacrafter_widget.controller.backends import GeneratedBatch, LocalBackend
from datacrafter_widget.controller.embeddings import Embeddings
from datacrafter_widget.controller.jobs import Job
from datacrafter_widget.controller.project import Project
from datacrafter_widget.controller.round_spec import RoundSpec
from datacrafter_widget.controller.runner import RoundRunner
from datacrafter_widget.data.store import SampleStore
from tests.test_student import _tiny_crafter

PACKAGE = Path(dc.__file__).parent


def _document_users() -> dict[str, set[str]]:
    """project file -> the modules that call read_json / write_json on it (names resolved through
    module-level constants such as PROMPTS_FILE = "prompts.json")."""
    users: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        consts = {
            t.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for t in node.targets
            if isinstance(t, ast.Name) and isinstance(node.value.value, str)
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
                continue
            if node.func.attr not in ("read_json", "write_json") or getattr(node.func.value, "id", "") == "pd":
                continue  # pandas' read_json reads a user's file, not a project document
            arg = node.args[0]
            name = arg.value if isinstance(arg, ast.Constant) else consts.get(getattr(arg, "id", ""), "?")
            users.setdefault(str(name), set()).add(str(path.relative_to(PACKAGE)))
    return users


def test_each_project_document_has_one_module_that_reads_and_writes_it():
    users = _document_users()
    assert users["rounds.json"] == {"controller/rounds_log.py"}
    assert users["prompts.json"] == {"controller/prompt_book.py"}
    assert users["feedback.json"] == {"controller/feedback_log.py"}
    assert users["project.json"] <= {"controller/project.py", "data/store.py"}  # the store checks its schema
    assert users["view.json"] == {"controller/map_service.py"}
    assert "?" not in users, users


class RecordingBackend:
    """Another implementation of the backend protocol: keeps what it was asked for, renders locally."""

    kind = "recording"

    def __init__(self) -> None:
        self.local = LocalBackend()
        self.requests: list = []
        self.batch_sizes: list[int] = []

    def config(self) -> dict[str, object]:
        return {"kind": "recording"}

    def generate(self, models, requests, *, batch_size=8, cancel=None, progress=None) -> Iterator[GeneratedBatch]:
        self.requests += list(requests)
        self.batch_sizes.append(batch_size)
        yield from self.local.generate(models, requests, batch_size=batch_size, cancel=cancel, progress=progress)

    def embed_images(self, models, chunks):
        return self.local.embed_images(models, chunks)

    def caption_images(self, models, chunks):
        return self.local.caption_images(models, chunks)

    def close(self) -> None:
        pass


def test_a_round_is_planned_once_and_the_backend_gets_the_plan(tmp_path):
    crafter, _ = _tiny_crafter(tmp_path)
    backend = RecordingBackend()
    ids = crafter.generate(
        per_class=2,
        strategy=["class", "perturb"],
        classes=["0", "1"],
        seed=7,
        batch_size=3,
        filter=False,
        progress=False,
        backend=backend,
    )
    reqs = backend.requests
    # one call for the whole round: request k of the plan is index k, with seed 7 + k
    assert backend.batch_sizes == [3] and [r.index for r in reqs] == list(range(8))
    assert [r.seed for r in reqs] == [7 + k for k in range(8)]
    # text-to-image and each image-to-image strength are separate groups; sources are loaded
    assert {r.group for r in reqs[:4]} == {0} and all(r.group > 0 and r.source is not None for r in reqs[4:])
    assert all(r.steps == 2 and r.guidance == 3.0 for r in reqs)
    rows = crafter.samples.set_index("id").loc[ids]
    assert sorted(rows["seed"]) == [r.seed for r in reqs]
    by_seed = rows.set_index("seed")
    assert all(by_seed.loc[r.seed, "prompt"] == r.prompt for r in reqs)
    entry = crafter.rounds[-1]
    assert entry["seed"] == 7 and entry["backend"] == {"kind": "recording"} and entry["status"] == "done"
    # the project's backend can be any implementation of the protocol too
    crafter.backend = backend
    assert crafter.backend is backend
    crafter.close()


def test_the_runner_runs_a_round_from_a_project_without_the_facade(tmp_path):
    crafter, models = _tiny_crafter(tmp_path)
    crafter.close()
    store = SampleStore(tmp_path / "proj")
    project = Project.open(store)
    backend = LocalBackend()
    runner = RoundRunner(project, models, backend, Embeddings(project, models, backend), batch_size=4)
    stored: list[str] = []
    project.events.on("samples", stored.extend)
    ids = runner.generate(RoundSpec(strategies=("class",), per_class=1, filter=False).validated(), progress=False)
    assert len(ids) == len(project.classes) and stored == ids
    assert project.rounds.entries()[-1]["status"] == "done" and runner.job is not None
    store.close()


def test_feedback_is_logged_without_reading_the_log_again(tmp_path, monkeypatch):
    crafter, _ = _tiny_crafter(tmp_path)
    ids = crafter.samples["id"].tolist()
    crafter.feedback(bad=ids[:1])
    reads: list[str] = []
    real = SampleStore.read_json

    def counting(self, name, *args, **kwargs):
        reads.append(name)
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(SampleStore, "read_json", counting)
    crafter.feedback(bad=ids[1:2], bad_labels=["blurry"])
    crafter.feedback(good=ids[2:3])
    crafter.undo()
    assert "feedback.json" not in reads
    monkeypatch.undo()
    log = crafter.feedback_log
    assert [e.get("bad") for e in log[:3]] == [ids[:1], ids[1:2], []] and log[3]["undo"] == ids[2:3]
    crafter.close()
    with dc.DataCrafter.open(tmp_path / "proj", readonly=True) as again:
        assert again.feedback_log == log


def test_generate_returns_ids_and_generate_background_a_job(tmp_path):
    crafter, _ = _tiny_crafter(tmp_path)
    ids = crafter.generate(per_class=1, strategy="class", classes=["0"], filter=False, progress=False)
    assert isinstance(ids, list) and len(ids) == 1
    job = crafter.generate_background(per_class=1, strategy="class", classes=["1"], filter=False)
    assert isinstance(job, Job) and job.wait(timeout=120) and crafter.job is job
    with pytest.raises(TypeError):
        crafter.generate(per_class=1, strategy="class", background=True)  # one return type: no flag
    crafter.close()


def test_two_crafters_sharing_an_open_project_keep_each_others_feedback(tmp_path):
    """A re-run notebook cell (or marimo) opens a second crafter on the open project: the feedback log
    each keeps in memory must not drop the other's actions."""
    crafter, models = _tiny_crafter(tmp_path)
    other = dc.DataCrafter.open(tmp_path / "proj", models=models)  # shares the open store in this process
    ids = crafter.samples["id"].tolist()
    crafter.feedback(bad=ids[:1])
    other.feedback(good=ids[1:2])
    crafter.feedback(bad=ids[2:3])
    assert [e["bad"] or e["good"] for e in crafter.feedback_log] == [ids[:1], ids[1:2], ids[2:3]]
    assert other.feedback_log == crafter.feedback_log
    other.close()
    crafter.close()

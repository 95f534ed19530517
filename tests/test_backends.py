"""Execution backends: the local default, and rounds / embeddings / captions on a local Ray instance.

The Ray tests share one Ray instance per module (start-up takes seconds): a fresh 2-CPU one, or
the cluster in RAY_ADDRESS when set (`ray start --head --num-cpus=2`). Workers import the package
and tests/tiny_models.py from this checkout through the runtime_env's PYTHONPATH.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from tiny_models import tiny_models

import datacrafter_widget as dc
from datacrafter_widget.controller.backends import (
    BackendError,
    ImageRequest,
    LocalBackend,
    RayBackend,
    backend_from_config,
    plan_batches,
)

REPO = Path(__file__).resolve().parent.parent
PROVENANCE = [
    "label",
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "strength",
    "parent_id",
    "round",
    "strategy",
    "model",
    "latent_perturbation",
    "scheduler",
    "guidance_min_sigma",
    "batch_index",
]


def _ds():
    return dc.starter.colored_digits(shots=1, seed=0)


# ---- no Ray needed --------------------------------------------------------------------------------
def test_backend_config_round_trip_and_errors():
    assert isinstance(backend_from_config(None), LocalBackend)
    assert isinstance(backend_from_config("local"), LocalBackend)
    ray_b = backend_from_config({"kind": "ray", "address": "auto", "workers": 3, "gpus_per_worker": 1, "batch_size": 4})
    assert isinstance(ray_b, RayBackend)
    assert backend_from_config(ray_b.config()).config() == ray_b.config()
    with pytest.raises(BackendError, match="unknown backend kind 'dask'"):
        backend_from_config({"kind": "dask"})
    with pytest.raises(BackendError, match=r"unknown Ray backend setting\(s\) \['gpus'\]"):
        backend_from_config({"kind": "ray", "gpus": 1})
    with pytest.raises(BackendError, match="at least one Ray worker"):
        RayBackend(workers=0)


def test_plan_batches_keeps_groups_apart():
    reqs = [ImageRequest(index=i, group=g, prompt="p") for i, g in enumerate([0, 0, 1, 0, 1, 0])]
    batches = plan_batches(reqs, 2)
    assert [[r.index for r in b] for b in batches] == [[0, 1], [3, 5], [2, 4]]


def test_project_remembers_its_backend(tmp_path):
    with dc.DataCrafter(_ds(), project=tmp_path / "p", backend={"kind": "ray", "workers": 2}) as c:
        assert isinstance(c.backend, RayBackend) and c.backend.workers == 2
    with dc.DataCrafter.open(tmp_path / "p") as c:
        assert c.backend.config()["workers"] == 2
        c.backend = "local"
    with dc.DataCrafter.open(tmp_path / "p") as c:
        assert isinstance(c.backend, LocalBackend)


def test_ray_backend_needs_a_model_recipe():
    models = tiny_models()
    models.spec = None
    with pytest.raises(BackendError, match="recipe"):
        RayBackend(workers=1)._spec(models)


# ---- on a local Ray instance ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_env():
    ray = pytest.importorskip("ray")
    paths = [str(REPO), str(REPO / "tests")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    runtime_env = {
        "env_vars": {
            "PYTHONPATH": os.pathsep.join(paths),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
        }
    }
    started = not ray.is_initialized()
    if started:
        address = os.environ.get("RAY_ADDRESS")
        kwargs = {"address": address} if address else {"num_cpus": 2, "include_dashboard": False}
        for attempt in (1, 2):  # Ray's start-up has fixed timeouts that a machine under heavy load can miss
            try:
                ray.init(runtime_env=runtime_env, log_to_driver=False, **kwargs)
                break
            except Exception as err:  # noqa: BLE001 - reported below
                ray.shutdown()
                if attempt == 2:
                    pytest.skip(
                        f"a local Ray instance did not start on this machine ({err}); "
                        "start one with `ray start --head --num-cpus=2` and set RAY_ADDRESS=auto"
                    )
    yield ray
    if started:
        ray.shutdown()


def _rows(crafter):
    s = crafter.samples
    g = s[s["source"] == "generated"].copy()
    g["key"] = g["batch_id"].astype(str) + "/" + g["batch_index"].astype(str)
    return g.set_index("key").sort_index()


def _pixels(crafter, ids):
    return [np.asarray(crafter.store.image(i), dtype=np.int16) for i in ids]


def _assert_same_round(local, remote):
    a, b = _rows(local), _rows(remote)
    assert list(a.index) == list(b.index)  # the same batches, the same positions in them
    for col in PROVENANCE:
        assert a[col].astype(str).tolist() == b[col].astype(str).tolist(), col
    for x, y in zip(_pixels(local, a["id"]), _pixels(remote, b["id"])):
        assert x.shape == y.shape
        assert np.abs(x - y).max() <= 2  # the same seeds give the same images, up to float rounding
    assert a["seed"].is_unique and b["seed"].is_unique


def test_tiny_round_on_ray_matches_local(ray_env, tmp_path):
    kw = {
        "per_class": 1,
        "strategy": ["class", "perturb"],
        "classes": ["0", "1", "2"],
        "batch_size": 2,
        "progress": False,
    }
    with dc.DataCrafter(_ds(), models=tiny_models(), project=tmp_path / "local") as local:
        local.generate(**kw)
        backend = RayBackend(workers=2)
        with dc.DataCrafter(_ds(), models=tiny_models(), project=tmp_path / "ray", backend=backend) as remote:
            remote.generate(**kw)
            assert len(backend.actors) == 2
            _assert_same_round(local, remote)
            assert remote.rounds[-1]["backend"]["kind"] == "ray" and remote.rounds[-1]["status"] == "done"
            # embeddings of the real images through the workers equal the local ones
            real = remote.samples[remote.samples["source"] == "real"]["id"].tolist()
            assert np.allclose(remote.embeddings(real), local.embeddings(real), atol=1e-5)


def test_starter_round_on_ray_matches_local(ray_env, tmp_path):
    models = dc.starter.models()
    kw = {"per_class": 1, "strategy": "caption", "classes": ["3", "7"], "steps": 3, "batch_size": 2, "progress": False}
    with dc.DataCrafter(_ds(), models=models, project=tmp_path / "local") as local:
        local.generate(**kw)
        with dc.DataCrafter(_ds(), models=models, project=tmp_path / "ray") as remote:
            remote.generate(**kw, backend=RayBackend(workers=1))
            _assert_same_round(local, remote)
            backend = RayBackend(workers=1)
            images = [remote.store.image(i) for i in remote.samples["id"][:3]]
            assert next(iter(backend.caption_images(models, [images]))) == models.captioner(images)
            backend.close()


def _round_with_failure(ray_env, tmp_path, break_worker):
    """12 images in batches of 1 on 2 workers; `break_worker(backend)` runs after the first stored batch."""
    flag = str(tmp_path / "crash-now")
    models = tiny_models(crash_flag=flag)
    backend = RayBackend(workers=2)
    with dc.DataCrafter(_ds(), models=models, project=tmp_path / "p", backend=backend) as c:
        fired = []

        def once(ids):
            if not fired:
                fired.append(ids)
                break_worker(backend, flag)

        c.on("samples", once)
        c.generate(per_class=3, strategy="class", classes=["0", "1", "2", "3"], batch_size=1, progress=False)
        rows = _rows(c)
        assert fired
        assert len(rows) == 12 and rows["seed"].is_unique  # nothing lost, nothing twice
        assert sorted(rows["seed"]) == list(range(int(rows["seed"].min()), int(rows["seed"].min()) + 12))
        assert c.rounds[-1]["status"] == "done" and c.rounds[-1]["stored"] == 12
        return len(backend.actors)  # live workers at the end of the round


def test_worker_killed_for_good_mid_round_its_batches_go_elsewhere(ray_env, tmp_path):
    live = _round_with_failure(ray_env, tmp_path, lambda b, flag: ray_env.kill(b.actors[0], no_restart=True))
    assert live == 1


def test_worker_process_dies_mid_round_ray_restarts_it(ray_env, tmp_path):
    live = _round_with_failure(ray_env, tmp_path, lambda b, flag: Path(flag).write_text("exit"))
    assert not Path(tmp_path / "crash-now").exists()  # a worker did die (it removed the flag)
    assert live == 2


def test_cancel_keeps_what_finished(ray_env, tmp_path):
    backend = RayBackend(workers=1)
    with dc.DataCrafter(_ds(), models=tiny_models(), project=tmp_path / "p", backend=backend) as c:
        first = threading.Event()
        c.on("samples", lambda ids: first.set())
        job = c.generate_background(per_class=4, strategy="class", batch_size=1)
        assert first.wait(300)
        job.cancel()
        ids = job.wait(300)
        assert job.status == "cancelled"
        rows = _rows(c)
        assert 1 <= len(rows) < 40 and sorted(rows["id"]) == sorted(ids)
        assert c.rounds[-1]["status"] == "cancelled" and c.rounds[-1]["stored"] == len(ids)
        # the pool survives a cancel: the next round runs on the same workers and completes
        actors = list(backend.actors)
        more = c.generate(per_class=1, strategy="class", classes=["5"], progress=False)
        assert len(more) == 1 and backend.actors == actors


def test_run_config_backend_section():
    from datacrafter_widget.app.config import ConfigError, backend_config, load_config

    cfg = load_config({"backend": {"kind": "ray", "address": "auto", "workers": 2, "gpus_per_worker": 1}})
    assert backend_from_config(backend_config(cfg)).config()["workers"] == 2
    assert isinstance(backend_from_config(backend_config(load_config({}))), LocalBackend)
    with pytest.raises(ConfigError, match=r"kind in \[backend\] = 'dask' is not allowed"):
        load_config({"backend": {"kind": "dask"}})

"""The notebooks run top to bottom in a real kernel (nbclient), offline.

The Colab notebook runs against the tiny random-weight models saved as local folders, passed in
through its parameters (DC_* environment variables), so every call it makes is exercised without a
hub; its default hub ids and Colab set-up stay for real use. The starter notebooks are slow (they
are the real demo) and run with DATACRAFTER_TEST_NOTEBOOKS=1 or under CI.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "datacrafter_widget" / "starter" / "notebooks"

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def execute(path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, timeout: int = 1200, **env: str):
    """Run a notebook in `workdir` (a copy of it, so the original is never written) and return it."""
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    return nb


def execute_nb(nb, workdir: Path, timeout: int = 300):
    """Run an in-memory notebook in `workdir` with the environment `execute` set up."""
    nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    return nb


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append(out["text"])
            for key in ("text/plain",):
                if key in out.get("data", {}):
                    parts.append(out["data"][key])
    return "\n".join(parts)


@pytest.fixture(scope="module")
def tiny_model_folders(tmp_path_factory):
    """The tiny SD pipeline, CLIP and BLIP written as local folders, the way a user keeps offline copies."""
    import torch
    from safetensors.torch import save_file

    from tests.tiny_models import tiny_blip, tiny_open_clip, tiny_sd_pipeline

    root = tmp_path_factory.mktemp("models")
    tiny_sd_pipeline().save_pretrained(root / "sd")
    clip, _, _ = tiny_open_clip()
    (root / "clip").mkdir()
    cfg = {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        },
        "preprocess_cfg": {},
    }
    (root / "clip" / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file(
        {k: v.contiguous() for k, v in clip.state_dict().items()}, str(root / "clip" / "open_clip_model.safetensors")
    )
    blip, processor = tiny_blip()
    blip.save_pretrained(root / "blip")
    processor.save_pretrained(root / "blip")
    # A tiny ImageFolder tree of splits, as Kaggle and torchvision keep one: two classes, four train
    # and two test images each.
    from PIL import Image

    data = root / "pets"
    for split, n in (("train", 4), ("test", 2)):
        for c, colour in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
            (data / split / c).mkdir(parents=True)
            for i in range(n):
                shade = tuple(min(255, x + 10 * i + (5 if split == "test" else 0)) for x in colour)
                Image.new("RGB", (32, 32), shade).save(data / split / c / f"{i}.png")
    torch.manual_seed(0)
    return root


# Put first on a kernel's PYTHONPATH: the kernel sees no `google` package at all (no protobuf, no
# google.colab), as on a fresh machine after `pip install datacrafter-widget`: `import google` and
# importlib.util.find_spec("google.colab") fail the way they do there.
NO_GOOGLE = """
import sys

class _HideGoogle:
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name == "google" or name.startswith("google."):
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

sys.meta_path[:] = [_HideGoogle(f) for f in sys.meta_path]
for _name in [m for m in sys.modules if m == "google" or m.startswith("google.")]:
    del sys.modules[_name]
"""


def test_stable_diffusion_notebook_runs_offline_on_tiny_local_models(tiny_model_folders, tmp_path, monkeypatch):
    """Executed in a kernel without any `google` package, from the copy shipped in the package."""
    nb_path = SHIPPED / "stable_diffusion.ipynb"
    assert (REPO / "notebooks" / "stable_diffusion.ipynb").resolve() == nb_path.resolve()
    original = nb_path.read_bytes()
    hide = tmp_path / "no-google"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(NO_GOOGLE)
    monkeypatch.setenv("PYTHONPATH", str(hide) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    m = tiny_model_folders
    env = dict(
        DC_SD_MODEL=str(m / "sd"),
        DC_CLIP_ARCH=f"local-dir:{m / 'clip'}",
        DC_CLIP_PRETRAINED="",
        DC_CAPTIONER=str(m / "blip"),
        DC_DATA=str(m / "pets"),
        DC_PER_CLASS="2",
        DC_STEPS="2",
        DC_GUIDANCE="3.0",
    )
    nb = execute(nb_path, tmp_path, monkeypatch, timeout=900, **env)
    text = outputs_text(nb)
    assert "no GPU" in text or "GPU:" in text
    probe = nbformat.v4.new_code_cell(
        "import importlib.util\ntry:\n    importlib.util.find_spec('google.colab')\nexcept ModuleNotFoundError as e:\n"
        "    print('hidden:', e)"
    )
    probe_nb = nbformat.v4.new_notebook(cells=[probe])
    probe_text = outputs_text(execute_nb(probe_nb, tmp_path))
    assert "hidden: No module named 'google'" in probe_text  # the kernel really has no `google`
    assert "test split: Dataset(" in text  # the train/test tree was read as splits
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # Every step left its trace in the project: caption round, evolved round, student, export.
    from datacrafter_widget.data.store import SampleStore

    store = SampleStore(tmp_path / "runs" / "pets", readonly=True)
    gen = store.samples.query("source == 'generated'")
    assert set(gen["strategy"]) == {"caption", "evolved"} and len(gen) >= 4
    assert gen["model"].str.contains("sd").all()
    store.close()
    assert sorted(p.name for p in (tmp_path / "out" / "pets" / "train").iterdir() if p.is_dir()) == ["cat", "dog"]
    assert len(list((tmp_path / "out" / "pets" / "test").rglob("*.png"))) == 4  # test images stayed test
    assert (tmp_path / "runs" / "pets" / "student").is_dir()
    # Restart & Run All in the same folder: a fresh project again, and the same printed results.
    again = execute(nb_path, tmp_path, monkeypatch, timeout=900, **env)
    assert _cells_signature(again) == _cells_signature(nb)
    assert nb_path.read_bytes() == original  # the notebook in the repository is not written to


def test_stable_diffusion_notebook_takes_a_dataset_id_instead_of_a_folder(tmp_path, monkeypatch):
    """Its parameter, set-up and data cells with DC_HF_DATASET: `datasets.load_dataset(id)` then
    Dataset.from_hf (a local imagefolder stands in for a hub id: no network here), without `google`."""
    pytest.importorskip("datasets")
    from PIL import Image

    data = tmp_path / "beans"
    for split, n in (("train", 3), ("test", 1)):
        for c, colour in (("healthy", (20, 200, 20)), ("rust", (150, 80, 20))):
            (data / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (16, 16), tuple(x + 5 * i for x in colour)).save(data / split / c / f"{i}.png")
    hide = tmp_path / "no-google"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(NO_GOOGLE)
    monkeypatch.setenv("PYTHONPATH", str(hide) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ["PYTHONPATH"])
    monkeypatch.setenv("DC_HF_DATASET", str(data))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    full = nbformat.read(SHIPPED / "stable_diffusion.ipynb", as_version=4)
    data_cell = next(c for c in full.cells if c.cell_type == "code" and "from_hf(" in c.source)
    nb = nbformat.v4.new_notebook(
        cells=[
            full.cells[1],
            full.cells[2],
            data_cell,
            nbformat.v4.new_code_cell("print(ds.classes, len(ds), len(ds.test))"),
        ]
    )
    text = outputs_text(execute_nb(nb, tmp_path))
    assert "['healthy', 'rust'] 6 2" in text


def test_stable_diffusion_notebook_keeps_its_hub_ids_and_colab_setup():
    nb = nbformat.read(REPO / "notebooks" / "stable_diffusion.ipynb", as_version=4)
    src = "\n".join(c.source for c in nb.cells)
    assert '"stabilityai/sd-turbo"' in src and '"Salesforce/blip-image-captioning-base"' in src
    assert "enable_custom_widget_manager" in src and "torch.cuda.is_available()" in src
    assert nb.cells[1].metadata.get("tags") == ["parameters"]


def _cells_signature(nb) -> list[str]:
    """The results every cell printed or displayed: stdout and text/plain, without timings, ids and widget ids.

    stderr is left out: it carries tqdm progress bars, whose rates and elapsed times differ run to run.
    So are the bars shown as widgets: how many a cell shows depends on what the widget's background
    job had already computed and cached (a held-out student per round), not on the results.
    """
    import re

    sig = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") != "stdout":
                continue
            text = out.get("text", "") or out.get("data", {}).get("text/plain", "")
            if re.search(r"\d+%\|.*\| *\d+/\d+ \[", str(text)):
                continue  # a progress bar
            text = re.sub(r"\d+(\.\d+)?\s*(s|it/s|s/it)\b", "<t>", str(text))
            sig.append(text)
    return sig


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("CI") and not os.environ.get("DATACRAFTER_TEST_NOTEBOOKS"),
    reason="the starter notebooks take minutes: run under CI=true or DATACRAFTER_TEST_NOTEBOOKS=1",
)
@pytest.mark.parametrize(
    "name",
    [
        "quickstart.ipynb",
        "gap_walkthrough.ipynb",
    ],
)
def test_starter_notebook_runs_twice_with_the_same_result(name, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(SHIPPED / name, work / name)
    first = execute(work / name, work, monkeypatch)
    second = execute(work / name, work, monkeypatch)  # Restart & Run All, in the same folder
    assert _cells_signature(first) == _cells_signature(second)

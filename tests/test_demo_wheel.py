"""`datacrafter demo` from a wheel installed in a fresh virtual environment, the way a user gets it.

The wheel is built from this checkout (hatchling, no build isolation, so no network), installed with
--no-deps into a venv that reuses the installed torch etc. (--system-site-packages), and its console
script is run from an unrelated folder: the quickstart must come from the installed package and be
copied into a folder the user owns.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_from_a_wheel_in_a_fresh_venv(tmp_path):
    pytest.importorskip("hatchling", reason="building the wheel offline needs hatchling (pip install hatchling)")
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(dist.glob("datacrafter_widget-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "datacrafter_widget/starter/notebooks/quickstart.ipynb" in names
    assert "datacrafter_widget/starter/notebooks/stable_diffusion.ipynb" in names  # the Colab notebook ships too
    assert "datacrafter_widget/starter/weights/checker.safetensors" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    inst = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert inst.returncode == 0, inst.stderr[-2000:]
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATACRAFTER_NOTEBOOKS", "DISPLAY")}
    env["HOME"] = str(tmp_path / "home")
    where = subprocess.run(
        [str(py), "-c", "import datacrafter_widget; print(datacrafter_widget.__file__)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        timeout=300,
    )
    assert str(venv) in where.stdout, f"the package did not come from the wheel: {where.stdout} {where.stderr}"
    demo = subprocess.run(
        [str(venv / "bin" / "datacrafter"), "demo", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stderr
    work = tmp_path / "home" / "datacrafter-notebooks"
    assert (work / "quickstart.ipynb").is_file() and (work / "gap_walkthrough.ipynb").is_file()
    assert re.search(r"open http://localhost:\d+/lab/tree/quickstart.ipynb\?token=[0-9a-f]{32}", demo.stdout)
    assert f"--ServerApp.root_dir={work}" in demo.stdout
    assert "no web browser on this machine" in demo.stderr  # no DISPLAY here: the user is told so
    info = subprocess.run(
        [str(venv / "bin" / "datacrafter"), "info"], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300
    )
    assert info.returncode == 0 and f"notebooks: {venv}" in info.stdout

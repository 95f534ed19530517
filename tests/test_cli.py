"""The `datacrafter` command, run as a subprocess the way users run it; README <-> .ci/run agreement."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def datacrafter(*args: str) -> list[str]:
    """The installed console script when there is one, else the same entry point via -m."""
    exe = shutil.which("datacrafter")
    return [exe, *args] if exe else [sys.executable, "-m", "datacrafter_widget.app.cli", *args]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def test_help_lists_the_commands(capsys):
    out = subprocess.run(datacrafter("--help"), capture_output=True, text=True, env=_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "demo" in out.stdout and "info" in out.stdout
    from datacrafter_widget.app.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--no-browser" in text and "--port" in text
    assert main([]) == 2  # no command: prints the help, fails


def test_info_reports_versions_device_and_models(capsys):
    out = subprocess.run(datacrafter("info", "--json"), capture_output=True, text=True, env=_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    import torch

    assert torch.__version__.startswith(info["packages"]["torch"])
    assert info["torch"]["device"] in ("cuda", "mps", "cpu")
    weights = REPO / "datacrafter_widget" / "starter" / "weights"
    assert info["starter_weights"]["present"] == any(weights.glob("*.safetensors"))
    assert info["huggingface"]["offline"] is True  # conftest sets HF_HUB_OFFLINE=1
    from datacrafter_widget.app.cli import main

    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "torch device:" in text and "starter weights:" in text and "transformers" in text
    assert "compute: ComputePolicy(cores=" in text and "OpenMP wait=" in text  # the compute policy in force


def test_info_says_offline_when_the_hub_does_not_answer_and_imports_no_torch_without_a_gpu():
    closed = _free_port()  # nothing listens there: a hub that does not answer
    env = {k: v for k, v in _env(HF_ENDPOINT=f"http://127.0.0.1:{closed}").items() if k != "HF_HUB_OFFLINE"}
    code = (
        "import json, sys\nfrom datacrafter_widget.app import cli\ninfo = cli.collect_info()\n"
        "print(json.dumps({'hub': info['huggingface'], 'torch_imported': 'torch' in sys.modules, "
        "'pandas_imported': 'pandas' in sys.modules, 'gpu_visible': cli._gpu_visible(), 'device': info['torch']}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["hub"]["offline"] is True and f"127.0.0.1:{closed} does not answer" in got["hub"]["why"]
    assert not got["pandas_imported"]  # info needs no pandas
    if not got["gpu_visible"]:  # no /dev/nvidia*: the device is known without importing torch
        assert got["device"]["device"] == "cpu" and not got["torch_imported"]
    text = subprocess.run(datacrafter("info"), capture_output=True, text=True, env=env, timeout=120).stdout
    assert "(offline:" in text and "(online" not in text
    flagged = subprocess.run(datacrafter("info"), capture_output=True, text=True, env=_env(HF_HUB_OFFLINE="1"))
    assert "(offline: HF_HUB_OFFLINE is set)" in flagged.stdout


def test_demo_dry_run_copies_the_shipped_notebooks_to_a_folder_the_user_owns(tmp_path, monkeypatch, capsys):
    from datacrafter_widget.app.cli import main

    monkeypatch.delenv("DATACRAFTER_NOTEBOOKS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["demo", "--dry-run", "--port", "8931"]) == 0
    out = capsys.readouterr()
    work = tmp_path / "home" / "datacrafter-notebooks"
    shipped = REPO / "datacrafter_widget" / "starter" / "notebooks" / "quickstart.ipynb"
    assert (work / "quickstart.ipynb").read_bytes() == shipped.read_bytes()
    assert (work / "stable_diffusion.ipynb").read_bytes() == (shipped.parent / "stable_diffusion.ipynb").read_bytes()
    assert re.search(r"open http://localhost:\d+/lab/tree/quickstart.ipynb\?token=[0-9a-f]{32}", out.out)
    assert "--ServerApp.port_retries=0" in out.out  # the printed URL is the port actually served
    assert f"--ServerApp.root_dir={work}" in out.out
    # No display: the user is told to open the URL elsewhere, and how to reach a remote machine.
    assert "no web browser on this machine" in out.err and "--ip 0.0.0.0" in out.err
    # A user's edited copy is never overwritten.
    (work / "quickstart.ipynb").write_text("{}")
    assert main(["demo", "--dry-run", "--no-browser", "--dir", str(work)]) == 0
    assert (work / "quickstart.ipynb").read_text() == "{}"
    assert "no web browser" not in capsys.readouterr().err  # --no-browser: nothing to say
    monkeypatch.setenv("DATACRAFTER_NOTEBOOKS", str(tmp_path / "nowhere"))
    monkeypatch.setattr("datacrafter_widget.app.cli.PACKAGE_DIR", tmp_path / "pkg" / "datacrafter_widget")
    with pytest.raises(SystemExit, match="DATACRAFTER_NOTEBOOKS"):
        main(["demo", "--dry-run"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("CI") and not os.environ.get("DATACRAFTER_TEST_DEMO"),
    reason="starts a real JupyterLab (~30 s on a shared CPU): runs under CI=true or DATACRAFTER_TEST_DEMO=1",
)
def test_demo_serves_the_quickstart(tmp_path):
    pytest.importorskip("jupyterlab")
    proc = subprocess.Popen(
        datacrafter("demo", "--no-browser", "--port", str(_free_port()), "--dir", str(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    try:
        url = None
        deadline = time.time() + 180
        while url is None and time.time() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            m = re.search(r"open (http://\S+)", line)
            if m:
                url = m.group(1)
        assert url, "demo printed no URL"
        api = url.replace("/lab/tree/quickstart.ipynb", "/api/contents/quickstart.ipynb").replace(
            "localhost", "127.0.0.1"
        )
        # The URL is printed once the server answers: the first request succeeds, no retrying.
        with urllib.request.urlopen(api, timeout=10) as r:
            body = json.loads(r.read())
        assert (tmp_path / "quickstart.ipynb").is_file() and (tmp_path / "stable_diffusion.ipynb").is_file()
        assert body["name"] == "quickstart.ipynb" and body["type"] == "notebook"
        with urllib.request.urlopen(url.replace("localhost", "127.0.0.1"), timeout=10) as r:
            assert r.status == 200 and b"JupyterLab" in r.read()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_starts_with_two_commands_and_ci_runs_the_second():
    commands = readme_commands()
    assert len(commands) == 2
    assert "datacrafter demo" in commands[0] and "pytest" in commands[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[1] in ci, "the test command in README.md must appear verbatim in .ci/run"
    assert subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")]).returncode == 0

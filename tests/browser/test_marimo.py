"""The widget in marimo (`marimo run`, as an app is served): the whole UI is one anywidget, so it renders
there as in JupyterLab. Through a real marimo server in Chromium: the map draws, a lasso reaches
`crafter.selection` in Python, the Generate button runs a round into the project, and a page reload
(marimo runs the notebook's cells again, in the same server process) shows the map again instead of
ProjectLockedError.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from conftest import ARTIFACTS, ROOT, _free_port
from test_frontend import draw_lasso, lasso_polygon
from test_lab import skip_without_starter_models

NOTEBOOK = """
import marimo

app = marimo.App()


@app.cell
def _():
    import json
    import pathlib

    import marimo as mo

    import datacrafter_widget as dc

    crafter = dc.DataCrafter(dc.starter.colored_digits(shots=2), models=dc.starter.models(), project="mo_project")
    crafter.on("selection", lambda ids: pathlib.Path("selection.json").write_text(json.dumps(ids)))
    _ = pathlib.Path("ids.json").write_text(json.dumps(crafter.samples["id"].tolist()))
    return crafter, mo


@app.cell
def _(crafter, mo):
    mo.ui.anywidget(crafter.show())
    return


if __name__ == "__main__":
    app.run()
"""

HANDLE = "window.__dcw[window.__dcw.length - 1]"  # marimo puts the widget in a shadow root: reach it from here


def canvas_ink(page: Any) -> float:
    """Fraction of the map canvas's pixels that differ from a white background."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    url = page.evaluate(f"{HANDLE}.root.querySelector('.dcw-gl').toDataURL('image/png')")
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)
    return float((np.abs(img - 255).sum(axis=2) > 30).mean())


def _wait_http(url: str, proc: subprocess.Popen, log: pathlib.Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"marimo exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"marimo did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture()
def marimo_app(tmp_path: pathlib.Path) -> Any:
    pytest.importorskip("marimo")
    (tmp_path / "app.py").write_text(NOTEBOOK)
    port, log = _free_port(), tmp_path / "marimo.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [sys.executable, "-m", "marimo", "run", "app.py", "--headless", "--host", "127.0.0.1", f"--port={port}"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path, env=env, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc, log)
        yield f"http://127.0.0.1:{port}/", tmp_path, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        ARTIFACTS.mkdir(exist_ok=True)
        if log.exists():
            (ARTIFACTS / "marimo.log").write_text(log.read_text())


def _drawn(page: Any, timeout: int = 600000) -> None:
    """Waits for the widget's first frame, then for its background work (the first map) to end."""
    page.wait_for_function(
        f"window.__dcw && window.__dcw.length > 0 && {HANDLE}.frames > 0 && {HANDLE}.n > 0", timeout=timeout
    )
    page.wait_for_function(f"!{HANDLE}.model.get('progress').running", timeout=timeout)


@pytest.mark.slow
def test_widget_in_marimo(page: Any, marimo_app: Any) -> None:
    skip_without_starter_models()
    url, folder, log = marimo_app
    page.goto(url)
    _drawn(page)
    page.locator(".dcw-root").last.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    # 1. The map draws (WebGL pixels), with the toolbar and the side panel in the same widget.
    assert canvas_ink(page) > 0.01
    assert page.locator("button[data-action=generate]").count() == 1
    page.screenshot(path=str(ARTIFACTS / "marimo-drawn.png"))

    # 2. A lasso reaches Python: crafter.selection holds exactly the ids of the points inside.
    view = page.evaluate(f"{HANDLE}.view")
    root = page.locator(".dcw-root").last
    root.locator("button[data-mode=lasso]").click()
    draw_lasso(page, root.locator(".dcw-gl").bounding_box(), lasso_polygon(view))
    selected = page.evaluate(f"{HANDLE}.selection")
    assert selected, "the lasso selected nothing"
    ids = json.loads((folder / "ids.json").read_text())
    want = [ids[i] for i in selected]
    deadline = time.time() + 60
    got = None
    while time.time() < deadline:
        path = folder / "selection.json"
        got = json.loads(path.read_text()) if path.exists() else None
        if got is not None and sorted(got) == sorted(want):
            break
        time.sleep(0.3)
    assert got is not None and sorted(got) == sorted(want), (got, want)

    # 3. The Generate button runs a round into the project, and its progress and result show.
    root.locator("select[data-role=strategy]").select_option("class")
    root.locator("input[data-role=per-class]").fill("1")
    root.locator("button[data-action=generate]").click()
    page.wait_for_function(
        f"/: (done|failed)/.test({HANDLE}.root.querySelector('.dcw-status').textContent)", timeout=600000
    )
    status = root.locator(".dcw-status").inner_text()
    assert ": done" in status, status
    rounds = json.loads((folder / "mo_project" / "rounds.json").read_text())
    assert rounds[-1]["status"] == "done" and rounds[-1]["stored"] > 0, rounds[-1]
    page.wait_for_function(f"{HANDLE}.n > {len(ids)}", timeout=120000)  # the new images are on the map
    page.screenshot(path=str(ARTIFACTS / "marimo-generated.png"))

    # 4. A reload runs the cells again in the same process: the map shows again, no ProjectLockedError.
    page.reload()
    _drawn(page)
    page.wait_for_timeout(500)
    assert canvas_ink(page) > 0.01
    assert page.evaluate(f"{HANDLE}.n") > len(ids)  # the same project, with its new round
    assert "ProjectLockedError" not in page.locator("body").inner_text()
    assert "ProjectLockedError" not in log.read_text()
    page.screenshot(path=str(ARTIFACTS / "marimo-reloaded.png"))
    assert page.dialogs == []

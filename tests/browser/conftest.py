"""Fixtures for the browser tests: Debian's Chromium via python playwright, and a real JupyterLab.

`lab` starts `jupyter lab` on a free localhost port with a token and a temporary root folder and
kills it at teardown; `run_notebook_in_lab(page, lab, path)` opens a notebook there and runs it.
Switching a test to another notebook (notebooks/quickstart.ipynb) is only a matter of copying it
into `lab.root` and passing its name.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from standalone import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (one browser set-up for both kinds of test)


def pytest_collection_modifyitems(items: list[Any]) -> None:
    here = pathlib.Path(__file__).parent
    for item in items:
        if here in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser: Any, request: Any) -> Iterator[Any]:
    """A fresh page that records dialogs (an XSS would fire alert()) and page errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.dialogs = []
    pg.errors = []

    def on_dialog(dialog: Any) -> None:
        pg.dialogs.append(dialog.message)
        dialog.dismiss()

    pg.on("dialog", on_dialog)
    pg.console = []
    pg.on("pageerror", lambda err: pg.errors.append(str(err)))
    pg.on("console", lambda msg: pg.console.append(f"{msg.type}: {msg.text}"))
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{request.node.name}-console.txt").write_text("\n".join(pg.console + pg.errors))
    try:
        pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}-final.png"))
    except Exception:
        pass
    context.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    url: str
    token: str
    root: pathlib.Path
    process: subprocess.Popen
    log: pathlib.Path

    def notebook_url(self, name: str) -> str:
        return f"{self.url}lab/tree/{name}?token={self.token}&reset"


@contextlib.contextmanager
def start_lab(root: pathlib.Path, log: pathlib.Path) -> Iterator[Lab]:
    """A real JupyterLab server on localhost serving `root`, killed on exit (tests and benchmarks)."""
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "JUPYTER_CONFIG_DIR": str(root / ".jupyter-config"),
            "JUPYTER_RUNTIME_DIR": str(root / ".jupyter-runtime"),
        }
    )
    labconfig = root / ".jupyter-config" / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    # No news / update pop-ups: they would ask the network and cover the page.
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--ServerApp.open_browser=False",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI runners often run as root
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited early:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"jupyter lab did not start in 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Lab(url=url, token=token, root=root, process=proc, log=log)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="session")
def lab(tmp_path_factory: Any) -> Iterator[Lab]:
    """A real JupyterLab server on localhost, killed at teardown (its log kept in test-artifacts/)."""
    pytest.importorskip("jupyterlab")
    root = tmp_path_factory.mktemp("lab-root")
    log = tmp_path_factory.mktemp("lab-log") / "jupyter.log"
    try:
        with start_lab(root, log) as server:
            yield server
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        if log.exists():
            shutil.copy(log, ARTIFACTS / "jupyter.log")


def run_notebook_in_lab(page: Any, lab: Lab, name: str, *, cells: int | None = None, timeout_ms: int = 240000) -> None:
    """Opens `name` (relative to lab.root) in JupyterLab and runs its cells.

    cells=None runs all cells, cells=k the first k only (one Shift+Enter each), so that a test can
    run later cells itself after interacting with the widget.
    """
    page.goto(lab.notebook_url(name))
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout_ms)
    # The kernel must be connected and idle, or Shift+Enter is silently dropped.
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some((e) => /\\|\\s*Idle/.test(e.textContent))",
        timeout=timeout_ms,
    )
    wait_kernel_idle(page, timeout_ms)
    if cells is None:
        cells = page.locator(".jp-Notebook .jp-Cell").count()
    for k in range(cells):
        run_cell(page, k, timeout_ms=timeout_ms)
    wait_kernel_idle(page, timeout_ms)


def wait_kernel_idle(page: Any, timeout_ms: int = 240000) -> None:
    """Waits until no cell shows [*] and the kernel indicator says idle."""
    page.wait_for_function(
        """() => {
          const prompts = [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')];
          const busy = prompts.some((p) => p.textContent.includes('*'));
          const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
          const idle = !ind || ind.getAttribute('data-status') === 'idle';
          return !busy && idle;
        }""",
        timeout=timeout_ms,
    )


def run_cell(page: Any, k: int, timeout_ms: int = 240000) -> str:
    """Runs cell k (0-based) with Shift+Enter and returns its output text once the kernel is idle."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(k)
    is_code = "jp-CodeCell" in (cell.get_attribute("class") or "")
    if is_code:
        cell.locator(".jp-InputArea-editor").click()
    else:
        cell.click()
    page.keyboard.press("Shift+Enter")
    if not is_code:
        return ""
    page.wait_for_function(
        """(k) => {
          const c = document.querySelectorAll('.jp-Notebook .jp-Cell')[k];
          const p = c && c.querySelector('.jp-InputPrompt');
          return p && /\\[\\d+\\]/.test(p.textContent);
        }""",
        arg=k,
        timeout=timeout_ms,
    )
    wait_kernel_idle(page, timeout_ms)
    return cell.locator(".jp-OutputArea").inner_text()

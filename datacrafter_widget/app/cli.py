"""The `datacrafter` command: `demo` (JupyterLab on the quickstart), `info` (versions, device, models).

Subcommands register themselves through `REGISTRARS`; each adds one subparser and sets `func`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import shutil
import socket
import subprocess
import sys
import threading
import time
import webbrowser
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import compute

PACKAGE_DIR = Path(__file__).resolve().parent.parent
QUICKSTART = "quickstart.ipynb"


# ---- demo ----------------------------------------------------------------------------------
def find_notebooks() -> Path:
    """The folder holding quickstart.ipynb: $DATACRAFTER_NOTEBOOKS, else the copy shipped inside the
    package (datacrafter_widget/starter/notebooks/, in a wheel as in a checkout)."""
    candidates = []
    if os.environ.get("DATACRAFTER_NOTEBOOKS"):
        candidates.append(Path(os.environ["DATACRAFTER_NOTEBOOKS"]).expanduser())
    candidates.append(PACKAGE_DIR / "starter" / "notebooks")
    for c in candidates:
        if (c / QUICKSTART).is_file():
            return c
    raise SystemExit(
        "datacrafter demo: could not find quickstart.ipynb (looked in "
        + ", ".join(str(c) for c in candidates)
        + "). Reinstall the package (pip install --force-reinstall datacrafter-widget) or set DATACRAFTER_NOTEBOOKS "
        "to a folder that holds quickstart.ipynb."
    )


def working_notebooks(source: Path, workdir: Path | None = None) -> Path:
    """Copy the shipped notebooks into a folder the user owns (default ~/datacrafter-notebooks) and
    return it: JupyterLab runs there, so saving a notebook or writing its projects never touches the
    installed package or the source checkout. A notebook already there (the user's edits) is kept."""
    target = (workdir or Path.home() / "datacrafter-notebooks").expanduser().resolve()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SystemExit(
            f"datacrafter demo: cannot create the working folder {target} ({err}): pass --dir FOLDER"
        ) from err
    for nb in sorted(source.glob("*.ipynb")):
        dest = target / nb.name
        if not dest.exists():  # never overwrite a user's edited copy
            shutil.copyfile(nb, dest)
    return target


def browser_available() -> bool:
    """Whether `webbrowser` can open a page here (False on a server without a display or browser)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


NO_BROWSER_HINT = (
    "datacrafter demo: no web browser on this machine (a server?): open the URL above from your own "
    "computer. For a remote machine, start with --ip 0.0.0.0 --port 8888 and open "
    "http://HOST:8888/... , or keep the default --ip and forward the port: ssh -L 8888:localhost:8888 HOST"
)


def free_port(preferred: int) -> int:
    """`preferred` if nothing listens there, else the next free port above it."""
    for port in range(preferred, preferred + 100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"datacrafter demo: no free port in {preferred}..{preferred + 99}: pass --port")


def demo_command(args: argparse.Namespace) -> list[str]:
    """The JupyterLab command line for `datacrafter demo` (and the URL it will serve)."""
    root = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # Colab and containers run as root
    return [
        sys.executable,
        "-m",
        "jupyterlab",
        *root,
        f"--ServerApp.root_dir={args.workdir_resolved}",
        f"--ServerApp.port={args.port_resolved}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.ip={args.ip}",
        f"--IdentityProvider.token={args.token}",
        "--ServerApp.open_browser=False",
        f"--LabApp.default_url=/lab/tree/{QUICKSTART}",
    ]


def wait_until_serving(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> bool:
    """Poll the server until it answers `url` (any HTTP status): True, or False if it exited or timed out."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # it answered (e.g. 403 before the token check): it is listening
        except OSError:
            time.sleep(0.25)
    return False


def run_demo(args: argparse.Namespace) -> int:
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        print("datacrafter demo needs JupyterLab: pip install 'datacrafter-widget[lab]'", file=sys.stderr)
        return 2
    source = find_notebooks()
    args.workdir_resolved = working_notebooks(source, Path(args.dir) if args.dir else None)
    args.port_resolved = free_port(args.port)
    args.token = args.token or secrets.token_hex(16)
    host = "localhost" if args.ip in ("127.0.0.1", "localhost", "0.0.0.0", "") else args.ip
    url = f"http://{host}:{args.port_resolved}/lab/tree/{QUICKSTART}?token={args.token}"
    command = demo_command(args)
    print(f"datacrafter demo: notebooks in {args.workdir_resolved}", flush=True)
    if args.dry_run:
        print(f"datacrafter demo: open {url}", flush=True)
        print(" ".join(command))
        if not args.no_browser and not browser_available():
            print(NO_BROWSER_HINT, file=sys.stderr, flush=True)
        return 0
    print("datacrafter demo: starting JupyterLab (the URL follows once it answers)", flush=True)
    proc = subprocess.Popen(command, cwd=args.workdir_resolved)
    # `kill <pid>` of this command stops JupyterLab too, instead of leaving it orphaned.
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    local = "127.0.0.1" if args.ip in ("0.0.0.0", "", "localhost") else args.ip
    probe = f"http://{local}:{args.port_resolved}/api/status?token={args.token}"
    try:
        if not wait_until_serving(probe, proc):
            if proc.poll() is None:
                print(f"datacrafter demo: JupyterLab did not answer on {probe} in 3 minutes", file=sys.stderr)
                proc.terminate()
            return proc.wait() or 1
        print(f"datacrafter demo: open {url}", flush=True)
        if not args.no_browser:
            if browser_available():
                webbrowser.open(url)
            else:
                print(NO_BROWSER_HINT, file=sys.stderr, flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="open JupyterLab on the quickstart notebook (offline starter kit)",
        description="Copy the quickstart notebooks into a working folder you own "
        "(default ~/datacrafter-notebooks) and start JupyterLab there; prints its URL. "
        "On a remote machine: --ip 0.0.0.0 --port 8888 --no-browser.",
    )
    p.add_argument("--no-browser", action="store_true", help="do not open a browser (servers, remote machines)")
    p.add_argument("--port", type=int, default=8888, help="port to serve on (the next free one if taken; default 8888)")
    p.add_argument("--ip", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument(
        "--dir",
        default=None,
        help="working folder the notebooks are copied to and run in "
        "(default ~/datacrafter-notebooks; your edits there are kept)",
    )
    p.add_argument("--token", default=None, help="access token (default: a random one, printed in the URL)")
    p.add_argument("--dry-run", action="store_true", help="print the URL and the JupyterLab command, start nothing")
    p.set_defaults(func=run_demo)


# ---- info ----------------------------------------------------------------------------------
PACKAGES = [
    "datacrafter-widget",
    "torch",
    "torchvision",
    "diffusers",
    "open-clip-torch",
    "transformers",
    "anywidget",
    "jupyterlab",
    "datasets",
    "safetensors",
    "pandas",
    "pyarrow",
    "pillow",
]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        if dist == "datacrafter-widget":
            from .. import __version__

            return f"{__version__} (source checkout, not pip-installed)"
        return None


def _gpu_visible() -> bool:
    """Whether this machine may have a GPU torch could use. On Linux CUDA and ROCm need their device
    nodes (/dev/nvidia*, /dev/dxg under WSL, /dev/kfd): without them torch reports no GPU, and
    `info` need not import torch (seconds on a busy machine) to say so. Elsewhere: ask torch."""
    if not sys.platform.startswith("linux"):
        return True
    dev = Path("/dev")
    return any(dev.glob("nvidia[0-9]*")) or (dev / "dxg").exists() or (dev / "kfd").exists()


def torch_device() -> dict[str, Any]:
    """The device models will use with device="auto": cuda, mps or cpu (with a short description)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return {"device": None, "detail": "torch is not installed"}
    if not _gpu_visible():
        return {"device": "cpu", "detail": f"{os.cpu_count()} CPU cores, no GPU device on this machine"}
    import torch

    if torch.cuda.is_available():
        return {"device": "cuda", "detail": f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"}
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return {"device": "mps", "detail": "Apple Metal"}
    return {"device": "cpu", "detail": f"{torch.get_num_threads()} threads"}


def starter_weights() -> dict[str, Any]:
    weights = PACKAGE_DIR / "starter" / "weights"
    files = sorted(p.name for p in weights.glob("*")) if weights.is_dir() else []
    return {
        "folder": str(weights),
        "files": files,
        "present": any(f.endswith(".safetensors") for f in files),
        "hint": None if files else "run `python -m datacrafter_widget.starter.train` to build them",
    }


HUB_PROBE_TIMEOUT = 3.0  # seconds: a machine whose hub does not answer by then is offline for `info`


def hub_reachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to the hub's host opens in `timeout` s (name lookup included, in a
    thread, since a machine without DNS can block in it far longer than any socket timeout)."""
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def hf_cache(probe: bool = True) -> dict[str, Any]:
    """Models found in the Hugging Face hub cache, and whether the hub can be reached (HF_HUB_OFFLINE
    set, or no connection to HF_ENDPOINT, default https://huggingface.co: offline)."""
    try:
        from huggingface_hub import constants  # 1 ms: reads the same variables the hub client does

        cache = Path(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001 - no huggingface_hub: its defaults
        home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
        cache = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    models = []
    if cache.is_dir():
        models = sorted(p.name[len("models--") :].replace("--", "/") for p in cache.glob("models--*"))
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if flag not in ("", "0", "false", "no", "off"):
        offline, why = True, "HF_HUB_OFFLINE is set"
    elif probe and not hub_reachable(endpoint):
        offline, why = True, f"{endpoint} does not answer"
    else:
        offline, why = False, f"{endpoint} answers" if probe else "not checked"
    return {"cache": str(cache), "models": models, "offline": offline, "endpoint": endpoint, "why": why}


def collect_info() -> dict[str, Any]:
    # The hub probe (up to HUB_PROBE_TIMEOUT s without a network) runs while torch is asked for the device.
    hub: dict[str, Any] = {}
    prober = threading.Thread(target=lambda: hub.update(hf_cache()), daemon=True)
    prober.start()
    info = {
        "python": sys.version.split()[0],
        "packages": {name: _version(name) for name in PACKAGES},
        "torch": torch_device(),
        "compute": repr(compute.policy()),
        "starter_weights": starter_weights(),
        "notebooks": _notebooks_or_none(),
    }
    prober.join()
    return {**info, "huggingface": hub}


def _notebooks_or_none() -> str | None:
    try:
        return str(find_notebooks())
    except SystemExit:
        return None


def run_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"python {info['python']}")
    for name, version in info["packages"].items():
        print(f"  {name:<20} {version or 'not installed'}")
    t = info["torch"]
    print(f"torch device: {t['device'] or 'none'} ({t['detail']})")
    print(f"compute: {info['compute']} (dc.compute; README 'Compute')")
    w = info["starter_weights"]
    state = f"present ({', '.join(w['files'])})" if w["present"] else f"missing: {w['hint'] or 'no .safetensors files'}"
    print(f"starter weights: {state}\n  in {w['folder']}")
    h = info["huggingface"]
    models = ", ".join(h["models"][:10]) + (f" and {len(h['models']) - 10} more" if len(h["models"]) > 10 else "")
    print(
        f"hugging face cache: {h['cache']} ({'offline' if h['offline'] else 'online'}: {h['why']}): "
        f"{len(h['models'])} model(s){': ' + models if models else ''}"
    )
    print(f"notebooks: {info['notebooks'] or 'not found (set DATACRAFTER_NOTEBOOKS)'}")
    return 0


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="versions, torch device and which models are found",
        description="Print package versions, the torch device and which models are available offline.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_info)


# ---- registration --------------------------------------------------------------------------
# One function per subcommand; each adds its subparser and sets `func`.
REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [add_demo, add_info]


def run_headless(args: argparse.Namespace) -> int:
    """Print a first line at once, then import the loop (pandas, torch: seconds) and run it."""
    import time

    args.started = time.time()
    print(f"[{0.0:6.1f}s] datacrafter run {args.config}: starting (importing pandas and torch)", flush=True)
    from .headless import cli_main

    return cli_main(args)


def add_run(sub: argparse._SubParsersAction) -> None:
    """`datacrafter run CONFIG.toml` (app/headless.py, imported only when the command runs)."""
    p = sub.add_parser(
        "run",
        help="run the loop headless from a TOML config and write an HTML report",
        description="Run the loop a TOML config describes (see examples/starter.toml) through "
        "DataCrafter and write report.html, metrics.csv, the student and the export "
        "into the project folder. Every line carries the seconds since the start.",
    )
    p.add_argument("config", help="path of the TOML config (see examples/starter.toml)")
    p.add_argument("--project", default=None, help="project folder (overrides the config's project)")
    p.add_argument("--overwrite", action="store_true", help="replace the project folder of an earlier run")
    p.add_argument("--quiet", action="store_true", help="no progress bars (the timestamped steps still print)")
    p.set_defaults(func=run_headless)


REGISTRARS.append(add_run)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="datacrafter",
        description="Expand a small labelled image dataset with diffusion-model images, person in the loop.",
    )
    parser.add_argument("--version", action="version", version=f"datacrafter-widget {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `datacrafter` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

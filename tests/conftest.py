"""Shared test setup: never touch the network, stay light on a shared CPU."""

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # tests run from a plain checkout too, not only after `pip install -e .`
    sys.path.insert(0, str(REPO))

try:  # noqa: E402
    import torch

    torch.set_num_threads(1)
except ImportError:  # the store / loader tests do not need torch
    pass

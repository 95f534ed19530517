"""datacrafter-widget: expand a small labelled image dataset with diffusion-model images, person in the loop.

The model-facing names (DataCrafter, Models, Generator, ...) import torch, diffusers and open_clip;
they load on first use so that `import datacrafter_widget` and the CLI start quickly.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from . import limits, starter
from .data.dataset import Dataset, DatasetError

__version__ = "0.1.0"

_LAZY = {
    "Captioner": "models.captioner",
    "RetrievalCaptioner": "models.captioner",
    "DataCrafter": "controller.crafter",
    "Embedder": "models.embedder",
    "Generator": "models.generator",
    "LocalBackend": "controller.backends",
    "ModelSpec": "models.spec",
    "RayBackend": "controller.backends",
    "MissingModelError": "models.bundle",
    "Models": "models.bundle",
    "SampleStore": "data.store",
}

__all__ = ["Dataset", "DatasetError", "limits", "starter", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'datacrafter_widget' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

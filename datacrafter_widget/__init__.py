"""datacrafter-widget: expand a small labelled image dataset with diffusion-model images, person in the loop.

The model-facing names (DataCrafter, Models, Generator, ...) import torch, diffusers and open_clip,
and Dataset and the starter kit import pandas; they load on first use so that
`import datacrafter_widget` and the CLI (`datacrafter info`) start quickly.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from . import compute  # first: sets the OpenMP wait policy before anything loads torch
from . import limits  # no dependencies: dc.limits.set(...) before anything loads

if TYPE_CHECKING:
    from . import starter
    from .data.dataset import Dataset as Dataset, DatasetError as DatasetError

__version__ = "0.1.0"

_SUBPACKAGES = ("app", "controller", "data", "loop", "models", "starter", "ui")
_LAZY = {
    "Dataset": "data.dataset",
    "DatasetError": "data.dataset",
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

__all__ = ["compute", "limits", "starter", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return import_module(f".{name}", __name__)
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'datacrafter_widget' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))

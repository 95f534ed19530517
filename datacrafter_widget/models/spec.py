"""A picklable recipe for a `Models` bundle, so another process (a Ray worker) can load the same models.

A spec is an import path of a factory ("package.module:function" or "module:Class.method") and
the keyword arguments it was called with. The factories that build bundles (dc.starter.models(),
dc.Models.stable_diffusion(...)) record their spec on the bundle (`models.spec`), so a remote
worker loads the very same hub id, local folder or starter weights as the notebook, from files it
can reach itself: no model weights travel over the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib import import_module
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bundle import Models


class ModelSpecError(ValueError):
    """A spec cannot be used (not picklable, factory not importable); the message names the fix."""


@dataclass(frozen=True)
class ModelSpec:
    """factory: "module:function" (or "module:Class.method") returning a `Models`; kwargs: its arguments."""

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if ":" not in self.factory:
            raise ModelSpecError(
                f"factory {self.factory!r} must be 'module:function', e.g. "
                "'datacrafter_widget.starter.loader:load_starter_models'"
            )

    def resolve(self) -> Callable[..., Models]:
        """The factory callable (imported on this process)."""
        module, _, attr = self.factory.partition(":")
        try:
            obj: Any = import_module(module)
        except ImportError as err:
            raise ModelSpecError(
                f"cannot import {module!r} for the model factory {self.factory!r}: {err}. "
                "Install datacrafter-widget (and the module) on every worker, or put it on "
                "the workers' PYTHONPATH (Ray runtime_env)"
            ) from err
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def load(self) -> Models:
        """Build the bundle by calling the factory; the bundle remembers this spec."""
        models = self.resolve()(**self.kwargs)
        try:
            models.spec = self
        except AttributeError:
            pass
        return models

    def with_kwargs(self, **kwargs: object) -> ModelSpec:
        """A copy with some arguments replaced (e.g. device="cuda" on GPU workers)."""
        return replace(self, kwargs={**self.kwargs, **kwargs})

    def describe(self) -> dict[str, object]:
        """Plain data (for rounds.json / logs): the factory and the arguments as text."""
        return {
            "factory": self.factory,
            "kwargs": {
                k: repr(v) if not isinstance(v, (str, int, float, bool, type(None))) else v
                for k, v in self.kwargs.items()
            },
        }


def spec_of(models: object) -> ModelSpec | None:
    """The spec recorded on a bundle, or None for bundles assembled by hand."""
    spec = getattr(models, "__dict__", {}).get("spec")
    return spec if isinstance(spec, ModelSpec) else None

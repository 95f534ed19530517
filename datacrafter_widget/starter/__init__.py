"""The offline starter kit: a dataset and small trained models that need no download."""

from collections.abc import Callable

from .digits import colored_digits


def models(device: str = "cpu", progress: bool | Callable[[int, int, str], None] = True):
    """The offline starter models (generator, embedder, captioner, labeler) from shipped weights.

    progress: a tqdm bar over the loading stages (True), none (False), or a callable(done, total, stage).
    """
    from .loader import load_starter_models

    return load_starter_models(device=device, progress=progress)


__all__ = ["colored_digits", "models"]

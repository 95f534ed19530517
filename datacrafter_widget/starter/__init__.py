"""The offline starter kit: a dataset and small trained models that need no download."""

from .digits import colored_digits


def models(device: str = "cpu"):
    """The offline starter models (generator, embedder, captioner, labeler) from shipped weights."""
    from .loader import load_starter_models

    return load_starter_models(device=device)


__all__ = ["colored_digits", "models"]

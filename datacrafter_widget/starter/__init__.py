"""The offline starter kit: a dataset and small trained models that need no download."""
from .digits import colored_digits

__all__ = ["colored_digits"]

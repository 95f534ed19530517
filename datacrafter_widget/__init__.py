"""datacrafter-widget: expand a small labelled image dataset with diffusion-model images, person in the loop."""
from . import starter
from .dataset import Dataset, DatasetError

__version__ = "0.1.0"
__all__ = ["Dataset", "DatasetError", "starter", "__version__"]

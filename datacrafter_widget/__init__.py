"""datacrafter-widget: expand a small labelled image dataset with diffusion-model images, person in the loop."""
from . import starter
from .captioner import Captioner, RetrievalCaptioner
from .crafter import DataCrafter
from .dataset import Dataset, DatasetError
from .embedder import Embedder
from .generator import Generator
from .models import MissingModelError, Models

__version__ = "0.1.0"
__all__ = [
    "Captioner",
    "DataCrafter",
    "Dataset",
    "DatasetError",
    "Embedder",
    "Generator",
    "MissingModelError",
    "Models",
    "RetrievalCaptioner",
    "starter",
    "__version__",
]

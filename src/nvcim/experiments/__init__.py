"""Built-in models, datasets and training used by the command line and the benchmarks."""

from .datasets import Dataset, load_dataset
from .models import MODELS, build_model
from .training import accuracy, cache_dir, train, trained_model

__all__ = ["MODELS", "Dataset", "accuracy", "build_model", "cache_dir", "load_dataset", "train", "trained_model"]

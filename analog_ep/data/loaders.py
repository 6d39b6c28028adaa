"""Minibatches for the trainer: seeded shuffles of in-memory arrays, or any iterable of batches
(a ``torch.utils.data.DataLoader`` over torchvision's MNIST, FashionMNIST or CIFAR-10 works as is)."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


class ArrayLoader:
    """Shuffled minibatches ``(x, y, idx)`` of arrays ``x`` (n, ...) and labels ``y`` (n,): one
    permutation per pass, drawn from ``generator`` when the pass starts (so a run that restores
    the generator's state resumes the same order); ``idx`` are the rows' indices in the arrays."""

    def __init__(self, x, y, batch_size: int, generator: torch.Generator, limit: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        n = len(x) if limit is None else min(limit, len(x))
        self.x, self.y = torch.as_tensor(np.asarray(x[:n])), torch.as_tensor(np.asarray(y[:n]))
        self.batch_size, self.generator = batch_size, generator

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        perm = torch.randperm(len(self.y), generator=self.generator)
        for i in range(0, len(self.y), self.batch_size):
            idx = perm[i:i + self.batch_size]
            yield self.x[idx], self.y[idx], idx


def batches(source: Iterable) -> Iterator[Batch]:
    """Normalise an iterable of ``(x, y)`` or ``(x, y, idx)`` batches to ``(x, y, idx or None)``."""
    for item in source:
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise ValueError("a training batch must be (x, y) or (x, y, idx)")
        x, y = item[0], torch.as_tensor(item[1])
        yield x, y, (torch.as_tensor(item[2]) if len(item) == 3 else None)

"""Minibatches for the trainer: seeded shuffles of in-memory arrays, or any iterable of batches
(a ``torch.utils.data.DataLoader`` over torchvision's MNIST, FashionMNIST or CIFAR-10 works as is)."""
from __future__ import annotations

import math
from typing import Iterable, Iterator

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def image_side(n_features: int) -> int:
    """The side H of square images stored flattened as ``n_features = H*H`` values; ValueError
    for other sizes."""
    side = math.isqrt(n_features)
    if side * side != n_features:
        raise ValueError(f"shifting needs square images stored flattened (H*H features), not {n_features} features")
    return side


def shifted(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of a batch ``x`` (B, H*H), square and flattened, translated by a whole number
    of pixels drawn uniformly from [-shift, shift] along each axis (from ``generator``);
    pixels moved in from outside are 0, the background of MNIST and Fashion-MNIST. ``shift``
    = 0 returns ``x`` itself and draws nothing."""
    if shift == 0:
        return x
    B, side = len(x), image_side(x.shape[1])
    padded = torch.nn.functional.pad(x.reshape(B, side, side), (shift, shift, shift, shift))
    offset = torch.randint(0, 2 * shift + 1, (B, 2), generator=generator)
    rows = offset[:, :1] + torch.arange(side)  # (B, H): the padded rows each output row reads
    cols = offset[:, 1:] + torch.arange(side)
    return padded[torch.arange(B)[:, None, None], rows[:, :, None], cols[:, None, :]].reshape(B, -1)


class ArrayLoader:
    """Shuffled minibatches ``(x, y, idx)`` of arrays ``x`` (n, ...) and labels ``y`` (n,): one
    permutation per pass, drawn from ``generator`` when the pass starts (so a run that restores
    the generator's state resumes the same order); ``idx`` are the rows' indices in the arrays.
    ``shift`` > 0 augments every batch with random translations (:func:`shifted`, drawn from
    the same generator)."""

    def __init__(self, x, y, batch_size: int, generator: torch.Generator, limit: int | None = None,
                 shift: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        n = len(x) if limit is None else min(limit, len(x))
        self.x, self.y = torch.as_tensor(np.asarray(x[:n])), torch.as_tensor(np.asarray(y[:n]))
        if shift:
            image_side(self.x.shape[1])
        self.batch_size, self.generator, self.shift = batch_size, generator, shift

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        perm = torch.randperm(len(self.y), generator=self.generator)
        for i in range(0, len(self.y), self.batch_size):
            idx = perm[i:i + self.batch_size]
            yield shifted(self.x[idx], self.shift, self.generator), self.y[idx], idx


def batches(source: Iterable) -> Iterator[Batch]:
    """Normalise an iterable of ``(x, y)`` or ``(x, y, idx)`` batches to ``(x, y, idx or None)``."""
    for item in source:
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise ValueError("a training batch must be (x, y) or (x, y, idx)")
        x, y = item[0], torch.as_tensor(item[1])
        yield x, y, (torch.as_tensor(item[2]) if len(item) == 3 else None)

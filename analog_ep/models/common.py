"""What the seed models share: their initialisation and EP's ∂(energy)/∂θ at fixed states."""
from __future__ import annotations

import math
from typing import Callable

import torch


def glorot(shape: tuple[int, ...], generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Glorot-uniform weights, float64 on the CPU, as the seeds initialise: a matrix (out, in) or
    a convolution filter (out, in, kh, kw), whose fans count the receptive field."""
    field = math.prod(shape[2:])
    bound = scale * math.sqrt(6.0 / ((shape[0] + shape[1]) * field))
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound


def grads_at(fn: Callable[[dict], torch.Tensor], params: dict[str, torch.Tensor],
             weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """∂(Σ fn(θ))/∂θ for every parameter, the states inside ``fn`` held fixed (autograd on leaf
    copies, enabled even inside ``no_grad``); ``weight`` scales each sample's term of fn's (B,)."""
    with torch.enable_grad():
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        out = fn(leaves)
        grads = torch.autograd.grad((out if weight is None else out * weight).sum(), list(leaves.values()))
    return dict(zip(leaves, grads))


def nudges(beta) -> bool:
    """Whether a nudge strength (a number, or a per-sample column for signed nudging) is on."""
    return not (isinstance(beta, (int, float)) and beta == 0)

"""What the seed models share: their initialisation and EP's ∂(energy)/∂θ at fixed states."""
from __future__ import annotations

import math
from typing import Callable

import torch


ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    # name: (σ, σ'); the one statement of every activation the seed models use
    "tanh": (torch.tanh, lambda s: 1 - torch.tanh(s) ** 2),
    # seed 003 App. E: σ(x) = 1 / (1 + exp(−4(x − ½)))
    "sigmoid": (lambda s: torch.sigmoid(4 * (s - 0.5)),
                lambda s: 4 * torch.sigmoid(4 * (s - 0.5)) * (1 - torch.sigmoid(4 * (s - 0.5)))),
    # ρ' = 1 on the closed interval: a unit at a bound can leave it when driven inward
    "hardsigmoid": (lambda s: s.clamp(0, 1), lambda s: ((s >= 0) & (s <= 1)).to(s.dtype)),
    # smooth ρ for the RBP check (seed 001's equivalence is about a twice-differentiable energy)
    "logistic": (torch.sigmoid, lambda s: torch.sigmoid(s) * (1 - torch.sigmoid(s))),
}


def activation(name: str, allowed: tuple[str, ...]):
    """(σ, σ') of an activation among those a model family allows; ValueError otherwise."""
    if name not in allowed:
        raise ValueError(f"activation must be one of {', '.join(allowed)}, not {name!r}")
    return ACTIVATIONS[name]


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

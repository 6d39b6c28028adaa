"""EP's estimate, written once for every model: which nudged phases to run and how their
∂E/∂θ combine into the gradient of the mean cost.

Scellier & Bengio (2017, seed 000, eq. 10 / Theorem 1):
    dL/dθ = lim_{β→0} (1/β) (∂E/∂θ(s^β) − ∂E/∂θ(s⁰)),
estimated at finite β by

* ``positive`` — one phase at +β: (1/β)(∂E/∂θ(s^β) − ∂E/∂θ(s⁰)), bias O(β);
* ``centered`` — phases at +β and −β: (1/2β)(∂E/∂θ(s^β) − ∂E/∂θ(s^−β)), bias O(β²)
  (Laborieux et al. 2021, "Scaling EP to deep ConvNets by drastically reducing its gradient
  estimator bias");
* ``random`` — one phase at ±β with a random sign per sample, each sample's difference divided
  by its own signed β (unbiased on average over the signs to O(β²)).

A model supplies the nudged phase (``nudge``) and the difference of ∂E/∂θ between two states
(``difference``); what the estimate is lives here only. The circuit emulator (``ep.py``) and the
seed papers' models (``analog_ep.models``) both call :func:`ep_estimate`.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch

MODES = ("positive", "centered", "random")

State = TypeVar("State")
Grads = dict[str, torch.Tensor]


def check_nudging(mode: str, beta: float) -> None:
    """Raise ValueError for an unknown nudging mode or a β that is not > 0."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if not beta > 0:
        raise ValueError("beta must be > 0 (the sign is chosen by mode)")


def nudge_strengths(mode: str, beta: float, batch: int, *, sign: torch.Tensor | None = None,
                    generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                    device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """The signed β of every sample (a (batch,) tensor) for each nudged phase of ``mode``:
    [+β] (positive), [+β, −β] (centered) or [±β] (random: ``sign`` of ±1 per sample, else drawn
    from ``generator``)."""
    check_nudging(mode, beta)
    if mode == "centered":
        betas = [torch.full((batch,), beta, dtype=dtype), torch.full((batch,), -beta, dtype=dtype)]
    elif mode == "positive":
        betas = [torch.full((batch,), beta, dtype=dtype)]
    else:
        if sign is None:
            sign = torch.randint(0, 2, (batch,), generator=generator) * 2 - 1
        betas = [beta * sign.to(dtype)]
    return [b.to(device) for b in betas]


def ep_estimate(free: State, nudge: Callable[[torch.Tensor], State],
                difference: Callable[[State, State, float | torch.Tensor], Grads], *, mode: str, beta: float,
                batch: int, sign: torch.Tensor | None = None, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> tuple[Grads, list[State]]:
    """EP's estimate of d(mean cost)/dθ over a batch, and the nudged states.

    ``nudge(b)`` runs a nudged phase with per-sample signed strengths b (batch,);
    ``difference(s_from, s_to, w)`` returns Σ_samples w·(∂E/∂θ(s_to) − ∂E/∂θ(s_from)) for every
    parameter, w a number or a per-sample (batch,) tensor. Here w is 1/(2βB) (centered) or
    1/(β_b B) with each sample's signed β_b (positive, random), B the batch size."""
    betas = nudge_strengths(mode, beta, batch, sign=sign, generator=generator, dtype=dtype, device=device)
    nudged = [nudge(b) for b in betas]
    if mode == "centered":
        return difference(nudged[1], nudged[0], 1.0 / (2 * beta * batch)), nudged
    return difference(free, nudged[0], 1.0 / (betas[0] * batch)), nudged

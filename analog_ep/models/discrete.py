"""Discrete-time EP models of Ernoult et al. (2019; seeds 002/003): the state follows
s_{t+1} = F(x, s_t, θ) (≈ ∂Φ/∂s), the nudged phase adds −β ∂ℓ/∂s, and EP updates are
differences of ∂Φ/∂θ between consecutive nudged states (autograd of Φ at fixed states).

Layers are indexed as in the seeds: s[0] is the output, s[1], ... hidden layers; the input x is
the last "layer" (index ``len(dims)``). ``pairs`` lists the coupled layers (i, j) with a weight
W_ij of shape (dim_i, dim_j): a layered net couples (n, n+1); the toy model of seed 003 C.2
also couples the output to the input.
"""
from __future__ import annotations

import torch

from .common import glorot, grads_at

ACTIVATIONS = {
    # name: (σ, σ')
    "tanh": (torch.tanh, lambda s: 1 - torch.tanh(s) ** 2),
    # seed 003 App. E: σ(x) = 1 / (1 + exp(−4(x − ½)))
    "sigmoid": (lambda s: torch.sigmoid(4 * (s - 0.5)), lambda s: 4 * torch.sigmoid(4 * (s - 0.5)) * (1 - torch.sigmoid(4 * (s - 0.5)))),
    "hardsigmoid": (lambda s: s.clamp(0, 1), lambda s: ((s >= 0) & (s <= 1)).to(s.dtype)),
}


def layered_pairs(n_layers: int) -> list[tuple[int, int]]:
    """(n, n+1) for output..last hidden, the last pair reaching the input."""
    return [(n, n + 1) for n in range(n_layers)]


class DiscreteModel:
    """Shared state handling; subclasses define ``step`` (the dynamics) and ``phi`` (Φ)."""

    def __init__(self, dims: list[int], n_in: int, pairs: list[tuple[int, int]], act: str = "tanh",
                 dtype=torch.float64, device="cpu", seed: int = 0, init_scale: float = 1.0):
        if act not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, not {act!r}")
        self.dims, self.n_in, self.pairs = list(dims), n_in, list(pairs)
        self.sigma, self.dsigma = ACTIVATIONS[act]
        self.dtype, self.device = dtype, torch.device(device)
        size = lambda i: n_in if i == len(dims) else dims[i]
        g = torch.Generator().manual_seed(seed)
        self.params = {f"W{i}_{j}": glorot(size(i), size(j), g, init_scale).to(self.device, dtype) for i, j in self.pairs}

    def zeros(self, batch: int) -> list[torch.Tensor]:
        return [torch.zeros(batch, d, dtype=self.dtype, device=self.device) for d in self.dims]

    def _input(self, i: int, s: list[torch.Tensor], x: torch.Tensor, f) -> torch.Tensor:
        """Σ over couplings of layer i: W_ij f(s_j) (or W_jiᵀ f(s_j)), f applied to states, x as is
        for the prototypical model's raw input and through σ for the energy-based one."""
        total = 0.0
        for a, b in self.pairs:
            key = f"W{a}_{b}"
            if a == i:
                total = total + self._layer(b, s, x, f) @ self.params[key].T
            elif b == i:
                total = total + self._layer(a, s, x, f) @ self.params[key]
        return total

    def _layer(self, j, s, x, f):
        return f(x) if j == len(self.dims) else f(s[j])

    nudge_scale = 1.0  # the nudged step adds −(nudge_scale·β) ∂ℓ/∂s⁰

    def nudge(self, s0: torch.Tensor, beta: float, y: torch.Tensor | None) -> torch.Tensor:
        """−β' ∂ℓ/∂s⁰ with ℓ = ½‖s⁰ − y‖², β' = nudge_scale·β (seed 003 eq. 59): what the
        nudged phase adds. EP updates divide by β'."""
        return 0.0 if not beta else self.nudge_scale * beta * (y - s0)

    def relax(self, x, s, steps: int, beta: float = 0.0, y=None) -> list[torch.Tensor]:
        for _ in range(steps):
            s = self.step(x, s, beta, y)
        return s

    def phi_grads(self, x, s) -> dict[str, torch.Tensor]:
        """∂Φ/∂θ at the fixed state s, summed over the batch."""
        s = [t.detach() for t in s]
        return grads_at(lambda p: self.phi(x, s, p), self.params)


class EnergyBased(DiscreteModel):
    """Seed 003 C.2/C.3: Φ = ½(1−ε) Σ‖sⁿ‖² + ε Σ_(i,j) σ(s_i)ᵀ W_ij σ(s_j), and s_{t+1} = ∂Φ/∂s
    exactly (the Euler step of the continuous-time Hopfield dynamics). ``clip`` keeps states in
    [0, 1] (the seeds' training setting)."""

    def __init__(self, *args, eps: float = 0.08, clip: bool = False, **kw):
        super().__init__(*args, **kw)
        self.eps, self.clip = eps, clip
        self.nudge_scale = eps  # the Euler step of the nudged continuous dynamics: +εβ(y − s⁰) (eq. 69)

    def phi(self, x, s, params=None) -> torch.Tensor:
        p = self.params if params is None else params
        out = 0.5 * (1 - self.eps) * sum((t * t).sum(1) for t in s)
        for a, b in self.pairs:
            out = out + self.eps * ((self._layer(a, s, x, self.sigma) @ p[f"W{a}_{b}"]) * self._layer(b, s, x, self.sigma)).sum(1)
        return out

    def step(self, x, s, beta: float = 0.0, y=None) -> list[torch.Tensor]:
        new = [(1 - self.eps) * t + self.eps * self.dsigma(t) * self._input(i, s, x, self.sigma) for i, t in enumerate(s)]
        new[0] = new[0] + self.nudge(s[0], beta, y)
        return [t.clamp(0, 1) for t in new] if self.clip else new


class Prototypical(DiscreteModel):
    """Seed 003 C.4: s_{t+1} = σ(Σ W s), Φ = Σ_(i,j) s_iᵀ W_ij s_j (F ≈ ∂Φ/∂s up to the
    activation, so the GDU property holds only approximately)."""

    def phi(self, x, s, params=None) -> torch.Tensor:
        p = self.params if params is None else params
        ident = lambda t: t
        return sum(((self._layer(a, s, x, ident) @ p[f"W{a}_{b}"]) * self._layer(b, s, x, ident)).sum(1)
                   for a, b in self.pairs)

    def step(self, x, s, beta: float = 0.0, y=None) -> list[torch.Tensor]:
        new = [self.sigma(self._input(i, s, x, lambda t: t)) for i in range(len(s))]
        new[0] = new[0] + self.nudge(s[0], beta, y)
        return new


def toy_model(seed: int = 0, dtype=torch.float64) -> EnergyBased:
    """Seed 003 C.2: 10 inputs, 50 hidden, 5 outputs, all layers coupled (W01, W0x, W1x), tanh."""
    return EnergyBased([5, 50], 10, [(0, 1), (0, 2), (1, 2)], act="tanh", eps=0.08, dtype=dtype, seed=seed)

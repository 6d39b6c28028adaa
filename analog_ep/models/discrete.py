"""Discrete-time EP models of Ernoult et al. (2019/2020; seeds 002/003): the state follows
s_{t+1} = F(x, s_t, θ) (≈ ∂Φ/∂s), the nudged phase adds −β ∂ℓ/∂s, and EP updates are
differences of ∂Φ/∂θ between consecutive nudged states (autograd of Φ at fixed states).

Layers are indexed as in the seeds: s[0] is the output, s[1], ... hidden layers; the input x is
the last "layer" (index ``len(shapes)``). The weight coupling layers i and j is ``W{i}_{j}``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .common import activation, glorot, grads_at, nudges

ACTIVATIONS = ("tanh", "sigmoid", "hardsigmoid")  # the activations the discrete models take


def layered_pairs(n_layers: int) -> list[tuple[int, int]]:
    """(n, n+1) for output..last hidden, the last pair reaching the input."""
    return [(n, n + 1) for n in range(n_layers)]


class DiscreteModel:
    """What every discrete-time model shares: states, nudging, relaxation and the EP update.
    Subclasses set ``shapes`` (per-layer state shapes) and ``params`` and define ``step`` (the
    dynamics) and ``phi`` (Φ)."""

    nudge_scale = 1.0  # the nudged step adds −(nudge_scale·β) ∂ℓ/∂s⁰

    def __init__(self, act: str, dtype=torch.float64, device="cpu"):
        self.sigma, self.dsigma = activation(act, ACTIVATIONS)
        self.dtype, self.device = dtype, torch.device(device)
        self.shapes: list[tuple[int, ...]] = []
        self.params: dict[str, torch.Tensor] = {}

    def zeros(self, batch: int) -> list[torch.Tensor]:
        return [torch.zeros(batch, *shape, dtype=self.dtype, device=self.device) for shape in self.shapes]

    def nudge(self, s0: torch.Tensor, beta, y: torch.Tensor | None):
        """−β' ∂ℓ/∂s⁰ with ℓ = ½‖s⁰ − y‖², β' = nudge_scale·β (seed 003 eq. 59): what the
        nudged phase adds. ``beta`` is a number or a per-sample column (signed nudging). EP
        updates divide by β'."""
        return self.nudge_scale * beta * (y - s0) if nudges(beta) else 0.0

    def relax(self, x, s, steps: int, beta=0.0, y=None) -> list[torch.Tensor]:
        for _ in range(steps):
            s = self.step(x, s, beta, y)
        return s

    def phi_grads(self, x, s, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """∂Φ/∂θ at the fixed state s, summed over the batch (each sample × ``weight``)."""
        s = [t.detach() for t in s]
        return grads_at(lambda p: self.phi(x, s, p), self.params, weight)

    def update(self, x, s_from, s_to, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """EP's parameter increment between two states (before dividing by β'):
        ∂Φ/∂θ(s_to) − ∂Φ/∂θ(s_from)."""
        a, b = self.phi_grads(x, s_from, weight), self.phi_grads(x, s_to, weight)
        return {k: b[k] - a[k] for k in a}


class FullyConnected(DiscreteModel):
    """Dense layers of sizes ``dims`` (output first) fed by an input of ``n_in``; ``pairs`` lists
    the coupled layers (i, j), weight W_ij of shape (dim_i, dim_j). A layered net couples
    (n, n+1); the toy model of seed 003 C.2 also couples the output to the input."""

    def __init__(self, dims: list[int], n_in: int, pairs: list[tuple[int, int]], act: str = "tanh",
                 dtype=torch.float64, device="cpu", seed: int = 0, init_scale: float = 1.0):
        super().__init__(act, dtype, device)
        self.dims, self.n_in, self.pairs = list(dims), n_in, list(pairs)
        self.shapes = [(d,) for d in dims]
        size = lambda i: n_in if i == len(dims) else dims[i]
        g = torch.Generator().manual_seed(seed)
        self.params = {f"W{i}_{j}": glorot((size(i), size(j)), g, init_scale).to(self.device, dtype) for i, j in self.pairs}

    def _input(self, i: int, s: list[torch.Tensor], x: torch.Tensor, f, p: dict, down: str = "W") -> torch.Tensor:
        """Σ over couplings of layer i: W_ij f(s_j) (or {down}_jiᵀ f(s_j) from a layer on the
        output side), f applied to states, x as is for the prototypical model's raw input and
        through σ for the energy-based one."""
        total = 0.0
        for a, b in self.pairs:
            if a == i:
                total = total + self._layer(b, s, x, f) @ p[f"W{a}_{b}"].T
            elif b == i:
                total = total + self._layer(a, s, x, f) @ p[f"{down}{a}_{b}"]
        return total

    def _layer(self, j, s, x, f):
        return f(x) if j == len(self.dims) else f(s[j])


class EnergyBased(FullyConnected):
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

    def step(self, x, s, beta=0.0, y=None) -> list[torch.Tensor]:
        new = [(1 - self.eps) * t + self.eps * self.dsigma(t) * self._input(i, s, x, self.sigma, self.params) for i, t in enumerate(s)]
        new[0] = new[0] + self.nudge(s[0], beta, y)
        return [t.clamp(0, 1) for t in new] if self.clip else new


class Prototypical(FullyConnected):
    """Seed 003 C.4: s_{t+1} = σ(Σ W s), Φ = Σ_(i,j) s_iᵀ W_ij s_j (F ≈ ∂Φ/∂s up to the
    activation, so the GDU property holds only approximately)."""

    def phi(self, x, s, params=None) -> torch.Tensor:
        p = self.params if params is None else params
        ident = lambda t: t
        return sum(((self._layer(a, s, x, ident) @ p[f"W{a}_{b}"]) * self._layer(b, s, x, ident)).sum(1)
                   for a, b in self.pairs)

    def step(self, x, s, beta=0.0, y=None) -> list[torch.Tensor]:
        new = [self.sigma(self._input(i, s, x, lambda t: t, self.params)) for i in range(len(s))]
        new[0] = new[0] + self.nudge(s[0], beta, y)
        return new


class VectorField(Prototypical):
    """The prototypical model with asymmetric connections (C-VF; Ernoult et al. 2020,
    arXiv:2005.04168, summarised in seed 002): layer i hears the input-side layer j through W_ij
    and layer j hears layer i through its own B_ij (same shape) instead of W_ijᵀ. There is no Φ;
    the vector-field rule moves θ by (∂F/∂θ)ᵀ·Δs, F's pre-activation taken at the earlier state.

    ``angle`` (degrees) is the initial angle between B_ij and W_ij: B = cos α·W + sin α·R, R a
    Glorot draw made orthogonal to W and scaled to ‖W‖, so ‖B‖ = ‖W‖ exactly (0: symmetric start,
    the P model)."""

    def __init__(self, *args, angle: float = 0.0, seed: int = 0, **kw):
        super().__init__(*args, seed=seed, **kw)
        if not 0 <= angle <= 180:
            raise ValueError(f"angle must be in [0, 180] degrees, not {angle}")
        g = torch.Generator().manual_seed(seed + 1)
        a = math.radians(angle)
        for i, j in self.pairs:
            if j == len(self.dims):  # the input is clamped: nothing flows back into it
                continue
            W = self.params[f"W{i}_{j}"]
            R = glorot(tuple(W.shape), g).to(W)
            R = R - (R * W).sum() / (W * W).sum() * W
            R = R * W.norm() / R.norm()
            self.params[f"B{i}_{j}"] = math.cos(a) * W + math.sin(a) * R

    def _pre(self, x, s, p) -> list[torch.Tensor]:
        return [self._input(i, s, x, lambda t: t, p, down="B") for i in range(len(s))]

    def step(self, x, s, beta=0.0, y=None) -> list[torch.Tensor]:
        new = [self.sigma(pre) for pre in self._pre(x, s, self.params)]
        new[0] = new[0] + self.nudge(s[0], beta, y)
        return new

    def phi(self, x, s, params=None):
        raise TypeError("a vector-field model has no primitive function Φ; use update()")

    def update(self, x, s_from, s_to, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Σ_i ⟨∂pre_i/∂θ(s_from), s_to,i − s_from,i⟩: ΔW_ij = Δs_iᵀ s_j, ΔB_ij = s_iᵀ Δs_j."""
        s0 = [t.detach() for t in s_from]
        ds = [(b - a).detach() for a, b in zip(s_from, s_to)]
        return grads_at(lambda p: sum((pre * d).sum(1) for pre, d in zip(self._pre(x, s0, p), ds)), self.params, weight)


class ConvPrototypical(DiscreteModel):
    """Seed 003 appendix D (P-conv): convolution + max-pool layers feeding dense layers, with
    Φ = Σ_flat sⁿᵀ W sⁿ⁺¹ + Σ_conv hⁿ • P(W ∗ hⁿ⁺¹) and s_{t+1} = σ(∂Φ/∂s): a layer hears the
    pooled convolution of its input-side neighbour and the transpose convolution of its
    output-side neighbour unpooled at that convolution's maxima (eq. 80). From the input side:
    ``channels`` feature maps per convolution layer, then the dense sizes ``fc`` (the output last);
    convolutions ``kernel``×``kernel`` without padding, stride 1, pooling ``pool``×``pool``.
    ``memo`` (default True): :meth:`step` reuses the clamped input's pooled convolution within a
    phase; False recomputes it every step, with the same result (what
    ``benchmarks/pconv.py`` times the memo against)."""

    memo: bool = True

    def __init__(self, in_shape: tuple[int, int, int], channels: list[int], fc: list[int], kernel: int = 5,
                 pool: int = 2, act: str = "hardsigmoid", dtype=torch.float64, device="cpu", seed: int = 0,
                 init_scale: float = 1.0):
        super().__init__(act, dtype, device)
        if not fc or not channels:
            raise ValueError("a convolutional model needs at least one dense and one convolution layer")
        self.in_shape, self.kernel, self.pool, self.n_fc = tuple(in_shape), kernel, pool, len(fc)
        conv_shapes, (_, h, w) = [], self.in_shape
        for out in channels:
            h, w = (h - kernel + 1) // pool, (w - kernel + 1) // pool
            if h < 1 or w < 1:
                raise ValueError(f"a {self.in_shape} input is too small for {len(channels)} conv({kernel})+pool({pool}) layers")
            conv_shapes.insert(0, (out, h, w))
        self.shapes = [(d,) for d in reversed(fc)] + conv_shapes
        size = lambda i: self.in_shape if i == len(self.shapes) else self.shapes[i]
        g = torch.Generator().manual_seed(seed)
        self.params, self._memo = {}, None
        for i in range(len(self.shapes)):
            a, b = size(i), size(i + 1)
            shape = (a[0], math.prod(b)) if i < self.n_fc else (a[0], b[0], kernel, kernel)
            self.params[f"W{i}_{i + 1}"] = glorot(shape, g, init_scale).to(self.device, dtype)

    def _couplings(self, x, s, p, memo: bool = False):
        """Per coupling (i, i+1): the input-side term layer i hears and the max-pool indices.
        With ``memo`` the clamped input's term P(W ∗ x) is reused while x and W are the same
        unmodified tensors: it is constant through a phase, and its max-pool (the largest) took
        ~40 % of a CPU step."""
        layers = list(s) + [x.reshape(-1, *self.in_shape)]
        out = []
        for i in range(len(s)):
            W, b = p[f"W{i}_{i + 1}"], layers[i + 1]
            if i < self.n_fc:
                out.append((b.flatten(1) @ W.T, None))
            elif i == len(s) - 1 and memo:
                versions = (x._version, W._version)  # in-place updates (the optimiser's) bump these
                if self._memo is None or self._memo[0] is not x or self._memo[1] is not W or self._memo[2] != versions:
                    self._memo = (x, W, versions, F.max_pool2d(F.conv2d(b, W), self.pool))
                out.append((self._memo[3], None))
            else:
                out.append(F.max_pool2d(F.conv2d(b, W), self.pool, return_indices=True))
        return layers, out

    def phi(self, x, s, params=None) -> torch.Tensor:
        p = self.params if params is None else params
        layers, terms = self._couplings(x, s, p)
        return sum((up * layers[i]).flatten(1).sum(1) for i, (up, _) in enumerate(terms))

    def step(self, x, s, beta=0.0, y=None) -> list[torch.Tensor]:
        p = self.params
        layers, terms = self._couplings(x, s, p, memo=self.memo)
        new = []
        for i, t in enumerate(s):
            pre = terms[i][0]
            if i > 0:  # the output-side neighbour, through the transpose of its coupling
                W, above = p[f"W{i - 1}_{i}"], layers[i - 1]
                if i - 1 < self.n_fc:
                    pre = pre + (above @ W).view_as(t)
                else:
                    size = [d - self.kernel + 1 for d in t.shape[-2:]]
                    unpooled = F.max_unpool2d(above, terms[i - 1][1], self.pool, output_size=size)
                    pre = pre + F.conv_transpose2d(unpooled, W)
            new.append(self.sigma(pre))
        new[0] = new[0] + self.nudge(s[0], beta, y)
        return new


def toy_model(seed: int = 0, dtype=torch.float64, init_scale: float = 1.0) -> EnergyBased:
    """Seed 003 C.2: 10 inputs, 50 hidden, 5 outputs, all layers coupled (W01, W0x, W1x), tanh."""
    return EnergyBased([5, 50], 10, [(0, 1), (0, 2), (1, 2)], act="tanh", eps=0.08, dtype=dtype, seed=seed,
                       init_scale=init_scale)

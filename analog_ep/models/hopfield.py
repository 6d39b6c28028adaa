"""Continuous Hopfield EP (Scellier & Bengio 2017, seeds 000/004) and its equivalence with
recurrent backprop (seed 001).

E(s) = ½ Σ‖s_k‖² − Σ_k ρ(s_k)ᵀ W_k ρ(s_{k−1}) − Σ_k b_kᵀ ρ(s_k) over the free layers
s_1..s_N (s_0 = x clamped, s_N = output), F = E + β C with C = ½‖s_N − y‖². Relaxation: the
clipped leaky-integrator step s ← clip(s − ε ∂F/∂s, 0, 1) (eq. 52-53), all layers from the same
state; the Langevin variant (appendix B) adds √(2Tε)·N(0, 1) per step, whose stationary law is
∝ exp(−F/T). EP: Δθ ∝ −(1/β)(∂F/∂θ(s^β) − ∂F/∂θ(s⁰)), by autograd of F at fixed states.
"""
from __future__ import annotations

import math

import torch

from .common import activation, glorot, grads_at, nudges

RHO = ("hardsigmoid", "logistic")  # the activations a Hopfield net takes


class HopfieldNet:
    nudge_scale = 1.0  # the nudged force is β ∂C/∂s, as in the discrete models' convention

    def __init__(self, sizes: list[int], rho: str = "hardsigmoid", dtype=torch.float32, device="cpu", seed: int = 0,
                 init_scale: float = 1.0):
        self.sizes, self.dtype, self.device = list(sizes), dtype, torch.device(device)
        self.rho, self.drho = activation(rho, RHO)
        g = torch.Generator().manual_seed(seed)
        self.params = {}
        for k in range(1, len(sizes)):  # Glorot-uniform weights, zero biases
            self.params[f"W{k}"] = glorot((sizes[k], sizes[k - 1]), g, init_scale).to(self.device, dtype)
            self.params[f"b{k}"] = torch.zeros(sizes[k], dtype=dtype, device=self.device)

    def zeros(self, batch: int) -> list[torch.Tensor]:
        return [torch.zeros(batch, n, dtype=self.dtype, device=self.device) for n in self.sizes[1:]]

    def energy(self, x, s, params=None) -> torch.Tensor:
        """E per sample (B,)."""
        p = self.params if params is None else params
        layers = [x] + list(s)
        e = 0.5 * sum((t * t).sum(1) for t in s)
        for k in range(1, len(layers)):
            rk = self.rho(layers[k])
            e = e - ((self.rho(layers[k - 1]) @ p[f"W{k}"].T) * rk).sum(1) - rk @ p[f"b{k}"]
        return e

    def cost(self, s, y) -> torch.Tensor:
        return 0.5 * ((s[-1] - y) ** 2).sum(1)

    def grad_s(self, x, s, beta: float = 0.0, y=None) -> list[torch.Tensor]:
        """∂F/∂s per layer (explicit: the relaxation runs on it)."""
        p, layers = self.params, [x] + list(s)
        out = []
        for k in range(1, len(layers)):
            drive = self.rho(layers[k - 1]) @ p[f"W{k}"].T + p[f"b{k}"]
            if k + 1 < len(layers):
                drive = drive + self.rho(layers[k + 1]) @ p[f"W{k + 1}"]
            out.append(layers[k] - self.drho(layers[k]) * drive)
        if nudges(beta):
            out[-1] = out[-1] + beta * (s[-1] - y)
        return out

    def relax(self, x, s, steps: int, eps: float, beta: float = 0.0, y=None, clip: bool = True,
              temperature: float = 0.0, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """``steps`` leaky-integrator steps; with ``temperature`` > 0, Langevin dynamics."""
        noise = math.sqrt(2 * temperature * eps)
        for _ in range(steps):
            g = self.grad_s(x, s, beta, y)
            s = [t - eps * gt for t, gt in zip(s, g)]
            if noise:
                s = [t + noise * torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t.device, t.dtype)
                     for t in s]
            if clip:
                s = [t.clamp(0, 1) for t in s]
        return s

    def energy_grads(self, x, s, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """∂E/∂θ at fixed states, summed over the batch (each sample × ``weight``; C does not
        depend on θ)."""
        s = [t.detach() for t in s]
        return grads_at(lambda p: self.energy(x, s, p), self.params, weight)

    def update(self, x, s_from, s_to, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """EP's increment of −E between two states (the discrete models' Φ plays −E's part):
        ÷β it estimates −d(cost)/dθ."""
        a, b = self.energy_grads(x, s_from, weight), self.energy_grads(x, s_to, weight)
        return {k: a[k] - b[k] for k in a}


class ParticleCache:
    """Persistent particles (seed 000 §5.2): the free-phase state of every training example,
    reused to start that example's next free phase (zeros before its first visit). It grows to
    the largest example index it is given."""

    def __init__(self, net: HopfieldNet, n_examples: int = 0):
        self.state = [torch.zeros(n_examples, n, dtype=net.dtype, device=net.device) for n in net.sizes[1:]]
        self.visited = torch.zeros(n_examples, dtype=torch.bool)

    def _grow(self, idx: torch.Tensor) -> None:
        need = int(idx.max()) + 1 if idx.numel() else 0
        if need > len(self.visited):
            extra = need - len(self.visited)
            self.state = [torch.cat([t, t.new_zeros(extra, t.shape[1])]) for t in self.state]
            self.visited = torch.cat([self.visited, torch.zeros(extra, dtype=torch.bool)])

    def get(self, idx: torch.Tensor) -> list[torch.Tensor]:
        self._grow(idx)
        return [t[idx].clone() for t in self.state]

    def put(self, idx: torch.Tensor, s: list[torch.Tensor]) -> None:
        self._grow(idx)
        for t, v in zip(self.state, s):
            t[idx] = v.detach()
        self.visited[idx] = True


def rbp_check(net: HopfieldNet, x, y, beta: float, eps: float, steps: int, free_steps: int = 5000) -> dict:
    """Seed 001, Theorem 3 in discrete time: along the nudged phase (Euler step ε, no clipping),
    −(s_{k+1} − s_k)/(εβ) equals RBP's X_k = ∂L/∂s and (∂E/∂θ(s_k) − ∂E/∂θ(s⁰))/β equals RBP's
    Y_k = ∂L/∂θ at every step k, up to O(β). RBP: X_0 = ∂C/∂s(s⁰), X_{k+1} = (I − εH)X_k,
    Y_0 = 0, Y_{k+1} = Y_k − ε ∂²E/∂θ∂s X_k, with H = ∂²E/∂s² at s⁰. Returns the worst
    relative errors over the steps (each step's error over the norm of the whole process)."""
    s0 = net.relax(x, net.zeros(x.shape[0]), free_steps, eps, clip=False)
    shapes = [t.shape for t in s0]
    flat = lambda s: torch.cat([t.reshape(-1) for t in s])
    unflat = lambda v: [c.reshape(sh) for c, sh in zip(v.split([math.prod(sh) for sh in shapes]), shapes)]
    e_of = lambda v: net.energy(x, unflat(v)).sum()
    v0 = flat(s0).detach()
    H = torch.autograd.functional.hessian(e_of, v0)
    X = flat([torch.zeros_like(t) for t in s0[:-1]] + [s0[-1] - y])  # ∂C/∂s at s⁰
    Y = {k: torch.zeros_like(v) for k, v in net.params.items()}
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in net.params.items()}
    sv = v0.clone().requires_grad_(True)
    dE_ds = torch.autograd.grad(net.energy(x, unflat(sv), leaves).sum(), sv, create_graph=True)[0]
    base = net.energy_grads(x, s0)
    s = s0
    ep_s, rbp_s, ep_t, rbp_t = [], [], [], []
    for _ in range(steps):
        g = net.grad_s(x, s, beta, y)
        nxt = [t - eps * gt for t, gt in zip(s, g)]
        ep_s.append(-(flat(nxt) - flat(s)) / (eps * beta))
        rbp_s.append(X)
        grads = net.energy_grads(x, s)
        ep_t.append(torch.cat([((grads[k] - base[k]) / beta).reshape(-1) for k in Y]))
        rbp_t.append(torch.cat([Y[k].reshape(-1) for k in Y]))
        mixed = torch.autograd.grad(dE_ds, list(leaves.values()), grad_outputs=X, retain_graph=True)
        Y = {k: Y[k] - eps * m for k, m in zip(Y, mixed)}
        X = X - eps * (H @ X)
        s = nxt
    err = lambda a, b: float(max((p - q).norm() for p, q in zip(a, b)) / torch.stack(b).norm(dim=1).max())
    return dict(rel_err_s=err(ep_s, rbp_s), rel_err_theta=err(ep_t[1:], rbp_t[1:]), steps=steps, beta=beta, eps=eps)

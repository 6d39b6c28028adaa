"""The GDU property (seed 003, Theorem 1): the EP updates of the first K nudged steps equal,
step by step, minus the BPTT gradients of the last K free steps, when the free phase has
converged. Here both processes are computed and compared with the seed's RelMSE (eq. 67) and
the sign agreement of the weight updates.

Pairing (seed 003's main-text convention): for k = 0..K−1,
ΔEP_s(k) = (s^β_{k+1} − s^β_k)/β'  ↔  −∂L/∂s_{T−k},
ΔEP_θ(k) = (∂Φ/∂θ(s^β_{k+1}) − ∂Φ/∂θ(s^β_k))/β'  ↔  −∂L/∂θ through the step s_{T−k−1} → s_{T−k},
with L = ½‖s⁰_T − y‖² and β' the nudge the step adds (εβ for the energy-based models, whose step
is the Euler step of the nudged continuous dynamics); both processes are averaged over the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .discrete import DiscreteModel


@dataclass
class Processes:
    ep: dict[str, torch.Tensor]  # name -> (K, *shape): layers "s0", "s1", ... and weights "W0_1", ...
    bptt: dict[str, torch.Tensor]  # the same names: −∇BPTT, so that GDU means ep == bptt
    free_residual: float  # max |s_T − s_{T−1}|: how converged the free phase was


def processes(model: DiscreteModel, x: torch.Tensor, y: torch.Tensor, T: int, K: int, beta: float,
              on_steps: Callable[[int], None] | None = None) -> Processes:
    """Both processes of a GDU check: T free steps (the last K through BPTT) and K nudged steps
    of strength ``beta``. ``on_steps`` is called with the number of model steps just done
    (T + K in all; e.g. a progress bar's update)."""
    B = x.shape[0]
    tick = on_steps or (lambda n: None)
    s = model.zeros(B)
    with torch.no_grad():
        chunk = max(1, (T - K) // 100)  # relax in chunks: the same steps, with progress between them
        for done in range(0, T - K, chunk):
            s = model.relax(x, s, min(chunk, T - K - done))
            tick(min(chunk, T - K - done))
    # BPTT over the last K steps, with a separate copy of θ per step for per-step gradients
    s = [t.clone().requires_grad_(True) for t in s]
    states, thetas = [s], []
    saved = dict(model.params)
    for _ in range(K):
        theta = {k: v.detach().clone().requires_grad_(True) for k, v in saved.items()}
        model.params = theta
        s = model.step(x, s)
        for t in s:
            t.retain_grad()
        states.append(s)
        thetas.append(theta)
        tick(1)
    model.params = saved
    loss = 0.5 * ((states[-1][0] - y) ** 2).sum()
    loss.backward()
    with torch.no_grad():
        s_star = [t.detach() for t in states[-1]]
        residual = max(float((a - b.detach()).abs().max()) for a, b in zip(s_star, states[-2]))
        grad = lambda t: torch.zeros_like(t) if t.grad is None else t.grad  # ∂L/∂s¹_T = 0: L reads s⁰ only
        bptt = {f"s{i}": torch.stack([-grad(states[K - k][i]).sum(0) / B for k in range(K)]) for i in range(len(s))}
        for name in model.params:
            bptt[name] = torch.stack([-grad(thetas[K - 1 - k][name]) / B for k in range(K)])
        # EP: the first K nudged steps from s* = s_T
        nudged = [s_star]
        for _ in range(K):
            nudged.append(model.step(x, nudged[-1], beta, y))
            tick(1)
    scale = beta * model.nudge_scale * B
    ep = {f"s{i}": torch.stack([(nudged[k + 1][i] - nudged[k][i]).sum(0) / scale for k in range(K)])
          for i in range(len(s_star))}
    steps = [model.update(x, nudged[k], nudged[k + 1]) for k in range(K)]
    for name in model.params:
        ep[name] = torch.stack([steps[k][name] / scale for k in range(K)])
    return Processes(ep, bptt, residual)


def rel_mse(f: torch.Tensor, g: torch.Tensor) -> float:
    """Seed 003 eq. 67: mean over elements of ‖f − g‖ / max(‖f‖, ‖g‖), with ‖·‖ the RMS over
    the K steps (axis 0). Elements where both processes are identically zero are skipped (the
    P models' saw-teeth and saturated units)."""
    rms = lambda a: a.pow(2).mean(0).sqrt()
    den = torch.maximum(rms(f), rms(g))
    keep = den > 0
    return float((rms(f - g)[keep] / den[keep]).mean()) if bool(keep.any()) else 0.0


def sign_agreement(f: torch.Tensor, g: torch.Tensor) -> float:
    """Fraction of elements whose total update over the K steps has the same sign in both."""
    a, b = torch.sign(f.sum(0)), torch.sign(g.sum(0))
    keep = (a != 0) | (b != 0)
    return float((a == b)[keep].float().mean()) if bool(keep.any()) else 1.0


def report(p: Processes) -> dict:
    return dict(rel_mse={k: rel_mse(p.ep[k], p.bptt[k]) for k in p.ep},
                sign_agreement={k: sign_agreement(p.ep[k], p.bptt[k]) for k in p.ep if not k.startswith("s")},
                free_residual=p.free_residual)

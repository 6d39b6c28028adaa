"""Equilibrium Propagation: the gradient of the loss at equilibrium from two (or three)
settles of the same circuit, and the exact equilibrium gradient to test it against.

EP estimate (Scellier & Bengio 2017): dL/dθ ≈ (1/β)(∂E/∂θ(s^β) − ∂E/∂θ(s^0)); for a
conductance ∂E/∂g = ½ΔV², the local rule. ∂E/∂θ is autograd of the energy at *fixed* states,
so every parameter the energy depends on (conductances, source voltages, amplifier gains,
diode IS/N) gets EP for free. Centred nudging (±β) cancels the O(β) bias of one-sided nudging.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .compiled import Compiled
from .energy import cost, energy
from .nudging import check_nudging, ep_estimate
from .operators import assemble, block_roots, hessian
from .settle import SettleResult, settle


@dataclass
class EPResult:
    grads: dict[str, torch.Tensor]  # parameter key -> dL/dθ estimate (mean loss over the batch)
    free: SettleResult
    nudged: list[SettleResult]
    loss: torch.Tensor  # per-sample MSE cost at the free state


def _leaves(cc: Compiled, keys, u: torch.Tensor):
    """Fresh leaf tensors for the parameters in ``keys`` (and the sources, if "u" is one)."""
    leaves = {k: cc.params[k].detach().clone().requires_grad_(True) for k in keys if k != "u"}
    uu = u.detach().clone().requires_grad_("u" in keys)
    return leaves, uu


def _grad_dict(scalar: torch.Tensor, leaves: dict, uu: torch.Tensor, keys, sign: float = 1.0) -> dict:
    """sign · d scalar / d leaf for each key; the sources' gradient is summed over the batch."""
    wrt = list(leaves.values()) + ([uu] if "u" in keys else [])
    grads = torch.autograd.grad(scalar, wrt, allow_unused=True)
    out = {k: sign * (g if g is not None else torch.zeros_like(leaves[k])) for k, g in zip(leaves, grads)}
    if "u" in keys:
        out["u"] = sign * grads[-1].sum(0)
    return out


def _conductance_grads(cc: Compiled, keys, weights_and_states, u: torch.Tensor) -> dict[str, torch.Tensor]:
    """Σ_k w_k ∂E/∂g(s_k) = Σ_k w_k ½ΔV² for every conductance block in ``keys``, summed over
    samples — direct, since the energy is linear in each conductance (what autograd would give,
    without the energy's forward matmuls). A dense block with a fixed side (sources to a layer)
    needs one matmul for all states together, as its fixed side is the same in every state.
    ``weights_and_states``: (w_k, s_k, circuit the state settled on) — the voltage drops are the
    ones across the devices of that circuit (hardware gains and offsets included)."""
    blocks = [(b, where) for b, where in zip(cc.blocks, block_roots(cc)) if b.name in keys]
    if not blocks:
        return {}
    states = [(torch.as_tensor(w, dtype=cc.dtype, device=cc.device).reshape(-1, 1), s.detach(), circ)
              for w, s, circ in weights_and_states]
    memo: dict[tuple, torch.Tensor] = {}  # blocks often share a side (a layer's nodes): computed once

    def once(what: str, k: int, nodes, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = (what, k) + ((nodes.start, nodes.stop) if isinstance(nodes, slice) else (id(nodes),))
        if key not in memo:
            memo[key] = make()
        return memo[key]

    side = lambda k, nodes: once("V", k, nodes, lambda: states[k][2].node_voltages(states[k][1], u, nodes))  # V
    each = lambda k, nodes: once("wV", k, nodes, lambda: states[k][0] * side(k, nodes))  # w_k V_k
    weighted = lambda nodes: once("ΣwV", -1, nodes, lambda: sum(each(k, nodes) for k in range(len(states))))
    # ½ Σ_k Σ_b w_k V_k², each state's as one fused product and sum over the batch
    half = lambda nodes: once("wV2", -1, nodes, lambda: 0.5 * sum(torch.linalg.vecdot(each(k, nodes), side(k, nodes), dim=0)
                                                                   for k in range(len(states))))
    circuits = {id(circ) for _, _, circ in weights_and_states}
    cancels = len(circuits) == 1 and not bool(sum(w for w, _, _ in states).any())
    grads = {}
    with torch.no_grad():
        for blk, where in blocks:
            if not blk.dense:
                drop = lambda k: side(k, blk.a) - side(k, blk.b)
                grads[blk.name] = 0.5 * sum((w * drop(k) ** 2).sum(0) for k, (w, _, _) in enumerate(states))
                continue
            fixed_a, fixed_b = where.a_fixed, where.b_fixed
            a, b = blk.a_cols, blk.b_cols  # slices where contiguous: views, not gathers
            # a fixed side's ½ΣwV² cancels exactly where the weights do and every state is of
            # one circuit (EP's differences): its voltages are the same in each state
            skip_a, skip_b = (cancels and fixed_a), (cancels and fixed_b)
            sq = states[0][1].new_zeros(1, 1)  # broadcast by addmm
            if not skip_a:
                sq = sq + half(a)[:, None]
            if not skip_b:
                sq = sq + half(b)[None, :]
            if fixed_a:
                lhs, rhs = side(0, a).T, weighted(b)
            elif fixed_b:
                lhs, rhs = weighted(a).T, side(0, b)
            else:
                lhs = torch.cat([each(k, a) for k in range(len(states))]).T
                rhs = torch.cat([side(k, b) for k in range(len(states))])
            grads[blk.name] = _minus_product(sq, lhs, rhs)
    return grads


def _minus_product(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """c − a @ b (c broadcast to the product's shape), computed as (cᵀ − bᵀaᵀ)ᵀ where b has
    fewer columns than a has rows: BLAS is several times slower on a tall, thin product of
    transposed operands (a (1024, 384) by (384, 10) block's gradient) than on its transpose."""
    if b.shape[1] < a.shape[0]:
        return torch.addmm(c.T, b.T, a.T, alpha=-1).T.contiguous()
    return torch.addmm(c, a, b, alpha=-1)


def weighted_param_grads(cc: Compiled, keys, weights_and_states, u: torch.Tensor) -> dict[str, torch.Tensor]:
    """Σ_k w_k · ∂E/∂θ(s_k) summed over samples: conductances directly, any other parameter
    (amplifier gains, diode IS/N, sources) by autograd of the nominal energy at fixed states."""
    grads = _conductance_grads(cc, keys, weights_and_states, u)
    rest = [k for k in keys if k not in grads]
    if not rest:
        return grads
    leaves, uu = _leaves(cc, rest, u)
    total = 0.0
    for w, s, _ in weights_and_states:
        total = total + (w * energy(cc, s.detach(), uu, params=leaves)).sum()
    return {**grads, **_grad_dict(total, leaves, uu, rest)}


def ep_gradient(cc: Compiled, u: torch.Tensor, target: torch.Tensor, beta: float, *, mode: str = "centered",
                keys: list[str] | None = None, generator: torch.Generator | None = None,
                free: SettleResult | None = None, sign: torch.Tensor | None = None,
                view: Callable[[], Compiled] | None = None, measure: Callable[[torch.Tensor], torch.Tensor] | None = None,
                **settle_kw) -> EPResult:
    """EP estimate of d(mean cost)/dθ (:func:`analog_ep.emulator.nudging.ep_estimate`). ``mode``:
    "positive" (+β), "centered" (±β) or "random" (one-sided with a random sign per sample:
    ``sign`` (B,) of ±1, else drawn from ``generator``). The nudged phases start from the free
    state.

    Hardware hooks (device models): ``view()`` gives the circuit each phase settles (e.g. with
    fresh read noise), ``measure(s)`` what the learning rule reads of the settled voltages."""
    check_nudging(mode, beta)
    keys = list(cc.trainable) if keys is None else list(keys)
    u = torch.as_tensor(u, dtype=cc.dtype, device=cc.device)
    target = torch.as_tensor(target, dtype=cc.dtype, device=cc.device).reshape(u.shape[0], -1)
    view = view or (lambda: cc)
    measure = measure or (lambda s: s)
    free = settle(view(), u, **settle_kw) if free is None else free
    nudge = lambda b: settle(view(), u, beta=b, target=target, s0=free.s, **settle_kw)
    difference = lambda a, b, w: weighted_param_grads(cc, keys, [(w, measure(b.s), b.cc), (-w, measure(a.s), a.cc)], u)
    grads, nudged = ep_estimate(free, nudge, difference, mode=mode, beta=beta, batch=u.shape[0], sign=sign,
                                generator=generator, dtype=cc.dtype, device=cc.device)
    return EPResult(grads, free, nudged, cost(free.outputs, target))


def equilibrium_gradient(cc: Compiled, u: torch.Tensor, target: torch.Tensor, *, keys: list[str] | None = None,
                         free: SettleResult | None = None, **settle_kw) -> dict[str, torch.Tensor]:
    """Exact d(mean cost)/dθ at equilibrium by implicit differentiation: with H = ∂²E/∂s²,
    λ = H⁻¹ ∂L/∂s and dL/dθ = −∂/∂θ (∂E/∂s · λ). The reference EP is tested against (dense
    Hessian: for circuits of up to a few thousand free nodes, Shockley diodes only)."""
    keys = list(cc.trainable) if keys is None else list(keys)
    u = torch.as_tensor(u, dtype=cc.dtype, device=cc.device)
    target = torch.as_tensor(target, dtype=cc.dtype, device=cc.device).reshape(u.shape[0], -1)
    B = u.shape[0]
    free = settle(cc, u, **settle_kw) if free is None else free
    s = free.s.detach().clone().requires_grad_(True)
    (dL_ds,) = torch.autograd.grad(cost(cc.node_voltages(s, u, cc.outputs), target).sum() / B, s)
    with torch.no_grad():
        H = hessian(assemble(cc, u), free.s)
        lam = torch.linalg.solve(H, dL_ds.unsqueeze(-1)).squeeze(-1)
    leaves, uu = _leaves(cc, keys, u)
    (dE_ds,) = torch.autograd.grad(energy(cc, s, uu, params=leaves).sum(), s, create_graph=True)
    return _grad_dict((dE_ds * lam).sum(), leaves, uu, keys, sign=-1.0)

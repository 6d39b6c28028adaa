"""The circuit's total co-content as a differentiable torch function.

This is the single statement of the physics in the emulator: the solvers minimise it (through
operators assembled from the same parameters) and EP differentiates it with respect to the
parameters at fixed states."""
from __future__ import annotations

import torch

from .compiled import Compiled
from .operators import breakdown_voltage, diode_cocontent


def nudge_energy(cc: Compiled, V: torch.Tensor, beta, target: torch.Tensor | None) -> torch.Tensor:
    """β·C with the MSE cost C = ½ Σ (V_out − y)²: a conductance β from each output to y."""
    if target is None:
        return V.new_zeros(V.shape[0])
    beta = torch.as_tensor(beta, dtype=V.dtype, device=V.device).reshape(-1)
    return 0.5 * beta * ((V[:, cc.outputs] - target) ** 2).sum(1)


def cost(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The MSE cost ½ Σ (V_out − y)² per sample (V²), of output voltages ``out`` (B, n_out), V,
    against targets y (B, n_out), V."""
    return 0.5 * ((out - target) ** 2).sum(1)


def energy(cc: Compiled, s: torch.Tensor, u: torch.Tensor, *, beta=0.0, target: torch.Tensor | None = None,
           params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Total co-content per sample (B,), in watts, at free voltages s (B, n_free) and sources
    u (B, n_src); ``params`` overrides cc.params (e.g. tensors that require grad). With
    ``cc.perturb``, up to a constant in s (what the solvers need)."""
    p = cc.params if params is None else {**cc.params, **params}
    gain = cc.node_gain(p)
    V = cc.voltages(s, u, gain, params=p)
    E = V.new_zeros(V.shape[0])
    for blk in cc.blocks:
        g = p[blk.name]
        a, b = V[:, blk.a_cols], V[:, blk.b_cols]
        if blk.dense:  # ½ Σ g (a_i − b_j)² without a B×m×n temporary
            E = E + 0.5 * (a * a) @ g.sum(1) + 0.5 * (b * b) @ g.sum(0) - ((a @ g) * b).sum(1)
        else:
            E = E + 0.5 * ((a - b) ** 2 * g).sum(1)
    for node, key in cc.currents:
        E = E - (V[:, node] * p[key]).sum(1)
    for d in cc.diodes:
        if d.ideal:
            continue  # zero inside the bound, +inf outside: enforced by the solvers
        v = V[:, d.anode] - V[:, d.cathode]
        IS, nvt = p[f"IS:{d.name}"], p[f"N:{d.name}"] * cc.vt
        xbv = breakdown_voltage(IS, nvt, p[f"BV:{d.name}"], p[f"IBV:{d.name}"], cc.vt)
        E = E + diode_cocontent(v, IS, nvt, xbv).sum(1)
    if cc.perturb is not None:  # ½ ΔD s² − Δf s: the perturbed conductances towards fixed nodes
        dD, df = cc.perturb(u)
        E = E + 0.5 * (dD * s * s).sum(1) - (df * s).sum(1)
    return E + nudge_energy(cc, V, beta, target)


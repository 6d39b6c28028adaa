"""Steady state of a compiled circuit: the energy minimum = the DC operating point.

``settle(cc, u, method=...)`` in the manner of ``odeint``: one entry point, solvers by name
(``solvers.SOLVERS``: ``auto``, the default — BCD, finished by Newton where BCD stalls —,
``bcd``, ``newton``, ``transient``), method-specific ``options``, tolerances explicit, and a
result that always says how converged it is and which solver finished.

The KCL residual is the energy gradient r = ∂E/∂s (amperes per free node); a settle has
converged when |r_i| ≤ atol + rtol · D_i · V_scale for every node, where D_i is the node's total
conductance and V_scale the largest source voltage: rtol is a relative voltage error.
"""
from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .compiled import Compiled
from .operators import Operators, assemble, residual
from .solvers import Problem, get_solver


class ConvergenceError(RuntimeError):
    """A settle stopped before its tolerance; the partial result is attached and the message
    (one line) ends with what to try."""

    def __init__(self, message: str, result: "SettleResult"):
        super().__init__(message)
        self.result = result


@dataclass
class SettleResult:
    """A settled state and how converged it is. ``residual`` and ``rel_residual`` are worked
    out when first read (a training step reads neither; ``converged`` is decided without them)."""

    s: torch.Tensor  # free node voltages (B, n_free), V
    u: torch.Tensor  # source voltages (B, n_src), V
    iterations: int  # all stages together
    converged: bool
    method: str  # the method, and for "auto" the stages that ran: "auto:bcd" or "auto:bcd+newton"
    seconds: float
    cc: Compiled
    stats: Callable[[], tuple[float, float]] = field(repr=False, compare=False)  # -> (residual, rel_residual)
    stages: dict[str, int] = field(default_factory=dict)  # iterations per stage, e.g. {"bcd": 10, "newton": 3}

    @functools.cached_property
    def _residuals(self) -> tuple[float, float]:
        return self.stats()

    @property
    def residual(self) -> float:
        """max |KCL residual| over nodes and samples, A."""
        return self._residuals[0]

    @property
    def rel_residual(self) -> float:
        """max |r_i| / (D_i V_scale)."""
        return self._residuals[1]

    @property
    def V(self) -> torch.Tensor:
        """All node voltages (B, n_nodes), V, in the compiled circuit's node order (which adds
        the internal nodes of diodes with series resistance at the end)."""
        return self.cc.voltages(self.s, self.u)

    @property
    def outputs(self) -> torch.Tensor:
        """Output node voltages (B, n_out), V."""
        return self.cc.node_voltages(self.s, self.u, self.cc.outputs)

    def voltages_of(self, names: Sequence[str]) -> torch.Tensor:
        """Voltages (B, len(names)), V, of the named nodes."""
        nodes = self.cc.circuit.nodes
        return self.V[:, [nodes.index(n) for n in names]]


def settle(cc: Compiled, u: torch.Tensor | None = None, *, method: str = "auto", rtol: float | None = None,
           atol: float = 0.0, max_iters: int = 20000, on_fail: str = "raise", s0: torch.Tensor | None = None,
           beta: float | torch.Tensor = 0.0, target: torch.Tensor | None = None,
           options: dict[str, Any] | None = None, fused: bool = False) -> SettleResult:
    """Settle the circuit for a batch of source settings: minimise its co-content over the free
    node voltages.

    u: source voltages (B, n_src) in V (``cc.inputs_to_sources(x)`` for a layered circuit's
    inputs); None = the circuit's own sources.
    method: a name in ``solvers.SOLVERS`` — "auto" (BCD, then Newton if BCD stalls; exactly
    "bcd" when BCD converges without stalling; BCD only with ideal clamps), "bcd", "newton",
    "transient".
    options: that method's options (bcd: ``inner``, ``check_every``; newton: ``dense_max``;
    auto: those and ``stall_window``, ``stall_drop``; transient: ``dt``, ``duration`` in s,
    ``capacitance`` in F, ``temperature`` in K, ``generator``), an unknown or missing one
    being a ValueError.
    rtol (relative voltage error; default 1e-10 in float64, 1e-5 in float32) and atol (A): the
    stopping rule |r_i| ≤ atol + rtol·D_i·V_scale.
    max_iters: the method's iteration budget (sweeps plus Newton steps).
    on_fail: "raise" (ConvergenceError, whose message says what to try), "warn", or "ignore"
    — the result says either way.
    s0: warm start (V; e.g. the free state for the nudged phase).
    beta/target: EP nudge (conductance β, in S, from each output to y in V; β may be per
    sample).
    fused: run the solvers' elementwise kernels (the diode clamps' Newton steps and currents)
    compiled (:mod:`analog_ep.emulator.fusion`): several times faster per sweep, seconds to
    compile the first time a shape is seen; the same result to rounding."""
    t0 = time.perf_counter()
    solver = get_solver(method)
    opts = solver.options(options)
    if u is None:
        u = cc.source_values(1)
    u = torch.as_tensor(u, dtype=cc.dtype, device=cc.device)
    u = u[None] if u.ndim == 1 else u
    if target is not None:
        target = torch.as_tensor(target, dtype=cc.dtype, device=cc.device).reshape(u.shape[0], -1)
    if rtol is None:
        rtol = 1e-10 if cc.dtype == torch.float64 else 1e-5
    if on_fail not in ("raise", "warn", "ignore"):
        raise ValueError(f"on_fail must be raise, warn or ignore, not {on_fail!r}")
    with torch.no_grad():
        ops = assemble(cc, u, beta, target)
        B = u.shape[0]
        s = ops.f_fixed / ops.D if s0 is None else s0.detach().to(cc.dtype).expand(B, -1)  # kernels do not modify it
        vscale = u.abs().amax(1, keepdim=True).clamp_min(1e-12) if u.numel() else torch.ones(B, 1, dtype=cc.dtype)
        tol = ops.D * (rtol * vscale)  # one pass over (B, n_free): vscale is (B, 1)
        tol = tol + atol if atol else tol
        out = solver(Problem(cc, ops, u, beta, target, tol, fused), s, max_iters, opts)
        s, ok, it = out.s, out.converged, out.iterations
    name = f"{method}:{out.label}" if out.label else method
    result = SettleResult(s, u, it, ok, name, time.perf_counter() - t0, cc,
                          lambda: _residual_stats(cc, ops, s, u, out.r, vscale), out.stages or {method: it})
    if not ok and on_fail != "ignore":
        msg = (f"settle ({name}) not converged after {it} iterations: max residual {result.residual:.3g} A, "
               f"relative {result.rel_residual:.3g} (rtol {rtol:g}, atol {atol:g})"
               + (f"; {out.hint}" if out.hint else ""))
        if on_fail == "raise":
            raise ConvergenceError(msg, result)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return result


def _residual_stats(cc: Compiled, ops: Operators, s: torch.Tensor, u: torch.Tensor, r: torch.Tensor | None,
                    vscale: torch.Tensor) -> tuple[float, float]:
    """max |r| (A) and max |r_i| / (D_i V_scale) at the settled s (V): from the solver's
    residual r where it evaluated the whole of it, else evaluated here."""
    with torch.no_grad():
        r = residual(cc, ops, s, u) if r is None else r
        if not r.numel():
            return 0.0, 0.0
        size = r.abs()
        return float(size.max()), float((size / ops.D).div_(vscale).max())

"""Solver kernels of the settle, one per method, in a registry (``SOLVERS``).

A kernel minimises the energy of one ``Problem`` (operators assembled for a batch of sources,
and the per-node tolerance of the stopping rule) from a start state, within an iteration
budget, and returns an ``Outcome``. Each registers with its options and their defaults
(``REQUIRED`` marks options without one); ``Solver.options`` checks what a caller passes.

* ``bcd`` — exact block coordinate descent over a colouring of the free nodes (a layered net:
  even/odd layers). Nodes of one colour do not interact, so each is set to its exact optimum
  given the others: the conductance-weighted mean of its neighbours and sources, then a
  safeguarded scalar Newton for Shockley diodes, then a clip for ideal clamps. Options:
  ``inner`` (at most this many scalar Newton steps per node and sweep), ``check_every`` (sweeps between
  residual checks).
* ``newton`` — damped Newton on the whole free vector, backtracking on the (convex) energy:
  the dense Hessian (n_free² per sample) up to ``dense_max`` free nodes (default 512, 2 MiB per
  sample in float64), a sparse LU per sample (scipy, CPU) beyond. Shockley diodes only.
* ``auto`` (the settle default) — ``bcd`` while it makes progress; when it stalls (the worst
  residual-to-tolerance ratio fell by less than ``stall_drop`` = 10 over the last
  ``stall_window`` = 10 sweeps), Newton finishes. BCD alone with ideal clamps (a projection:
  Newton's Hessian does not exist there). Options: bcd's, newton's and those two.
* ``transient`` — the physical dynamics C dV/dt = −∂E/∂V (linearly implicit Euler), for finite
  settling times, optionally with Johnson noise of every conductance at temperature T.
  Options: ``dt`` and ``duration`` (s, required), ``capacitance`` (F, per node),
  ``temperature`` (K, 0 = noiseless), ``generator`` (torch.Generator of the noise).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch

from ..circuit.constants import BOLTZMANN
from .compiled import Compiled
from .energy import energy
from .fusion import fusable
from .operators import Operators, Slots, diode_iv, hessian, hessian_entries, inflow, residual, set_columns_

REQUIRED = object()  # the default of an option that has none: the caller must pass it


@dataclass(frozen=True)
class Problem:
    """One settle's fixed data: circuit, operators, sources u (B, n_src) in V, the EP nudge
    (β in S, target in V), the stopping tolerance per free node (B, n_free) in A, and whether
    the elementwise kernels run fused (:mod:`~analog_ep.emulator.fusion`)."""

    cc: Compiled
    ops: Operators
    u: torch.Tensor
    beta: float | torch.Tensor
    target: torch.Tensor | None
    tol: torch.Tensor
    fused: bool = False

    def residual(self, s: torch.Tensor, known: tuple[int, torch.Tensor] | None = None,
                 proven: bool = False) -> torch.Tensor:
        """The KCL residual ∂E/∂s (B, n_free), A, at free voltages s (V); ``known``: a colour's
        inflow at s, already computed, ``proven``: that colour's residual known to be within
        tolerance, not evaluated (:func:`~analog_ep.emulator.operators.residual`)."""
        return residual(self.cc, self.ops, s, self.u, fused=self.fused, known=known, proven=proven)

    def converged(self, r: torch.Tensor) -> bool:
        """Whether every node's residual is within its tolerance (NaN is not). As the largest
        excess over it: a third of the time of comparing element by element and reducing the
        booleans (those two take slow paths in torch on the CPU)."""
        return not r.numel() or bool((r.abs() - self.tol).amax() <= 0)


@dataclass
class Outcome:
    """What a kernel returns: the final state s (V), its residual r (A; None if the kernel
    did not evaluate it), whether it converged and the iterations it took; a multi-stage
    kernel adds the iterations of each stage and a label of the stages that ran (e.g.
    "bcd+newton"), and a kernel that did not converge a one-line hint of what to do."""

    s: torch.Tensor
    r: torch.Tensor | None
    converged: bool
    iterations: int
    stages: dict[str, int] = field(default_factory=dict)
    label: str = ""
    hint: str = ""


Kernel = Callable[..., Outcome]  # kernel(problem, s0, max_iters, **options) -> Outcome


@dataclass(frozen=True)
class Solver:
    """A registered method: its kernel and its options with their defaults."""

    name: str
    kernel: Kernel
    defaults: dict[str, Any]

    def options(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """The defaults updated with ``given``; a ValueError for an unknown option or a
        missing required one, naming the method and its valid options."""
        given = dict(given or {})
        valid = ", ".join(sorted(self.defaults)) or "none"
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown option(s) {', '.join(unknown)}; valid options: {valid}")
        merged = {**self.defaults, **given}
        missing = sorted(k for k, v in merged.items() if v is REQUIRED)
        if missing:
            raise ValueError(f"method {self.name!r} needs option(s) {', '.join(missing)}; valid options: {valid}")
        return merged

    def __call__(self, problem: Problem, s: torch.Tensor, max_iters: int, options: dict[str, Any]) -> Outcome:
        """Run the kernel with already checked ``options``."""
        return self.kernel(problem, s, max_iters, **options)


SOLVERS: dict[str, Solver] = {}


def register(name: str, **defaults: Any) -> Callable[[Kernel], Kernel]:
    """Decorator: register a kernel as method ``name`` with its options' defaults."""

    def add(kernel: Kernel) -> Kernel:
        SOLVERS[name] = Solver(name, kernel, defaults)
        return kernel

    return add


def get_solver(method: str) -> Solver:
    """The registered solver ``method``; a ValueError naming the registered ones otherwise."""
    if method not in SOLVERS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(sorted(SOLVERS))}")
    return SOLVERS[method]


def _clip_to_clamps(x: torch.Tensor, loc: torch.Tensor, k: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Project x onto its ideal clamps: each clamp's v = k·x[loc] + w must stay <= 0, a bound
    on x[loc] (upper for k > 0, lower for k < 0). Exact for a 1-D convex problem."""
    bound = -w / k
    inf = torch.full_like(x, float("inf"))
    idx = loc.expand_as(bound)
    hi = inf.scatter_reduce(1, idx, torch.where(k > 0, bound, float("inf")), "amin")
    lo = (-inf).scatter_reduce(1, idx, torch.where(k < 0, bound, -float("inf")), "amax")
    return torch.minimum(torch.maximum(x, lo), hi)


def _limit_step(step: torch.Tensor, loc: torch.Tensor, k: torch.Tensor, rise: torch.Tensor) -> torch.Tensor:
    """Clip each node's step so that none of its diodes' voltages (v = k·x + w) rises by more
    than ``rise``·|k|; falling is never limited."""
    inf = torch.full_like(step, float("inf"))
    idx = loc.expand_as(rise)
    hi = inf.scatter_reduce(1, idx, torch.where(k > 0, rise, float("inf")), "amin")
    lo = (-inf).scatter_reduce(1, idx, torch.where(k < 0, -rise, -float("inf")), "amax")
    return torch.minimum(torch.maximum(step, lo), hi)


_ALL_AT_ONCE = 4096  # a fused Newton on at most this many nodes (B·n_c) runs all its steps in one kernel call


def _slot_newton(sl: Slots, w: torch.Tensor, x: torch.Tensor, Dc: torch.Tensor, f: torch.Tensor,
                 inner: int, tol: torch.Tensor, restart: bool, fused: bool) -> tuple[torch.Tensor, bool, bool]:
    """Up to ``inner`` safeguarded Newton steps on each node's convex 1-D problem
    min ½ D x² − f x + Σ co-content(w + κ x), from x (B, n_c), V; w (B, k, n_c) are the fixed
    parts of its diodes' voltages (V), D (S) and f (A) its conductance and inflow, ``tol`` its
    tolerance (A). With ``restart`` (a settle's first sweep: its start may be the linear first
    guess, far into forward bias), a start beyond a diode's knee restarts at the knee; rises
    are limited by :func:`_allowed_rise`; the steps end once :func:`_step_flags` allows it
    (every node's step small, or its residual bounded to a tenth of its tolerance: one step
    where the start was warm). ``fused``: compiled (:func:`_slot_newton_steps`), one kernel
    call per step; a colour of at most ``_ALL_AT_ONCE`` nodes over the batch (an output
    layer), where a kernel call costs more than its steps, runs all ``inner`` of them in one
    call that keeps what the steps up to the first that may end give (the same result as
    stepping one by one). Returns x, whether the steps ended there and whether they prove the
    residual at x within tolerance (:func:`_step_flags`)."""
    taken, done, proven = 0, False, False
    if fused:
        at_once = x.numel() <= _ALL_AT_ONCE
        first = inner if at_once else 1
        x, flags = _slot_newton_steps(sl, w, x, Dc, f, tol, first, restart, at_once, fused=True)
        (done, proven), taken = flags.tolist(), first
    elif restart:
        x = _knee_start(sl, w, x)
    while not done and taken < inner:
        x, flags = _slot_newton_steps(sl, w, x, Dc, f, tol, 1, False, False, fused=fused)
        (done, proven), taken = flags.tolist(), taken + 1
    return x, done, proven


@fusable
def _slot_newton_steps(sl: Slots, w: torch.Tensor, x: torch.Tensor, Dc: torch.Tensor, f: torch.Tensor,
                       tol: torch.Tensor, steps: int, restart: bool,
                       until_small: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` steps of :func:`_slot_newton` (after the knee start, with ``restart``) with
    no test between them, so that compiled they are one kernel: the new x (B, n_c), V, and
    the (2,) bools of :func:`_step_flags` for the last step: whether the steps may end there
    and whether they prove the residual at the new x within tolerance. With ``until_small``,
    the steps after the first that may end are not kept: x and the flags are those of that
    step."""
    if restart:
        x = _knee_start(sl, w, x)
    flags = torch.zeros(2, dtype=torch.bool, device=x.device)
    done = flags[0]  # with until_small: whether a step has ended the steps
    for _ in range(steps):
        moved, step, hess, curv, span = _slot_newton_step(sl, w, x, Dc, f)
        now = _step_flags(step, hess, curv, span, tol, moved)
        if until_small:
            x, flags, done = torch.where(done, x, moved), torch.where(done, flags, now), done | now[0]
        else:
            x, flags = moved, now
    return x, flags


def _knee_start(sl: Slots, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x (B, n_c), V, brought back to no further into forward bias than any diode's knee."""
    knee = [-(sl.fixed(w, g) - sl.part("vcrit", g)) * sl.part("inv_kap", g) for g in sl.groups()]
    return sl.bounds(x, knee, knee)


def _slot_newton_step(sl: Slots, w: torch.Tensor, x: torch.Tensor, Dc: torch.Tensor, f: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of :func:`_slot_newton`: the new x (B, n_c), V, the step taken (V), the Hessian
    (S) it was taken with, and what :func:`_step_flags` needs to bound the residual at the new
    x: the diodes' curvature Σ |κ|³ I′/(N V_T) (S/V) at the old x, and the span (V): the
    longest move of x over which every diode's I′ grows by at most e^(4/3·|κ|·move/(N V_T)),
    the least over the node's diodes of N V_T/|κ| and, where a diode can break down, of its
    distance |v + xbv|/|κ| to the breakdown voltage (I′ jumps there)."""
    groups, per_group = sl.groups(), sl.currents(w, x)
    kap = [sl.part("kap", g) for g in groups]
    grad = sl.add(Dc * x - f, [k * i for k, (_, i, _) in zip(kap, per_group)])
    hess = sl.add(Dc.expand_as(x), [k * k * di for k, (_, _, di) in zip(kap, per_group)])
    step = -grad / hess
    rise = [_allowed_rise(v, sl.part("vcrit", g), sl.part("nvt", g), k * sl.at(step, g), sl.part("inv_nvt", g))
            * sl.part("inv_akap", g) for g, k, (v, _, _) in zip(groups, kap, per_group)]
    step = sl.bounds(step, rise, [-r for r in rise])
    curv = sl.add(torch.zeros_like(x), [k.abs() * k * k * di * sl.part("inv_nvt", g)
                                        for g, k, (_, _, di) in zip(groups, kap, per_group)])
    span = sl.step_cap.expand_as(x)
    if sl.xbv is not None:  # the distance to the nearest breakdown voltage, where shorter
        gaps = [(v + sl.part("xbv", g)).abs() / k.abs() for g, k, (v, _, _) in zip(groups, kap, per_group)]  # inf: padding
        span = sl.nearest(span, gaps)
    return x + step, step, hess, curv, span


def _step_small(step: torch.Tensor, hess: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """Node by node, whether a Newton step (V) moved the node's current, hess·|step| (S·V), by
    at most a tenth of its tolerance (A): its remaining error is then of second order, and
    further steps within this sweep change nothing the stopping rule can see."""
    return hess * step.abs() <= 0.1 * tol


def _step_flags(step: torch.Tensor, hess: torch.Tensor, curv: torch.Tensor, span: torch.Tensor, tol: torch.Tensor,
                x: torch.Tensor) -> torch.Tensor:
    """Whether node-wise Newton steps may end, and whether they prove the KCL residual at the
    new x (B, n_c), V, within tolerance: (2,) bools, from the step h (V), the Hessian H (S),
    the curvature c (S/V) and the span (V) of :func:`_slot_newton_step`, and the tolerance
    ``tol`` (A).

    Where the move is within the span, no rise limit acted (that needs |κ h| ≥ 2 N V_T), so h
    is the Newton step −r_old/H, and x = x_old + h + δ with δ the rounding of x (|δ| ≤ ε|x|):
    r(x) = (r_old + H h) + ∫ (r′ − H) over the move, whose length is at most m = |h| + ε|x|,
    and the first term is the rounding of h, at most ε H |h|. Over the move each diode's I′
    grows by at most e^a, a = 4/3·|κ|·m/(N V_T) (I″/I′ is 1/(N V_T) on the exponential
    branches and 4/|v| ≤ 4/(3 N V_T) on the reverse cubic, and I′ is continuous where they
    meet). Two bounds on |r(x)| follow:

    * linear: e^(4/3)·H·m ≤ 0.38·tol where H·m ≤ 0.1·tol and m ≤ span;
    * quadratic (Newton's): ε H (|h| + |x|) + (e − 1)·4/3·m²·c, with e^a − 1 ≤ (e − 1)·a
      for a ≤ 1 (m ≤ ¾ span) and c = Σ |κ|³ I′/(N V_T) at x_old. A node where this is at
      most 0.1·tol is settled: one step settles it wherever its diodes are off or the step
      is short, as in a warm-started sweep.

    Flag 0 (the steps may end): every node is settled or its step moved its current by at
    most a tenth of its tolerance (:func:`_step_small`). Flag 1 (the residual is proven within
    tolerance, and a check need not evaluate it): every node is settled or meets the linear
    bound."""
    eps = torch.finfo(x.dtype).eps
    moved = step.abs() + eps * x.abs()
    quadratic = hess * eps * (step.abs() + x.abs()) + (4.0 / 3.0 * (math.e - 1.0)) * moved * moved * curv
    settled = (quadratic <= 0.1 * tol) & (moved <= 0.75 * span)
    linear = (hess * moved <= 0.1 * tol) & (moved <= span)
    return torch.stack([(settled | _step_small(step, hess, tol)).all(), (settled | linear).all()])


def _allowed_rise(vd: torch.Tensor, vcrit: torch.Tensor, nvt: torch.Tensor, proposed: torch.Tensor,
                  inv_nvt: torch.Tensor | None = None) -> torch.Tensor:
    """How far (V) a Newton step may raise each diode's voltage vd (V), given the ``proposed``
    rise (V): freely up to the knee vcrit, then by max(2, ln(1 + excess/(n V_T)))·n V_T —
    SPICE's junction limiting (pnjlim), which takes a far forward Newton target back to the
    logarithm of the current it asks for. A fall is never limited. ``inv_nvt`` = 1/(n V_T)
    where the caller has it (multiplied instead of divided per element). The logarithm only
    counts beyond an excess of e² − 1 ≈ 6.4 n V_T, where ln(1 + y) needs no log1p."""
    free = torch.clamp(vcrit - vd, min=0.0)
    excess = torch.clamp(proposed - free, min=0.0) * (1.0 / nvt if inv_nvt is None else inv_nvt)
    return free + nvt * torch.clamp(torch.log(1.0 + excess), min=2.0)


def _bcd_sweep(cc: Compiled, ops: Operators, s: torch.Tensor, inner: int, tol: torch.Tensor,
               restart: bool, fused: bool = False) -> tuple[torch.Tensor, tuple[int, torch.Tensor], bool, bool]:
    """One sweep over the colours, updating s (B, n_free), V, in place: each colour's nodes set
    to their exact optimum given the others (weighted mean, then up to ``inner`` safeguarded
    Newton steps for Shockley diodes, then the ideal clamps' clip); ``tol`` (B, n_free), A, is
    the settle's tolerance; with ``restart`` (the first sweep), Newton starts no further into
    forward bias than the knee; ``fused``: the node-by-node Newton's steps as compiled kernels.
    Returns s, (the last colour, its inflow, A), which is still its inflow at the new s,
    whether the last colour's Newton steps ended before running out (:func:`_step_flags`,
    or small steps on the gathered layout: :func:`_step_small`; True without Shockley diodes),
    and whether they prove its residual within tolerance (:func:`_step_flags`: node-by-node
    Newton alone, no ideal clamp clipping after it)."""
    dio = ops.dio
    for c, colour in enumerate(ops.M.cols):
        small, proven = True, False
        f = inflow(ops, s, c, colour)
        Dc = ops.D[:, colour]
        shock, clamps = dio.by_colour[c]
        slots = dio.slots[c]
        if (shock.d.numel() and slots is None) or clamps.d.numel():
            v = dio.voltages(s)
        if slots is not None:  # the same Newton, on the node-by-node layout
            x, small, proven = _slot_newton(slots, dio.fixed_slots[c], s[:, colour], Dc, f, inner, tol[:, colour],
                                            restart, fused)
        elif shock.d.numel():  # warm-started, step-limited Newton on each node's convex 1-D problem
            w = v[:, shock.d] - shock.kap * s[:, shock.root]  # the part not set by this node
            IS, nvt, vcrit = dio.IS[shock.d], dio.nvt[shock.d], dio.vcrit[shock.d]
            xbv = None if dio.xbv is None else dio.xbv[shock.d]
            x = s[:, colour]
            if restart:  # the start may be far into forward bias (the linear first guess)
                x = _clip_to_clamps(x, shock.loc, shock.kap, w - vcrit)
            akap, small = shock.kap.abs(), False
            for _ in range(inner):
                vd = w + shock.kap * x[:, shock.loc]
                i, di = diode_iv(vd, IS, nvt, xbv)
                grad = (Dc * x - f).index_add(1, shock.loc, shock.kap * i)
                hess = Dc.expand_as(x).index_add(1, shock.loc, shock.kap * shock.kap * di)
                step = -grad / hess
                rise = _allowed_rise(vd, vcrit, nvt, shock.kap * step[:, shock.loc]) / akap
                step = _limit_step(step, shock.loc, shock.kap, rise)
                x = x + step
                small = bool(_step_small(step, hess, tol[:, colour]).all())
                if small:
                    break
        else:  # no Shockley diode: the conductance-weighted mean is exact
            x = f / Dc
        if clamps.d.numel():
            w = v[:, clamps.d] - clamps.kap * s[:, clamps.root]
            x, proven = _clip_to_clamps(x, clamps.loc, clamps.kap, w), False
        set_columns_(s, colour, x)
    return s, (c, f), small, proven


_BCD_HINT = "use method='auto' (a Newton finish where BCD stalls) or raise max_iters"


def _bcd_run(problem: Problem, s: torch.Tensor, max_iters: int, inner: int, check_every: int,
             stall: tuple[int, float] | None = None) -> tuple[Outcome, bool]:
    """BCD sweeps on a copy of s until the residual (checked every ``check_every`` sweeps and
    after the last) is within tolerance, at most ``max_iters``. With ``stall`` = (window, drop): also stop,
    reporting a stall, at a check where the worst residual-to-tolerance ratio max_i |r_i|/tol_i
    has fallen by less than a factor ``drop`` since the last check at least ``window`` sweeps
    earlier. The sweeps and checks are the same with or without it. The first sweep is not
    checked where its last colour's Newton steps ran out (it started from the first
    guess and ran out of steps: its residual is above tolerance but for a fluke, and the next
    check decides; a check costs about a sweep of the largest colour). A check does not
    evaluate the last colour's residual where its last Newton step proves it within tolerance
    (:func:`_step_flags`); the outcome then carries no residual (the settle works it out if
    asked)."""
    it, r, s = 0, None, s.clone()  # the sweeps update it in place
    whole = True  # whether r is the whole residual (not where a colour was proven)
    history: deque[tuple[int, float]] = deque()  # (sweep, ratio) of the checks
    while it < max_iters:
        s, last, small, proven = _bcd_sweep(problem.cc, problem.ops, s, inner, problem.tol, restart=it == 0,
                                            fused=problem.fused)
        it += 1
        if (it % check_every == 0 and (small or it > 1)) or it == max_iters:
            r, whole = problem.residual(s, known=last, proven=proven), not proven
            if problem.converged(r):
                return Outcome(s, r if whole else None, True, it), False
            if stall is not None:
                window, drop = stall
                ratio = float((r.abs() / problem.tol).max())
                while len(history) > 1 and history[1][0] <= it - window:
                    history.popleft()
                if history and history[0][0] <= it - window and ratio * drop > history[0][1]:
                    return Outcome(s, r if whole else None, False, it), True
                history.append((it, ratio))
    return Outcome(s, r if whole else None, False, it, hint=_BCD_HINT), False


@register("bcd", inner=4, check_every=1)
def bcd(problem: Problem, s: torch.Tensor, max_iters: int, *, inner: int, check_every: int) -> Outcome:
    """Exact block coordinate descent: sweeps until the residual (checked every
    ``check_every`` sweeps and after the last) is within tolerance, at most ``max_iters``;
    each node's scalar Newton takes at most ``inner`` steps per sweep."""
    return _bcd_run(problem, s, max_iters, inner, check_every)[0]


def _newton_direction(problem: Problem, s: torch.Tensor, r: torch.Tensor, active: torch.Tensor,
                      dense_max: int) -> torch.Tensor:
    """H⁻¹ r (V) for each sample, with H the Hessian (S) at s and r the residual (A), in
    float64 whatever the circuit's dtype: a batched dense solve up to ``dense_max`` free nodes,
    beyond that a sparse LU (scipy's SuperLU, on the CPU) of each ``active`` sample (the others
    get 0)."""
    n = s.shape[1]
    if n <= dense_max:
        H = hessian(problem.ops, s, torch.float64)
        return torch.linalg.solve(H, r.double().unsqueeze(-1)).squeeze(-1).to(s.dtype)
    rows, cols, vals = (x.cpu().double().numpy() for x in hessian_entries(problem.ops, s))
    rhs = r.cpu().double().numpy()
    out = np.zeros_like(rhs)
    for b in np.flatnonzero(active.cpu().numpy()):
        H = scipy.sparse.csc_matrix((vals[b], (rows, cols)), shape=(n, n))  # duplicates summed
        out[b] = scipy.sparse.linalg.spsolve(H, rhs[b])
    return torch.as_tensor(out, dtype=s.dtype, device=s.device)


def _newton_step(problem: Problem, s: torch.Tensor, r: torch.Tensor, done: torch.Tensor,
                 dense_max: int) -> tuple[torch.Tensor, bool]:
    """One damped Newton step on the whole free vector of each sample not ``done``,
    backtracking on the energy (convex). Also whether the backtracking failed for some
    sample (no step reduces its energy or halves its residual: a rounding floor)."""
    cc, u, beta, target = problem.cc, problem.u, problem.beta, problem.target
    step = -_newton_direction(problem, s, r, ~done, dense_max)
    step = torch.where(done[:, None], torch.zeros_like(step), step)
    e0 = energy(cc, s, u, beta=beta, target=target)
    slope = (r * step).sum(1)
    r0 = r.abs().amax(1)
    t = torch.ones(s.shape[0], 1, dtype=s.dtype, device=s.device)
    good = done
    for _ in range(60):
        trial = s + t * step
        e1 = energy(cc, trial, u, beta=beta, target=target)
        # near the minimum energy differences drown in rounding: a smaller residual is progress too
        good = done | (e1 <= e0 + 1e-4 * t[:, 0] * slope) | (problem.residual(trial).abs().amax(1) < 0.5 * r0)
        if bool(good.all()):
            break
        t = torch.where(good[:, None], t, t / 2)
    return s + t * step, not bool(good.all())


_NEWTON_PATIENCE = 10  # Newton steps without halving the worst residual-to-tolerance ratio before giving up
_FLOOR_HINT = "Newton cannot reduce the residual further (rounding): loosen rtol or use float64"


def _newton_run(problem: Problem, s: torch.Tensor, max_iters: int, dense_max: int) -> Outcome:
    """Damped Newton steps until every sample's residual is within tolerance (converged
    samples are left as they are), at most ``max_iters``. It gives up at a rounding floor: when
    a step's backtracking fails, or when the worst residual-to-tolerance ratio has not halved
    in 10 steps."""
    it, r = 0, problem.residual(s)
    best, since = float("inf"), 0
    while True:
        done = (r.abs() <= problem.tol).all(1)
        if bool(done.all()):
            return Outcome(s, r, True, it)
        ratio = float((r.abs() / problem.tol).max())
        best, since = (ratio, 0) if ratio < best / 2 else (best, since + 1)
        if since >= _NEWTON_PATIENCE:
            return Outcome(s, r, False, it, hint=_FLOOR_HINT)
        if it >= max_iters:
            return Outcome(s, r, False, it, hint="raise max_iters")
        s, stuck = _newton_step(problem, s, r, done, dense_max)
        it += 1
        r = problem.residual(s)
        if stuck and not problem.converged(r):
            return Outcome(s, r, False, it, hint=_FLOOR_HINT)


@register("newton", dense_max=512)
def newton(problem: Problem, s: torch.Tensor, max_iters: int, *, dense_max: int) -> Outcome:
    """Damped Newton, at most ``max_iters`` steps: the dense Hessian (n_free² per sample) up
    to ``dense_max`` free nodes, a sparse LU beyond. Shockley diodes only (ideal clamps: a
    ValueError)."""
    return _newton_run(problem, s, max_iters, dense_max)


@register("auto", inner=4, check_every=1, stall_window=10, stall_drop=10.0, dense_max=512)
def auto(problem: Problem, s: torch.Tensor, max_iters: int, *, inner: int, check_every: int, stall_window: int,
         stall_drop: float, dense_max: int) -> Outcome:
    """BCD while it makes progress, then Newton. BCD runs as method "bcd" does (same sweeps,
    same result when it converges without stalling: the usual case, a few sweeps); it has
    stalled when the worst residual-to-tolerance ratio max_i |r_i|/tol_i has fallen by less
    than ``stall_drop`` over the last ``stall_window`` sweeps (stiff circuits: diodes with
    series resistance, strongly conducting diodes between free nodes). Newton then finishes
    (dense up to ``dense_max`` free nodes, sparse LU beyond), within what is left of
    ``max_iters``. Circuits with ideal clamps (a projection, no Hessian) stay on BCD."""
    clamps = bool(problem.ops.dio.ideal.any())
    first, stalled = _bcd_run(problem, s, max_iters, inner, check_every,
                              None if clamps else (stall_window, stall_drop))
    if not stalled:
        hint = "ideal clamps keep auto on BCD: raise max_iters or loosen rtol" if clamps else "raise max_iters"
        return Outcome(first.s, first.r, first.converged, first.iterations, {"bcd": first.iterations}, "bcd",
                       "" if first.converged else hint)
    last = _newton_run(problem, first.s, max_iters - first.iterations, dense_max)
    return Outcome(last.s, last.r, last.converged, first.iterations + last.iterations,
                   {"bcd": first.iterations, "newton": last.iterations}, "bcd+newton", last.hint)


def _transient_step(problem: Problem, s: torch.Tensor, dt: float, cap: torch.Tensor, temperature: float,
                    generator: torch.Generator | None) -> torch.Tensor:
    """One linearly implicit Euler step of C ds/dt = −r(s) (+ Johnson noise currents)."""
    ops = problem.ops
    r = problem.residual(s)
    h = ops.D.expand_as(s)
    dio = ops.dio
    if dio.shock.d.numel():
        _, di = diode_iv(dio.voltages(s), dio.IS, dio.nvt, dio.xbv)
        h = h.index_add(1, dio.shock.root, dio.shock.kap ** 2 * di[:, dio.shock.d])
    q = -dt * r
    if temperature > 0:  # charge noise per step: each conductance g adds current noise of PSD 2kTg... ×2 sides
        kT = BOLTZMANN * temperature
        ra, rb, ga, gb, g = ops.ff()
        noise = torch.randn(s.shape, generator=generator, dtype=s.dtype, device=s.device) * torch.sqrt(2 * kT * ops.D_fixed * dt)
        if g.numel():
            xi = torch.randn((s.shape[0], g.numel()), generator=generator, dtype=s.dtype, device=s.device)
            i = xi * torch.sqrt(2 * kT * g * dt)
            noise = noise.index_add(1, ra, ga * i).index_add(1, rb, -gb * i)
        q = q + noise
    s = s + q / (cap + dt * h)
    if dio.clamps.d.numel():  # ideal clamps: project onto the bounds
        w = dio.voltages(s)[:, dio.clamps.d] - dio.clamps.kap * s[:, dio.clamps.root]
        s = _clip_to_clamps(s, dio.clamps.root, dio.clamps.kap, w)
    return s


@register("transient", dt=REQUIRED, duration=REQUIRED, capacitance=1e-12, temperature=0.0, generator=None)
def transient(problem: Problem, s: torch.Tensor, max_iters: int, *, dt: float, duration: float,
              capacitance: float | torch.Tensor, temperature: float, generator: torch.Generator | None) -> Outcome:
    """round(duration / dt) implicit Euler steps (dt, duration in s; node capacitance in F;
    Johnson noise at ``temperature`` in K), whatever ``max_iters``; converged if the final
    residual is within tolerance."""
    cc = problem.cc
    cap = torch.as_tensor(capacitance, dtype=cc.dtype, device=cc.device)
    steps = max(1, int(round(duration / dt)))
    for _ in range(steps):
        s = _transient_step(problem, s, dt, cap, temperature, generator)
    r = problem.residual(s)
    return Outcome(s, r, problem.converged(r), steps, hint="lengthen duration (or settle with method='auto')")

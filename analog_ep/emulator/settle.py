"""Steady state of a compiled circuit: the energy minimum = the DC operating point.

``settle(cc, u, method=...)`` in the manner of ``odeint``: one entry point, solvers by name,
tolerances explicit, and a result that always says how converged it is.

* ``bcd`` — exact block coordinate descent over a colouring of the free nodes (a layered net:
  even/odd layers). Nodes of one colour do not interact, so each is set to its exact optimum
  given the others: the conductance-weighted mean of its neighbours and sources, then a
  safeguarded scalar Newton for Shockley diodes, then a clip for ideal clamps.
* ``transient`` — the physical dynamics C dV/dt = −∂E/∂V (linearly implicit Euler), for finite
  settling times, optionally with Johnson noise of every conductance at temperature T.

The KCL residual is the energy gradient r = ∂E/∂s (amperes per free node); a settle has
converged when |r_i| ≤ atol + rtol · D_i · V_scale for every node, where D_i is the node's total
conductance and V_scale the largest source voltage: rtol is a relative voltage error.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from ..circuit.constants import BOLTZMANN
from .compiled import Compiled

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
_EXP_MAX = 40.0  # diode exponent beyond which the I-V curve is continued linearly in Newton


class ConvergenceError(RuntimeError):
    """A settle stopped before its tolerance; the partial result is attached."""

    def __init__(self, message: str, result: "SettleResult"):
        super().__init__(message)
        self.result = result


@dataclass
class SettleResult:
    s: torch.Tensor  # free node voltages (B, n_free)
    u: torch.Tensor  # source voltages (B, n_src)
    residual: float  # max |KCL residual| over nodes and samples, amperes
    rel_residual: float  # max |r_i| / (D_i V_scale)
    iterations: int
    converged: bool
    method: str
    seconds: float
    cc: Compiled

    @property
    def V(self) -> torch.Tensor:
        """All node voltages (B, n_nodes) in the compiled circuit's node order (which adds the
        internal nodes of diodes with series resistance at the end)."""
        return self.cc.voltages(self.s, self.u)

    def voltages_of(self, names) -> torch.Tensor:
        """Voltages (B, len(names)) of the named nodes."""
        nodes = self.cc.circuit.nodes
        return self.V[:, [nodes.index(n) for n in names]]


@dataclass
class _Ops:
    D: torch.Tensor  # (B or 1, n_free) total conductance seen by each free root
    f_fixed: torch.Tensor  # (B, n_free) current from sources through conductances (+ injections)
    M: "_Coupling"  # positive coupling weights between free roots
    ff: Callable[[], tuple]  # (ra, rb, γa, γb, g) of free-free elements, for Johnson noise (built on demand)
    D_fixed: torch.Tensor  # (B or 1, n_free) conductance to fixed nodes, for Johnson noise
    dio: "_Diodes"


@dataclass
class _Incidences:
    """Diode terminals on free roots: diode d's voltage depends on s[root] with coefficient κ."""

    d: torch.Tensor
    root: torch.Tensor
    kap: torch.Tensor
    loc: torch.Tensor | None = None  # position of root within a colour (per-colour subsets only)

    def subset(self, mask: torch.Tensor, pos: torch.Tensor | None = None) -> "_Incidences":
        root = self.root[mask]
        return _Incidences(self.d[mask], root, self.kap[mask], None if pos is None else pos[root])


@dataclass
class _Diodes:
    """All diodes of a settle, concatenated: parameters, the part of each diode voltage fixed
    by the sources (constant during the settle) and the incidences on free roots, overall
    and per colour (Shockley and ideal apart), so sweeps never gather every node voltage."""

    IS: torch.Tensor
    nvt: torch.Tensor
    vcrit: torch.Tensor  # n V_T ln(n V_T / (√2 IS)): above it Newton steps are limited, as in SPICE
    ideal: torch.Tensor  # (n_d,) bool
    v_fixed: torch.Tensor  # (B, n_d)
    inc: _Incidences
    shock: _Incidences
    clamps: _Incidences
    by_colour: list[tuple[_Incidences, _Incidences]]  # (Shockley, ideal) incidences of each colour

    def voltages(self, s: torch.Tensor) -> torch.Tensor:
        """Diode voltages (B, n_d) at free voltages s."""
        return self.v_fixed.index_add(1, self.inc.d, self.inc.kap * s[:, self.inc.root])


def _csr(rows, cols, vals, shape):
    """Sparse CSR matrix from COO triplets (duplicates summed)."""
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, shape, check_invariants=False)
    return coo.coalesce().to_sparse_csr()


@dataclass
class _Static:
    """The parts of the operators that depend on the parameters only: built once and reused
    by every settle until a parameter tensor changes (training updates bump its version)."""

    D: torch.Tensor  # (n_free,) total conductance seen by each free root
    D_fix: torch.Tensor  # (n_free,) its part towards fixed nodes (Johnson noise)
    K: torch.Tensor  # (n_src + 1, n_free): f_fixed = [u | 0] @ K + f_const
    f_const: torch.Tensor  # (n_free,) injected currents
    M: "_Coupling"
    ff: Callable[[], tuple]
    dio: _Diodes  # with an empty v_fixed
    dio_fixed: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (diode, ext index, κ) of fixed terminals
    gain: torch.Tensor
    offset: torch.Tensor | None  # node offsets from amplifier offset voltages (device models)
    dio_offset: torch.Tensor | None  # their part of each diode's voltage


def _static(cc: Compiled) -> _Static:
    key = tuple((k, id(v), v._version) for k, v in cc.params.items() if k != "u")
    cached = cc.cache.get("static")
    if cached is not None and cached[0] == key:
        return cached[1]
    nf, ns, p, dev, dt = cc.n_free, cc.n_src, cc.params, cc.device, cc.dtype
    gain = cc.node_gain()
    root = cc.root
    D = torch.zeros(nf, dtype=dt, device=dev)
    D_fix = torch.zeros(nf, dtype=dt, device=dev)
    K = torch.zeros(ns + 1, nf, dtype=dt, device=dev)
    R, C, W = [], [], []
    ffa, ffb, ffga, ffgb, ffg = [], [], [], [], []
    dense, dense_ff = [], []
    positions = []  # per colour: each root's position within it (−1: another colour)
    for colour in cc.colours:
        pos = torch.full((nf,), -1, dtype=torch.long, device=dev)
        pos[colour] = torch.arange(colour.numel(), device=dev)
        positions.append(pos)
    for blk in cc.blocks:
        g = p[blk.name]
        ra, rb, ga, gb = root[blk.a], root[blk.b], gain[blk.a], gain[blk.b]
        if blk.dense and bool((ra < nf).all()) != bool((rb < nf).all()):
            _add_dense_to_fixed(D, D_fix, K, nf, ra, rb, ga, gb, g)
            continue
        if blk.dense and _layer_block(positions, nf, ra, rb):  # two free layers: kept dense
            D.index_add_(0, ra, ga * ga * g.sum(1))
            D.index_add_(0, rb, gb * gb * g.sum(0))
            dense.append((ra, rb, g * ga[:, None] * gb[None, :]))
            dense_ff.append((ra, rb, ga, gb, g))
            continue
        if blk.dense:  # homogeneous: every row (column) free, or every row (column) fixed
            ra, rb = ra[:, None].expand_as(g), rb[None, :].expand_as(g)
            ga, gb = ga[:, None].expand_as(g), gb[None, :].expand_as(g)
        ra, rb, ga, gb, g = ra.reshape(-1), rb.reshape(-1), ga.reshape(-1), gb.reshape(-1), g.reshape(-1)
        fa, fb = ra < nf, rb < nf
        both = fa & fb
        same = both & (ra == rb)
        pair = both & ~same
        D.index_add_(0, ra[fa], (ga * ga * g)[fa])
        D.index_add_(0, rb[fb], (gb * gb * g)[fb])
        if same.any():  # an element between a node and its own amplified copy
            D.index_add_(0, ra[same], (-2 * ga * gb * g)[same])
        w = ga * gb * g
        R += [ra[pair], rb[pair]]
        C += [rb[pair], ra[pair]]
        W += [w[pair], w[pair]]
        ffa.append(ra[pair]), ffb.append(rb[pair]), ffga.append(ga[pair]), ffgb.append(gb[pair]), ffg.append(g[pair])
        oa, ob = fa & ~fb, fb & ~fa
        K.index_put_((rb[oa] - nf, ra[oa]), w[oa], accumulate=True)
        K.index_put_((ra[ob] - nf, rb[ob]), w[ob], accumulate=True)
        D_fix.index_add_(0, ra[oa], (ga * ga * g)[oa])
        D_fix.index_add_(0, rb[ob], (gb * gb * g)[ob])
    f_const = torch.zeros(nf, dtype=dt, device=dev)
    for node, key_i in cc.currents:
        r = root[node]
        m = r < nf
        f_const.index_add_(0, r[m], (gain[node] * p[key_i])[m])
    offset = cc.node_offset()
    if offset is not None:
        _add_offset_currents(cc, f_const, gain, offset)
    cat = lambda xs, dtype=dt: torch.cat(xs) if xs else torch.zeros(0, dtype=dtype, device=dev)
    rows, cols, vals = cat(R, torch.long), cat(C, torch.long), cat(W)
    M_rows = []
    for colour, pos in zip(cc.colours, positions):
        keep = pos[rows] >= 0
        M_rows.append(_csr(pos[rows[keep]], cols[keep], vals[keep], (colour.numel(), nf)))
    M = _Coupling(_csr(rows, cols, vals, (nf, nf)), M_rows, dense, positions)

    def ff():
        """Free-free elements one by one (dense layer blocks expanded only here)."""
        parts = list(zip(ffa, ffb, ffga, ffgb, ffg))
        for ra, rb, ga, gb, g in dense_ff:
            parts.append((ra[:, None].expand_as(g).reshape(-1), rb[None, :].expand_as(g).reshape(-1),
                          ga[:, None].expand_as(g).reshape(-1), gb[None, :].expand_as(g).reshape(-1), g.reshape(-1)))
        return tuple(cat([q[i] for q in parts], torch.long if i < 2 else dt) for i in range(5))

    dio, dio_fixed = _diodes(cc, gain, positions)
    dio_offset = None
    if offset is not None and cc.diodes:
        dio_offset = torch.cat([offset[d.anode] - offset[d.cathode] for d in cc.diodes])
    static = _Static(D, D_fix, K, f_const, M, ff, dio, dio_fixed, gain, offset, dio_offset)
    cc.cache["static"] = (key, static)
    return static


def _layer_block(positions: list[torch.Tensor], nf: int, ra: torch.Tensor, rb: torch.Tensor) -> bool:
    """Whether a dense block joins two free layers (rows all of one colour, columns all of
    another): then its couplings stay a dense matrix instead of m×n sparse entries."""
    if not (bool((ra < nf).all()) and bool((rb < nf).all())):
        return False
    in_colour = lambda r: [bool((pos[r] >= 0).all()) for pos in positions]
    a, b = in_colour(ra), in_colour(rb)
    return any(a) and any(b) and a != b


@dataclass
class _Coupling:
    """M: the positive couplings between free roots, M s being the current each root receives
    from the other free roots — sparse entries plus dense blocks between two free layers."""

    csr: torch.Tensor  # sparse CSR (n_free, n_free)
    csr_rows: list[torch.Tensor]  # per colour: its CSR rows
    dense: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (row roots, column roots, W)
    positions: list[torch.Tensor]  # per colour: position of each root within it (−1: other colours)

    def __matmul__(self, s: torch.Tensor) -> torch.Tensor:
        """M s for a batch s (B, n_free)."""
        out = (self.csr @ s.T).T
        for ra, rb, W in self.dense:
            out = out.index_add(1, ra, s[:, rb] @ W.T).index_add(1, rb, s[:, ra] @ W)
        return out

    def rows(self, c: int, s: torch.Tensor) -> torch.Tensor:
        """The rows of M s that belong to colour c."""
        out = (self.csr_rows[c] @ s.T).T
        pos = self.positions[c]
        for ra, rb, W in self.dense:
            if int(pos[ra[0]]) >= 0:
                out = out.index_add(1, pos[ra], s[:, rb] @ W.T)
            elif int(pos[rb[0]]) >= 0:
                out = out.index_add(1, pos[rb], s[:, ra] @ W)
        return out

    def to_dense(self) -> torch.Tensor:
        M = self.csr.to_dense()
        for ra, rb, W in self.dense:
            M = M.index_put((ra[:, None], rb[None, :]), W, accumulate=True)
            M = M.index_put((rb[:, None], ra[None, :]), W.T, accumulate=True)
        return M


def _add_offset_currents(cc: Compiled, f: torch.Tensor, gain: torch.Tensor, offset: torch.Tensor) -> None:
    """Amplifier offsets shift node voltages by constants: through each conductance g they push
    a constant current −γ_a g (o_a − o_b) into the free root of a (and the opposite into b's)."""
    nf = cc.n_free
    for blk in cc.blocks:
        g = cc.params[blk.name]
        ra, rb, ga, gb = cc.root[blk.a], cc.root[blk.b], gain[blk.a], gain[blk.b]
        if blk.dense:
            gd = g * (offset[blk.a][:, None] - offset[blk.b][None, :])
            into_a, into_b = gd.sum(1), gd.sum(0)
        else:
            into_a = into_b = g * (offset[blk.a] - offset[blk.b])
        fa, fb = ra < nf, rb < nf
        f.index_add_(0, ra[fa], (-ga * into_a)[fa])
        f.index_add_(0, rb[fb], (gb * into_b)[fb])


def _add_dense_to_fixed(D, D_fix, K, nf, ra, rb, ga, gb, g) -> None:
    """A dense block between free rows and fixed columns (or the reverse), e.g. input sources
    to a hidden layer: row/column sums and two index_adds, never an m×n index expansion."""
    if not bool((ra < nf).all()):  # make the rows the free side
        ra, rb, ga, gb, g = rb, ra, gb, ga, g.T
    load = ga * ga * g.sum(1)
    D.index_add_(0, ra, load)
    D_fix.index_add_(0, ra, load)
    w = (g * ga[:, None] * gb[None, :]).T  # (fixed, free)
    K.index_add_(1, ra, torch.zeros(K.shape[0], ra.numel(), dtype=K.dtype, device=K.device).index_add_(0, rb - nf, w))


def _assemble(cc: Compiled, u: torch.Tensor, beta, target) -> _Ops:
    """Quadratic part of the energy in the free voltages for one batch of sources: D
    (diagonal), M (free-free couplings) and f_fixed (what the sources push in), plus the
    diodes. The parameter-only parts come from the cache."""
    st = _static(cc)
    nf, dev, dt = cc.n_free, cc.device, cc.dtype
    B = u.shape[0]
    ext_u = torch.cat([u, u.new_zeros(B, 1)], dim=1)  # [u | ground], indexed by root - nf
    hit = cc.cache.get("f_sources")  # the free and nudged phases of an EP step share u
    if hit is not None and hit[0] is u and hit[1] == u._version and hit[2] is st:
        f = hit[3]
    else:
        f = ext_u @ st.K + st.f_const
        cc.cache["f_sources"] = (u, u._version, st, f)
    D, D_fix = st.D[None].expand(B, -1), st.D_fix[None]
    if target is not None and cc.outputs.numel():
        beta = torch.as_tensor(beta, dtype=dt, device=dev).reshape(-1, 1)
        r, go = cc.root[cc.outputs], st.gain[cc.outputs]
        if bool((r >= nf).any()):
            raise ValueError("an output node is fixed: it cannot be nudged")
        D = D.index_add(1, r, (beta * go * go).expand(B, -1))
        D_fix = D_fix.expand(B, -1).index_add(1, r, (beta * go * go).expand(B, -1))
        shift = 0.0 if st.offset is None else st.offset[cc.outputs]
        f = f.index_add(1, r, beta * go * (target - shift))
    d, idx, k = st.dio_fixed
    v_fixed = torch.zeros(B, st.dio.IS.numel(), dtype=dt, device=dev).index_add(1, d, k * ext_u[:, idx])
    if st.dio_offset is not None:
        v_fixed = v_fixed + st.dio_offset
    return _Ops(D, f, st.M, st.ff, D_fix, dataclasses.replace(st.dio, v_fixed=v_fixed))


def _diodes(cc: Compiled, gain: torch.Tensor, positions: list[torch.Tensor]):
    """Concatenated diode parameters and incidences (overall and per colour), and the fixed
    terminals as (diode, index into [u | 0], κ)."""
    nf, p, dev, dt = cc.n_free, cc.params, cc.device, cc.dtype
    cat = lambda xs, dtype=dt: torch.cat(xs) if xs else torch.zeros(0, dtype=dtype, device=dev)
    anode = cat([d.anode for d in cc.diodes], torch.long)
    cathode = cat([d.cathode for d in cc.diodes], torch.long)
    IS = cat([p[f"IS:{d.name}"] for d in cc.diodes])
    nvt = cat([p[f"N:{d.name}"] * cc.vt for d in cc.diodes])
    ideal = cat([torch.full((d.anode.numel(),), d.ideal, dtype=torch.bool, device=dev) for d in cc.diodes],
                torch.bool)
    index = torch.arange(anode.numel(), device=dev)
    inc_d, inc_root, inc_kap, fix_d, fix_idx, fix_kap = [], [], [], [], [], []
    for term, sign in ((anode, 1.0), (cathode, -1.0)):  # κ = ±gain of the terminal
        r, k = cc.root[term], sign * gain[term]
        free = r < nf
        inc_d.append(index[free]), inc_root.append(r[free]), inc_kap.append(k[free])
        fix_d.append(index[~free]), fix_idx.append(r[~free] - nf), fix_kap.append(k[~free])
    inc = _Incidences(cat(inc_d, torch.long), cat(inc_root, torch.long), cat(inc_kap))
    is_ideal = ideal[inc.d]
    by_colour = [(inc.subset((pos[inc.root] >= 0) & ~is_ideal, pos), inc.subset((pos[inc.root] >= 0) & is_ideal, pos))
                 for pos in positions]
    empty = torch.zeros(1, anode.numel(), dtype=dt, device=dev)
    vcrit = nvt * torch.log(nvt / (math.sqrt(2.0) * IS))
    dio = _Diodes(IS, nvt, vcrit, ideal, empty, inc, inc.subset(~is_ideal), inc.subset(is_ideal), by_colour)
    return dio, (cat(fix_d, torch.long), cat(fix_idx, torch.long), cat(fix_kap))


def _diode_iv(v, IS, nvt):
    """Shockley current and conductance, continued linearly above _EXP_MAX (Newton safeguard:
    keeps the function convex and finite, and is inactive at any physical solution)."""
    x = v / nvt
    e = torch.exp(torch.clamp(x, max=_EXP_MAX))
    over = torch.clamp(x - _EXP_MAX, min=0.0)
    return IS * (e * (1 + over) - 1), IS * e / nvt


def _field(ops: _Ops, s: torch.Tensor, colour: int | None = None, cols: torch.Tensor | None = None) -> torch.Tensor:
    """f = f_fixed + M s: the current each free root (of one colour) receives from everything
    but itself."""
    if colour is None:
        return ops.f_fixed + ops.M @ s
    return ops.f_fixed[:, cols] + ops.M.rows(colour, s)


def residual(cc: Compiled, ops: _Ops, s: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """KCL residual r = ∂E/∂s (B, n_free), projected where an ideal clamp is active."""
    r = ops.D * s - _field(ops, s)
    dio = ops.dio
    if dio.inc.d.numel():
        v = dio.voltages(s)
        if dio.shock.d.numel():
            i, _ = _diode_iv(v, dio.IS, dio.nvt)
            r = r.index_add(1, dio.shock.root, dio.shock.kap * i[:, dio.shock.d])
        if dio.clamps.d.numel():  # an active clamp (v ≈ 0) supplies whatever current pushes outward
            scale = (cc.voltages(s, u).abs().amax(1, keepdim=True) + 1e-30) * 1e-12
            at = (v[:, dio.clamps.d] >= -scale).to(r.dtype)  # clamp at its bound
            push = torch.zeros_like(r).index_add(1, dio.clamps.root, at * torch.sign(dio.clamps.kap))
            r = torch.where((push > 0) & (r < 0) | (push < 0) & (r > 0), torch.zeros_like(r), r)
    return r


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


def _bcd_sweep(cc: Compiled, ops: _Ops, s: torch.Tensor, inner: int) -> torch.Tensor:
    dio = ops.dio
    for c, colour in enumerate(cc.colours):
        f = _field(ops, s, c, colour)
        Dc = ops.D[:, colour]
        x = f / Dc
        shock, clamps = dio.by_colour[c]
        if shock.d.numel() or clamps.d.numel():
            v = dio.voltages(s)
        if shock.d.numel():  # warm-started, step-limited Newton on each node's convex 1-D problem
            w = v[:, shock.d] - shock.kap * s[:, shock.root]  # the part not set by this node
            IS, nvt, vcrit = dio.IS[shock.d], dio.nvt[shock.d], dio.vcrit[shock.d]
            # a start far into forward bias (e.g. the linear first guess) restarts at the knee
            x = _clip_to_clamps(s[:, colour], shock.loc, shock.kap, w - vcrit - 10 * nvt)
            akap = shock.kap.abs()
            for _ in range(inner):
                vd = w + shock.kap * x[:, shock.loc]
                i, di = _diode_iv(vd, IS, nvt)
                grad = (Dc * x - f).index_add(1, shock.loc, shock.kap * i)
                hess = Dc.expand_as(x).index_add(1, shock.loc, shock.kap * shock.kap * di)
                # a diode's voltage may rise freely up to its knee, then by 2 n V_T per step
                rise = (torch.clamp(vcrit - vd, min=0.0) + 2 * nvt) / akap
                x = x + _limit_step(-grad / hess, shock.loc, shock.kap, rise)
        if clamps.d.numel():
            w = v[:, clamps.d] - clamps.kap * s[:, clamps.root]
            x = _clip_to_clamps(x, clamps.loc, clamps.kap, w)
        s = s.index_copy(1, colour, x)
    return s


def settle(cc: Compiled, u: torch.Tensor | None = None, *, x: torch.Tensor | None = None, beta=0.0,
           target: torch.Tensor | None = None, method: str = "bcd", s0: torch.Tensor | None = None,
           rtol: float | None = None, atol: float = 0.0, max_iters: int = 20000, inner: int = 4,
           check_every: int = 1, on_fail: str = "raise", dt: float | None = None, duration: float | None = None,
           capacitance: float | torch.Tensor = 1e-12, temperature: float = 0.0,
           generator: torch.Generator | None = None) -> SettleResult:
    """Settle the circuit for a batch of source settings.

    u: source voltages (B, n_src), or x: inputs of a layered circuit (B, n_in); neither = the
    circuit's own sources. beta/target: EP nudge (conductance β, in siemens, from each output to
    y; β may be per sample). s0: warm start (e.g. the free state for the nudged phase).
    on_fail: "raise" (ConvergenceError), "warn", or "ignore" — the result says either way.
    Transient: time step ``dt`` and ``duration`` in seconds, node ``capacitance`` in farads,
    ``temperature`` in kelvin for Johnson noise (0 = noiseless).
    """
    t0 = time.perf_counter()
    if u is None:
        u = cc.source_values(1) if x is None else cc.inputs_to_sources(x)
    u = torch.as_tensor(u, dtype=cc.dtype, device=cc.device)
    u = u[None] if u.ndim == 1 else u
    if target is not None:
        target = torch.as_tensor(target, dtype=cc.dtype, device=cc.device).reshape(u.shape[0], -1)
    if rtol is None:
        rtol = 1e-10 if cc.dtype == torch.float64 else 1e-5
    if on_fail not in ("raise", "warn", "ignore"):
        raise ValueError(f"on_fail must be raise, warn or ignore, not {on_fail!r}")
    with torch.no_grad():
        ops = _assemble(cc, u, beta, target)
        B = u.shape[0]
        s = (ops.f_fixed / ops.D).clone() if s0 is None else s0.detach().to(cc.dtype).expand(B, -1).clone()
        vscale = u.abs().amax(1, keepdim=True).clamp_min(1e-12) if u.numel() else torch.ones(B, 1, dtype=cc.dtype)
        tol = atol + rtol * ops.D * vscale
        it, ok, r = 0, False, None
        if method == "bcd":
            while it < max_iters:
                s = _bcd_sweep(cc, ops, s, inner)
                it += 1
                if it % check_every == 0 or it == max_iters:
                    r = residual(cc, ops, s, u)
                    if bool((r.abs() <= tol).all()):
                        ok = True
                        break
        elif method == "newton":
            while it < max_iters:
                r = residual(cc, ops, s, u)
                if bool((r.abs() <= tol).all()):
                    ok = True
                    break
                s = _newton_step(cc, ops, s, u, r, beta, target)
                it += 1
        elif method == "transient":
            if dt is None or duration is None:
                raise ValueError("method='transient' needs dt and duration (seconds)")
            cap = torch.as_tensor(capacitance, dtype=cc.dtype, device=cc.device)
            steps = max(1, int(round(duration / dt)))
            for it in range(1, steps + 1):
                s = _transient_step(cc, ops, s, u, dt, cap, temperature, generator)
            r = residual(cc, ops, s, u)
            ok = bool((r.abs() <= tol).all())
        else:
            raise ValueError(f"unknown method {method!r}: use 'bcd', 'newton' or 'transient'")
        if r is None:
            r = residual(cc, ops, s, u)
        res = float(r.abs().max()) if r.numel() else 0.0
        rel = float((r.abs() / (ops.D * vscale)).max()) if r.numel() else 0.0
    result = SettleResult(s, u, res, rel, it, ok, method, time.perf_counter() - t0, cc)
    if not ok and on_fail != "ignore":
        msg = (f"settle ({method}) not converged after {it} iterations: max residual {res:.3g} A, "
               f"relative {rel:.3g} (rtol {rtol:g}, atol {atol:g})")
        if on_fail == "raise":
            raise ConvergenceError(msg, result)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return result


def _hessian(ops: _Ops, s: torch.Tensor) -> torch.Tensor:
    """Dense Hessian ∂²E/∂s² (B, n_free, n_free): conductances plus each diode's I'(v)."""
    B, nf = s.shape
    H = torch.diag_embed(ops.D.expand(B, -1)) - ops.M.to_dense()
    dio = ops.dio
    if bool(dio.ideal.any()):
        raise ValueError("method='newton' does not handle ideal clamps: use method='bcd'")
    if dio.inc.d.numel():
        _, di = _diode_iv(dio.voltages(s), dio.IS, dio.nvt)
        inc = dio.inc
        same = inc.d[:, None] == inc.d[None, :]  # terminal pairs of one diode
        p, q = same.nonzero(as_tuple=True)
        flat = (inc.root[p] * nf + inc.root[q]).expand(B, -1)
        H = H.reshape(B, -1).scatter_add(1, flat, inc.kap[p] * inc.kap[q] * di[:, inc.d[p]]).reshape(B, nf, nf)
    return H


def _newton_step(cc, ops, s, u, r, beta, target):
    """Damped Newton on the whole free vector, backtracking on the energy (convex)."""
    from .energy import energy

    step = -torch.linalg.solve(_hessian(ops, s), r.unsqueeze(-1)).squeeze(-1)
    e0 = energy(cc, s, u, beta=beta, target=target)
    slope = (r * step).sum(1)
    r0 = r.abs().amax(1)
    t = torch.ones(s.shape[0], 1, dtype=s.dtype, device=s.device)
    for _ in range(60):
        trial = s + t * step
        e1 = energy(cc, trial, u, beta=beta, target=target)
        # near the minimum energy differences drown in rounding: a smaller residual is progress too
        good = (e1 <= e0 + 1e-4 * t[:, 0] * slope) | (residual(cc, ops, trial, u).abs().amax(1) < 0.5 * r0)
        if bool(good.all()):
            break
        t = torch.where(good[:, None], t, t / 2)
    return s + t * step


def _transient_step(cc, ops, s, u, dt, cap, temperature, generator):
    """One linearly implicit Euler step of C ds/dt = −r(s) (+ Johnson noise currents)."""
    r = residual(cc, ops, s, u)
    h = ops.D.expand_as(s)
    dio = ops.dio
    if dio.shock.d.numel():
        _, di = _diode_iv(dio.voltages(s), dio.IS, dio.nvt)
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

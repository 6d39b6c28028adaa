"""The operator layer of the settle: the co-content energy E(s) of a compiled circuit split into
what the solvers apply.

E(s) = ½ sᵀ(diag D − M)s − f·s + Σ_diodes ∫ I(v) dv (+ the ideal clamps' bounds), with s the free
node voltages (V), D the total conductance seen by each free node (S), M the positive couplings
between free nodes (S), f the current the sources push into each free node (A) and I(v) the
diode I–V curve. Its gradient is the KCL residual r = ∂E/∂s (A), its Hessian D − M + Σ κκᵀ I′(v)
(S).

* ``static_operators(cc)``: the parameter-only part, cached on the compiled circuit until a
  parameter tensor changes (an optimizer step bumps its version).
* ``assemble(cc, u, beta, target) -> Operators``: the operators for one batch of sources u (V)
  and an optional EP nudge (β in S towards the target voltages, V).
* ``residual``, ``hessian`` (dense), ``hessian_entries`` (COO, for sparse factorisations),
  ``inflow``, ``diode_iv``: what the solvers and EP evaluate.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .compiled import Columns, Compiled, add_columns_, columns, set_columns_
from .fusion import fusable

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
_EXP_MAX = 40.0  # diode exponent beyond which the I-V curve is continued linearly in Newton


@dataclass
class Incidences:
    """Diode terminals on free roots: diode d's voltage (V) depends on s[root] with coefficient
    κ (dimensionless: ±gain of the terminal)."""

    d: torch.Tensor
    root: torch.Tensor
    kap: torch.Tensor
    loc: torch.Tensor | None = None  # position of root within a colour (per-colour subsets only)

    def subset(self, mask: torch.Tensor, pos: torch.Tensor | None = None) -> "Incidences":
        """The incidences selected by ``mask``; with ``pos`` (a colour's root positions), their
        positions within that colour."""
        root = self.root[mask]
        return Incidences(self.d[mask], root, self.kap[mask], None if pos is None else pos[root])


@dataclass
class DiodeSet:
    """All diodes of a settle, concatenated: parameters, the part of each diode voltage fixed
    by the sources (constant during the settle) and the incidences on free roots, overall
    and per colour (Shockley and ideal apart), so sweeps never gather every node voltage."""

    IS: torch.Tensor  # saturation current, A
    nvt: torch.Tensor  # N·V_T, V
    xbv: torch.Tensor | None  # effective breakdown voltage (V; inf: none); None when no diode has one
    vcrit: torch.Tensor  # n V_T ln(n V_T / (√2 IS)), V: above it Newton steps are limited, as in SPICE
    ideal: torch.Tensor  # (n_d,) bool
    v_fixed: torch.Tensor  # (B, n_d), V
    inc: Incidences
    shock: Incidences
    clamps: Incidences
    by_colour: list[tuple[Incidences, Incidences]]  # (Shockley, ideal) incidences of each colour
    slots: list["Slots | None"]  # per colour: its Shockley diodes laid out node by node, where possible
    fixed_slots: list[torch.Tensor | None]  # per colour with slots: v_fixed gathered into them, (B, k, n_c), V

    def voltages(self, s: torch.Tensor) -> torch.Tensor:
        """Diode voltages (B, n_d), V, at free voltages s (B, n_free), V."""
        return self.v_fixed.index_add(1, self.inc.d, self.inc.kap * s[:, self.inc.root])

    @property
    def slotted(self) -> bool:
        """Whether every colour's Shockley diodes are laid out in slots."""
        return all(sl is not None or shock.d.numel() == 0 for sl, (shock, _) in zip(self.slots, self.by_colour))


@dataclass
class Slots:
    """A colour's Shockley diodes laid out node by node, for colours whose every Shockley diode
    has that node as its only free terminal (the other one fixed: e.g. a layer's clamps to
    sources). Node j's diodes fill column j of (k, n_c) tables in incidence order, padded with
    inert diodes (IS = 0, κ = 0). A diode's voltage is then w + κ·x_j with w fixed during a
    settle, and the solvers work on k slices of (B, n_c) instead of gathering and scattering
    by index; sums over a node's diodes keep the incidence order."""

    d: torch.Tensor  # (k, n_c) diode index (0 where padded)
    kap: torch.Tensor  # (k, n_c) κ (0 where padded)
    inv_akap: torch.Tensor  # (k, n_c) 1/|κ| (0 where padded)
    inv_kap: torch.Tensor  # (k, n_c) 1/κ (0 where padded)
    open_up: torch.Tensor  # (k, n_c) 0 where κ > 0, +inf elsewhere: added to an upper bound
    open_down: torch.Tensor  # (k, n_c) 0 where κ < 0, −inf elsewhere: added to a lower bound
    IS: torch.Tensor  # (k, n_c) A (0 where padded)
    nvt: torch.Tensor  # (k, n_c) V (1 where padded)
    inv_nvt: torch.Tensor  # (k, n_c) 1/(N·V_T), V⁻¹: the kernels multiply where they would divide
    vcrit: torch.Tensor  # (k, n_c) V
    xbv: torch.Tensor | None  # (k, n_c) V (inf where padded); None when no diode breaks down
    step_cap: torch.Tensor  # (n_c,) V: min over the node's diodes of N·V_T/|κ| (inf: none)

    @property
    def k(self) -> int:
        """Diodes per node (slots)."""
        return self.kap.shape[0]

    def groups(self) -> list[int | None]:
        """How the kernels walk the slots. Compiled (``torch.compile`` tracing): one slot at a
        time, so that every operation of a Newton step runs over (B, n_c) and the whole step
        is one loop over the nodes, with no (B, k, n_c) intermediate stored. Eager: all slots
        at once (None), (B, k, n_c): half the operations (a small batch's settle is
        per-operation overhead)."""
        return list(range(self.k)) if torch.compiler.is_compiling() else [None]

    def part(self, name: str, group: int | None) -> torch.Tensor:
        """A (k, n_c) table's rows for a group: one slot's (n_c,), or all of them."""
        t = getattr(self, name)
        return t if group is None else t[group]

    @staticmethod
    def at(x: torch.Tensor, group: int | None) -> torch.Tensor:
        """A node quantity x (B, n_c) shaped to meet a group's per-diode ones."""
        return x if group is not None else x[:, None, :]

    @staticmethod
    def fixed(w: torch.Tensor, group: int | None) -> torch.Tensor:
        """The fixed parts w (B, k, n_c), V, of a group's diodes."""
        return w if group is None else w[:, group]

    def currents(self, w: torch.Tensor, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per group of :meth:`groups`: its diodes' voltages (V), currents (A) and conductances
        (S), each (B, n_c) or (B, k, n_c), at node voltages x (B, n_c), V, with the fixed parts
        w (B, k, n_c), V."""
        out = []
        for g in self.groups():
            v = self.fixed(w, g) + self.part("kap", g) * self.at(x, g)
            xbv = None if self.xbv is None else self.part("xbv", g)
            i, di = diode_iv(v, self.part("IS", g), self.part("nvt", g), xbv, self.part("inv_nvt", g))
            out.append((v, i, di))
        return out

    @staticmethod
    def add(base: torch.Tensor, per_diode: list[torch.Tensor]) -> torch.Tensor:
        """base (B, n_c) plus each node's per-diode terms (per group: (B, n_c) or (B, k, n_c)),
        in incidence order."""
        return _fold(torch.add, base, per_diode)

    @staticmethod
    def nearest(base: torch.Tensor, per_diode: list[torch.Tensor]) -> torch.Tensor:
        """The least, node by node, of base (B, n_c) and each node's per-diode terms (per
        group, as :meth:`currents` gives them)."""
        return _fold(torch.minimum, base, per_diode)

    def bounds(self, x: torch.Tensor, upper: list[torch.Tensor], lower: list[torch.Tensor]) -> torch.Tensor:
        """x (B, n_c) clipped to the tightest of its diodes' bounds (per group, as
        :meth:`currents` gives them): ``upper`` (finite) where κ > 0 and ``lower`` where κ < 0."""
        ups = [t for g, u in zip(self.groups(), upper) for t in _slot_slices(u + self.part("open_up", g), x.dim())]
        downs = [t for g, d in zip(self.groups(), lower) for t in _slot_slices(d + self.part("open_down", g), x.dim())]
        hi, lo = ups[0], downs[0]
        for up, down in zip(ups[1:], downs[1:]):
            hi, lo = torch.minimum(hi, up), torch.maximum(lo, down)
        return torch.minimum(torch.maximum(x, lo), hi)


def _fold(op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], base: torch.Tensor,
          per_diode: list[torch.Tensor]) -> torch.Tensor:
    """base (B, n_c) combined by ``op`` with each node's per-diode terms in turn, slot by slot
    in incidence order (per group: (B, n_c) or (B, k, n_c))."""
    for term in per_diode:
        for one in _slot_slices(term, base.dim()):
            base = op(base, one)
    return base


def _slot_slices(t: torch.Tensor, node_dim: int) -> list[torch.Tensor]:
    """A group's per-diode tensor as one (B, n_c) slice per slot."""
    return [t] if t.dim() == node_dim else [t[:, j] for j in range(t.shape[1])]


def _slots(shock: Incidences, n_c: int, single: torch.Tensor, IS: torch.Tensor, nvt: torch.Tensor,
           vcrit: torch.Tensor, xbv: torch.Tensor | None) -> Slots | None:
    """The node-by-node layout of a colour's Shockley incidences ``shock`` (with positions
    ``loc``), or None where it does not apply: a diode with another free terminal (``single``
    false), or padding more than doubling the work."""
    m = shock.d.numel()
    if m == 0 or not bool(single[shock.d].all()):
        return None
    count = torch.bincount(shock.loc, minlength=n_c)
    k = int(count.max())
    if n_c * k > 2 * m + n_c:
        return None
    order = torch.argsort(shock.loc, stable=True)  # incidence order within each node
    loc = shock.loc[order]
    start = torch.cumsum(count, 0) - count
    row = torch.arange(m, device=loc.device) - start[loc]
    table = lambda values, pad: torch.full((k, n_c), pad, dtype=values.dtype, device=values.device).index_put_(
        (row, loc), values[order])
    kap = table(shock.kap, 0.0)
    inv = lambda t: torch.where(t != 0, 1.0 / torch.where(t != 0, t, 1.0), 0.0)
    zero = torch.zeros_like(kap)
    slot_nvt = table(nvt[shock.d], 1.0)
    cap = torch.where(kap != 0, slot_nvt * inv(kap.abs()), math.inf).amin(0)
    return Slots(table(shock.d, 0), kap, inv(kap.abs()), inv(kap), torch.where(kap > 0, zero, math.inf),
                 torch.where(kap < 0, zero, -math.inf), table(IS[shock.d], 0.0), slot_nvt, 1.0 / slot_nvt,
                 table(vcrit[shock.d], 0.0), None if xbv is None else table(xbv[shock.d], math.inf), cap)


def _times(s: torch.Tensor, Wt: torch.Tensor) -> torch.Tensor:
    """s @ Wtᵀ for a batch s (B, m) of a layer's voltages and a matrix Wt (n, m), computed as
    (Wt sᵀ)ᵀ: BLAS is up to three times faster on that orientation when a side is thin (a
    10-node output layer), the more so with Wt contiguous (:func:`_transposed`), and no slower
    on square layers (measured on the 2-core CPU, torch 2.13)."""
    return (Wt @ s.T).T


_THIN = 64  # a dense block with a side of at most this many nodes gets a contiguous transposed copy


def _transposed(W: torch.Tensor) -> torch.Tensor:
    """Wᵀ for :func:`_times`: a contiguous copy where W is thin (1.6x faster products for an
    output layer's 1024 × 10 block at batch 128; the copy is small), else the view."""
    return W.T.contiguous() if min(W.shape) <= _THIN else W.T


@dataclass(frozen=True)
class CouplingLayout:
    """Where the parts of M sit: structure only, the same at every rebuild of a circuit's
    operators (working it out takes several syncs), so kept with the circuit's caches."""

    cols: list[Columns]  # per colour: its roots
    dense_cols: list[tuple[Columns, Columns]]  # per dense block: its row and column roots
    terms: list[list[tuple[Columns, Columns, int, bool]]]  # per colour: (positions receiving, roots sending,
    # dense block, whether it sends through its transpose) of each dense block feeding the colour


def coupling_layout(positions: list[torch.Tensor],
                    dense: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> CouplingLayout:
    """The :class:`CouplingLayout` of dense blocks (row roots, column roots, W) among colours
    with the given ``positions``."""
    terms = []
    for pos in positions:
        feeding = []
        for i, (ra, rb, _) in enumerate(dense):
            if int(pos[ra[0]]) >= 0:
                feeding.append((columns(pos[ra]), columns(rb), i, False))
            elif int(pos[rb[0]]) >= 0:
                feeding.append((columns(pos[rb]), columns(ra), i, True))
        terms.append(feeding)
    return CouplingLayout([columns(torch.nonzero(pos >= 0).flatten()) for pos in positions],
                          [(columns(ra), columns(rb)) for ra, rb, _ in dense], terms)


@dataclass
class Coupling:
    """M: the positive couplings (S) between free roots, M s being the current (A) each root
    receives from the other free roots — sparse entries plus dense blocks between two free
    layers."""

    csr: torch.Tensor  # sparse CSR (n_free, n_free)
    csr_rows: list[torch.Tensor]  # per colour: its CSR rows
    dense: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (row roots, column roots, W)
    layout: CouplingLayout
    _dense_t: list[torch.Tensor] = dataclasses.field(init=False)  # each dense W as _transposed(W)
    _terms: list[list[tuple[Columns, Columns, torch.Tensor]]] = dataclasses.field(init=False)
    _sparse: bool = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self._dense_t = [_transposed(W) for _, _, W in self.dense]
        self._sparse = self.csr._nnz() > 0
        # per colour: (its positions receiving, roots sending, matrix Wt) of each dense block
        self._terms = [[(into, src, self._dense_t[i] if t else self.dense[i][2]) for into, src, i, t in feeding]
                       for feeding in self.layout.terms]

    @property
    def cols(self) -> list[Columns]:
        """Per colour: its roots."""
        return self.layout.cols

    def __matmul__(self, s: torch.Tensor) -> torch.Tensor:
        """M s (A) for a batch s (B, n_free) of voltages (V)."""
        out = (self.csr @ s.T).T if self._sparse else torch.zeros_like(s)
        for (_, _, W), Wt, (ca, cb) in zip(self.dense, self._dense_t, self.layout.dense_cols):
            add_columns_(out, ca, _times(s[:, cb], W))
            add_columns_(out, cb, _times(s[:, ca], Wt))
        return out

    def rows(self, c: int, s: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """base (B, n_c), A, plus the rows of M s (A) that belong to colour c (base itself is
        not modified). A dense term that feeds every row of the colour from fewer nodes than
        it has (an output layer into a hidden one) is one addmm onto base; others go through
        :func:`_times` and an add."""
        out, owned = (base + (self.csr_rows[c] @ s.T).T, True) if self._sparse else (base, False)
        for into, src, Wt in self._terms[c]:
            if isinstance(into, slice) and into == slice(0, out.shape[1]) and Wt.shape[0] >= Wt.shape[1]:
                out, owned = torch.addmm(out, s[:, src], Wt.T), True
                continue
            if not owned:
                out, owned = out.clone(), True
            add_columns_(out, into, _times(s[:, src], Wt))
        return out

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """M as COO triplets (rows, columns, values in S), both triangles, duplicates to be
        summed."""
        coo = self.csr.to_sparse_coo()
        rows, cols, vals = [coo.indices()[0]], [coo.indices()[1]], [coo.values()]
        for ra, rb, W in self.dense:
            a, b = ra[:, None].expand_as(W).reshape(-1), rb[None, :].expand_as(W).reshape(-1)
            rows += [a, b]
            cols += [b, a]
            vals += [W.reshape(-1), W.reshape(-1)]
        return torch.cat(rows), torch.cat(cols), torch.cat(vals)


@dataclass
class FixedBlock:
    """A dense conductance block g (n_a, n_b), S, between free roots ``free`` (its rows, with
    their gains γ_a) and fixed ones ``fixed`` (its columns: indices into [u | 0], gains γ_b):
    the sources u push the current γ_a ⊙ (g (γ_b ⊙ u_fixed)), A, into the free rows. A gain
    of 1 on every node of a side is None (nothing to multiply)."""

    free: Columns
    fixed: Columns
    g: torch.Tensor
    gain_free: torch.Tensor | None
    gain_fixed: torch.Tensor | None

    def add_inflow_(self, f: torch.Tensor, ext_u: torch.Tensor) -> None:
        """Add the current (A) pushed into the free rows by ext_u = [u | 0] (B, n_src + 1), V,
        to f (B, n_free) in place."""
        x = ext_u[:, self.fixed]
        x = x if self.gain_fixed is None else x * self.gain_fixed
        if self.gain_free is None and isinstance(self.free, slice):
            f[:, self.free].addmm_(x, self.g.T)
            return
        y = x @ self.g.T
        add_columns_(f, self.free, y if self.gain_free is None else y * self.gain_free)


_FEW_COLUMNS = 32  # fixed terminals reading at most this many source columns: one small product


@dataclass
class FixedTerminals:
    """The diodes' terminals on fixed nodes (sources, ground): diode ``d`` reads column ``idx``
    of ext_u = [u | 0] with κ = ``kap``. Where they read few distinct columns (a layer's clamps
    share two rails), the part of every diode's voltage they fix is one small product
    ext_u[:, cols] @ P, and its node-by-node layout another (``P_slots``), instead of
    gathering and scattering a batch of every diode (the same sums: each diode has its terms
    in one column of P). A colour whose slots hold a contiguous range of diodes (a layer's
    clamps, numbered in turn) reads its layout as a view of the diodes' voltages."""

    d: torch.Tensor  # (m,) diode of each fixed terminal
    idx: torch.Tensor  # (m,) its column of [u | 0]
    kap: torch.Tensor  # (m,) its κ
    n_d: int  # diodes
    cols: torch.Tensor | None = None  # the distinct columns read (None: too many, gathered instead)
    P: torch.Tensor | None = None  # (n_cols, n_d)
    P_slots: list[torch.Tensor | None] = dataclasses.field(default_factory=list)  # per colour: (n_cols, k·n_c); None: a view or gather
    slot_cols: list[Columns | None] = dataclasses.field(default_factory=list)  # per colour: its slots' diodes

    def __post_init__(self) -> None:
        cols, pos = torch.unique(self.idx, return_inverse=True)
        if cols.numel() <= _FEW_COLUMNS:
            self.cols = cols
            self.P = self.kap.new_zeros(cols.numel(), self.n_d).index_put_((pos, self.d), self.kap, accumulate=True)

    def with_slots(self, slots: list["Slots | None"]) -> "FixedTerminals":
        """These terminals with the node-by-node projections of each colour's ``slots``."""
        self.slot_cols = [None if sl is None else columns(sl.d.flatten()) for sl in slots]
        self.P_slots = [None if self.P is None or c is None or isinstance(c, slice) else self.P[:, c]
                        for c in self.slot_cols]
        return self

    def voltages(self, ext_u: torch.Tensor, slots: list["Slots | None"],
                 offset: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """The fixed part of each diode's voltage (B, n_d), V, for ext_u = [u | 0] (B, n_src + 1),
        V, plus ``offset`` (n_d,) where amplifiers have offsets, and the same laid out in each
        colour's ``slots`` ((B, k, n_c) or None)."""
        B = ext_u.shape[0]
        if self.P is None:
            v = ext_u.new_zeros(B, self.n_d).index_add_(1, self.d, ext_u.index_select(1, self.idx).mul_(self.kap))
            v = v if offset is None else v + offset
        else:
            x = ext_u.index_select(1, self.cols)
            v = x @ self.P if offset is None else torch.addmm(offset, x, self.P)
        laid = []
        for sl, cols, P in zip(slots, self.slot_cols, self.P_slots):
            if sl is None:
                w = None
            elif isinstance(cols, slice):  # a view of v
                w = v[:, cols]
            elif P is not None:
                w = x @ P if offset is None else torch.addmm(offset[cols], x, P)
            else:
                w = v.index_select(1, cols)
            laid.append(None if w is None else w.view(B, *sl.d.shape))
        return v, laid


@dataclass
class StaticOperators:
    """The parts of the operators that depend on the parameters only: built once and reused
    by every settle until a parameter tensor changes (training updates bump its version)."""

    D: torch.Tensor  # (n_free,) total conductance seen by each free root, S
    D_fix: torch.Tensor  # (n_free,) its part towards fixed nodes (Johnson noise), S
    K: torch.Tensor | None  # (n_src + 1, n_free), S, of the sparse couplings to fixed nodes (None: none)
    fixed_blocks: list[FixedBlock]  # dense blocks between free and fixed nodes
    f_const: torch.Tensor  # (n_free,) injected currents, A
    M: Coupling
    ff: Callable[[], tuple]  # (ra, rb, γa, γb, g) of free-free elements, for Johnson noise (built on demand)
    dio: DiodeSet  # with an empty v_fixed
    dio_fixed: FixedTerminals  # the diodes' terminals on fixed nodes
    gain: torch.Tensor
    offset: torch.Tensor | None  # node offsets (V) from amplifier offset voltages (device models)
    dio_offset: torch.Tensor | None  # their part of each diode's voltage, V


@dataclass
class Operators:
    """The energy's operators for one batch of sources: E(s) = ½ sᵀ(diag D − M)s − f_fixed·s
    + the diodes' co-content."""

    D: torch.Tensor  # (B or 1, n_free) total conductance seen by each free root, S
    f_fixed: torch.Tensor  # (B, n_free) current from sources through conductances (+ injections), A
    M: Coupling  # positive coupling weights between free roots, S
    ff: Callable[[], tuple]  # (ra, rb, γa, γb, g) of free-free elements, for Johnson noise (built on demand)
    D_fixed: torch.Tensor  # (B or 1, n_free) conductance to fixed nodes, for Johnson noise, S
    dio: DiodeSet


def _csr(rows, cols, vals, shape):
    """Sparse CSR matrix from COO triplets (duplicates summed)."""
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, shape, check_invariants=False)
    return coo.coalesce().to_sparse_csr()


def static_operators(cc: Compiled) -> StaticOperators:
    """The parameter-only operators of ``cc`` (cached in ``cc.cache``, keyed by the identity
    and version of every parameter tensor)."""
    key = tuple((k, id(v), v._version) for k, v in cc.params.items() if k != "u")
    cached = cc.cache.get("static")
    if cached is not None and cached[0] == key:
        return cached[1]
    nf, ns, p, dev, dt = cc.n_free, cc.n_src, cc.params, cc.device, cc.dtype
    gain, offset = cc.gain_and_offset()
    root = cc.root
    D = torch.zeros(nf, dtype=dt, device=dev)
    D_fix = torch.zeros(nf, dtype=dt, device=dev)
    K = None  # allocated at the first sparse coupling to a fixed node
    fixed_blocks: list[FixedBlock] = []
    R, C, W = [], [], []
    ffa, ffb, ffga, ffgb, ffg = [], [], [], [], []
    dense, dense_ff = [], []
    positions = _positions(cc)
    for blk, where, (ga, gb, unit_a, unit_b) in zip(cc.blocks, block_roots(cc), _block_gains(cc, gain)):
        g = p[blk.name]
        ra, rb = where.a, where.b
        if where.free_cols is not None:
            fixed_blocks.append(_dense_to_fixed(D, D_fix, where, ga, gb, unit_a, unit_b, g))
            continue
        if where.layer:  # two free layers: kept dense
            D.index_add_(0, ra, ga * ga * g.sum(1))
            D.index_add_(0, rb, gb * gb * g.sum(0))
            _add_dense(dense, ra, rb, g * ga[:, None] * gb[None, :])
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
        if K is None and bool((oa | ob).any()):
            K = torch.zeros(ns + 1, nf, dtype=dt, device=dev)
        if K is not None:
            K.index_put_((rb[oa] - nf, ra[oa]), w[oa], accumulate=True)
            K.index_put_((ra[ob] - nf, rb[ob]), w[ob], accumulate=True)
        D_fix.index_add_(0, ra[oa], (ga * ga * g)[oa])
        D_fix.index_add_(0, rb[ob], (gb * gb * g)[ob])
    f_const = torch.zeros(nf, dtype=dt, device=dev)
    for node, key_i in cc.currents:
        r = root[node]
        m = r < nf
        f_const.index_add_(0, r[m], (gain[node] * p[key_i])[m])
    if offset is not None:
        _add_offset_currents(cc, f_const, gain, offset)
    cat = lambda xs, dtype=dt: torch.cat(xs) if xs else torch.zeros(0, dtype=dtype, device=dev)
    rows, cols, vals = cat(R, torch.long), cat(C, torch.long), cat(W)
    M_rows = []
    for colour, pos in zip(cc.colours, positions):
        keep = pos[rows] >= 0
        M_rows.append(_csr(pos[rows[keep]], cols[keep], vals[keep], (colour.numel(), nf)))
    if "coupling_layout" not in cc.cache:
        cc.cache["coupling_layout"] = coupling_layout(positions, dense)
    M = Coupling(_csr(rows, cols, vals, (nf, nf)), M_rows, dense, cc.cache["coupling_layout"])

    def ff():
        """Free-free elements one by one (dense layer blocks expanded only here)."""
        parts = list(zip(ffa, ffb, ffga, ffgb, ffg))
        for ra, rb, ga, gb, g in dense_ff:
            parts.append((ra[:, None].expand_as(g).reshape(-1), rb[None, :].expand_as(g).reshape(-1),
                          ga[:, None].expand_as(g).reshape(-1), gb[None, :].expand_as(g).reshape(-1), g.reshape(-1)))
        return tuple(cat([q[i] for q in parts], torch.long if i < 2 else dt) for i in range(5))

    dio, dio_fixed = _cached_diodes(cc, gain, positions)
    dio_offset = None
    if offset is not None and cc.diodes:
        dio_offset = torch.cat([offset[d.anode] - offset[d.cathode] for d in cc.diodes])
    static = StaticOperators(D, D_fix, K, fixed_blocks, f_const, M, ff, dio, dio_fixed, gain,
                             offset, dio_offset)
    cc.cache["static"] = (key, static)
    return static


def _add_dense(dense: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], ra: torch.Tensor, rb: torch.Tensor,
               W: torch.Tensor) -> None:
    """Append the coupling block W (S) between free roots ra and rb, or add it to one already
    joining the same roots: a layer's positive and negative conductances reach it through the
    + and − outputs of the same amplifiers, and one summed matrix is one product per inflow
    instead of two."""
    for i, (a, b, V) in enumerate(dense):
        if a.shape == ra.shape and b.shape == rb.shape and torch.equal(a, ra) and torch.equal(b, rb):
            dense[i] = (a, b, V + W)
            return
    dense.append((ra, rb, W))


@dataclass(frozen=True)
class BlockRoots:
    """Where a conductance block's terminals lie: their roots (indices into [s | u | 0]) and
    whether they are all free or all fixed (structure only: :func:`block_roots`)."""

    a: torch.Tensor  # roots of the a terminals
    b: torch.Tensor  # roots of the b terminals
    a_free: bool  # every a terminal's root is a free node
    b_free: bool
    a_fixed: bool  # every a terminal's root is a fixed one (a source or ground)
    b_fixed: bool
    layer: bool  # a dense block joining two free layers (rows all of one colour, columns of another)
    free_cols: Columns | None = None  # a dense block with one side free: that side's roots (columns of s)
    fixed_cols: Columns | None = None  # and the other side's columns of [u | 0]


def block_roots(cc: Compiled) -> list[BlockRoots]:
    """:class:`BlockRoots` of each of ``cc.blocks``, computed once per compiled circuit."""
    if "block_roots" not in cc.cache:
        nf, positions, out = cc.n_free, _positions(cc), []
        for blk in cc.blocks:
            ra, rb = cc.root[blk.a], cc.root[blk.b]
            a_free, b_free = bool((ra < nf).all()), bool((rb < nf).all())
            sides = {}
            if blk.dense and a_free != b_free:
                free, fixed = (ra, rb) if a_free else (rb, ra)
                sides = dict(free_cols=columns(free), fixed_cols=columns(fixed - nf))
            out.append(BlockRoots(ra, rb, a_free, b_free, bool((ra >= nf).all()), bool((rb >= nf).all()),
                                  blk.dense and _layer_block(positions, nf, ra, rb), **sides))
        cc.cache["block_roots"] = out
    return cc.cache["block_roots"]


def _block_gains(cc: Compiled, gain: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, bool, bool]]:
    """Per block: the gains of its a and b terminals and whether each side's are all 1, cached
    while the node gains are the same tensor (:meth:`Compiled.gain_and_offset` keeps it until an
    amplifier parameter changes)."""
    hit = cc.cache.get("block_gains")
    if hit is None or hit[0] is not gain:
        per_block = []
        for blk in cc.blocks:
            ga, gb = gain[blk.a], gain[blk.b]
            per_block.append((ga, gb, bool((ga == 1).all()), bool((gb == 1).all())))
        hit = (gain, per_block)
        cc.cache["block_gains"] = hit
    return hit[1]


def _positions(cc: Compiled) -> list[torch.Tensor]:
    """Per colour: each free root's position within it (−1: another colour), (n_free,) each;
    structure only, so computed once per compiled circuit."""
    if "positions" not in cc.cache:
        positions = []
        for colour in cc.colours:
            pos = torch.full((cc.n_free,), -1, dtype=torch.long, device=cc.device)
            pos[colour] = torch.arange(colour.numel(), device=cc.device)
            positions.append(pos)
        cc.cache["positions"] = positions
    return cc.cache["positions"]


def _layer_block(positions: list[torch.Tensor], nf: int, ra: torch.Tensor, rb: torch.Tensor) -> bool:
    """Whether a dense block joins two free layers (rows all of one colour, columns all of
    another): then its couplings stay a dense matrix instead of m×n sparse entries."""
    if not (bool((ra < nf).all()) and bool((rb < nf).all())):
        return False
    in_colour = lambda r: [bool((pos[r] >= 0).all()) for pos in positions]
    a, b = in_colour(ra), in_colour(rb)
    return any(a) and any(b) and a != b


def _add_offset_currents(cc: Compiled, f: torch.Tensor, gain: torch.Tensor, offset: torch.Tensor) -> None:
    """Amplifier offsets shift node voltages by constants: through each conductance g they push
    a constant current −γ_a g (o_a − o_b) into the free root of a (and the opposite into b's)."""
    nf = cc.n_free
    for blk, where, (ga, gb, _, _) in zip(cc.blocks, block_roots(cc), _block_gains(cc, gain)):
        g = cc.params[blk.name]
        ra, rb = where.a, where.b
        if blk.dense:
            gd = g * (offset[blk.a][:, None] - offset[blk.b][None, :])
            into_a, into_b = gd.sum(1), gd.sum(0)
        else:
            into_a = into_b = g * (offset[blk.a] - offset[blk.b])
        fa, fb = ra < nf, rb < nf
        f.index_add_(0, ra[fa], (-ga * into_a)[fa])
        f.index_add_(0, rb[fb], (gb * into_b)[fb])


def _dense_to_fixed(D, D_fix, where: BlockRoots, ga, gb, unit_a: bool, unit_b: bool, g) -> FixedBlock:
    """A dense block between free rows and fixed columns (or the reverse), e.g. input sources
    to a hidden layer: its load on the free side added to D and D_fix (row sums), and the block
    itself, whose current into the free side is one matrix product per batch of sources
    (``unit_a``/``unit_b``: a side's gains are all 1)."""
    if not where.a_free:  # make the rows the free side
        ga, gb, unit_a, unit_b, g = gb, ga, unit_b, unit_a, g.T
    load = g.sum(1) if unit_a else ga * ga * g.sum(1)
    add_columns_(D[None], where.free_cols, load[None])
    add_columns_(D_fix[None], where.free_cols, load[None])
    return FixedBlock(where.free_cols, where.fixed_cols, g, None if unit_a else ga, None if unit_b else gb)


def assemble(cc: Compiled, u: torch.Tensor, beta: float | torch.Tensor = 0.0,
             target: torch.Tensor | None = None) -> Operators:
    """Quadratic part of the energy in the free voltages for one batch of sources u (B, n_src),
    V: D (diagonal, S), M (free-free couplings, S) and f_fixed (what the sources push in, A),
    plus the diodes. With a target (B, n_out), V, the EP nudge β·½‖V_out − y‖² (β in S, per
    sample or scalar) adds β to D and β·y to f_fixed at the outputs. ``cc.perturb``, if set,
    adds per-sample changes to D and f_fixed. The parameter-only parts come from the cache."""
    st = static_operators(cc)
    nf, dev, dt = cc.n_free, cc.device, cc.dtype
    B = u.shape[0]
    hit = cc.cache.get("sources")  # the free and nudged phases of an EP step share u
    if hit is not None and hit[0] is u and hit[1] == u._version and hit[2] is st:
        f, v_fixed, fixed_slots = hit[3]
    else:
        f, v_fixed, fixed_slots = _source_terms(st, u)
        cc.cache["sources"] = (u, u._version, st, (f, v_fixed, fixed_slots))
    D, D_fix = st.D[None].expand(B, -1), st.D_fix[None]
    if cc.perturb is not None:  # per-sample conductance changes towards fixed nodes (Compiled.perturb)
        dD, df = cc.perturb(u)
        D, D_fix, f = D + dD, D_fix + dD, f + df
    if target is not None and cc.outputs.numel():
        beta = torch.as_tensor(beta, dtype=dt, device=dev).reshape(-1, 1)
        r, go = cc.root[cc.outputs], st.gain[cc.outputs]
        if bool((r >= nf).any()):
            raise ValueError("an output node is fixed: it cannot be nudged")
        D = D.index_add(1, r, (beta * go * go).expand(B, -1))
        D_fix = D_fix.expand(B, -1).index_add(1, r, (beta * go * go).expand(B, -1))
        shift = 0.0 if st.offset is None else st.offset[cc.outputs]
        f = f.index_add(1, r, beta * go * (target - shift))
    return Operators(D, f, st.M, st.ff, D_fix, dataclasses.replace(st.dio, v_fixed=v_fixed, fixed_slots=fixed_slots))


def _source_terms(st: StaticOperators, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
    """What the sources u (B, n_src), V, contribute to a settle: the current f_fixed they push
    into each free root (B, n_free), A; the part of each diode's voltage they fix (B, n_d), V;
    and that part gathered into each colour's Slots (or None)."""
    ext_u = torch.cat([u, u.new_zeros(u.shape[0], 1)], dim=1)  # [u | ground], indexed by root - nf
    f = st.f_const.expand(u.shape[0], -1).clone() if st.K is None else ext_u @ st.K + st.f_const
    for blk in st.fixed_blocks:
        blk.add_inflow_(f, ext_u)
    v_fixed, fixed_slots = st.dio_fixed.voltages(ext_u, st.dio.slots, st.dio_offset)
    return f, v_fixed, fixed_slots


_DIODE_KEYS = ("IS:", "N:", "BV:", "IBV:", "a:")  # the parameters the diode set depends on (gains: "a:")


def _cached_diodes(cc: Compiled, gain: torch.Tensor, positions: list[torch.Tensor]):
    """:func:`_diodes`, cached in ``cc.cache`` apart from the rest of the static operators and
    keyed by the diodes' and amplifiers' parameters only: a training step that changes
    conductances alone does not rebuild it."""
    key = tuple((k, id(v), v._version) for k, v in cc.params.items() if k.startswith(_DIODE_KEYS))
    cached = cc.cache.get("diodes")
    if cached is None or cached[0] != key:
        cached = (key, _diodes(cc, gain, positions))
        cc.cache["diodes"] = cached
    return cached[1]


def _diodes(cc: Compiled, gain: torch.Tensor, positions: list[torch.Tensor]):
    """Concatenated diode parameters and incidences (overall and per colour), and the
    terminals on fixed nodes (:class:`FixedTerminals`)."""
    nf, p, dev, dt = cc.n_free, cc.params, cc.device, cc.dtype
    cat = lambda xs, dtype=dt: torch.cat(xs) if xs else torch.zeros(0, dtype=dtype, device=dev)
    anode = cat([d.anode for d in cc.diodes], torch.long)
    cathode = cat([d.cathode for d in cc.diodes], torch.long)
    IS = cat([p[f"IS:{d.name}"] for d in cc.diodes])
    nvt = cat([p[f"N:{d.name}"] * cc.vt for d in cc.diodes])
    xbv = breakdown_voltage(IS, nvt, cat([p[f"BV:{d.name}"] for d in cc.diodes]),
                            cat([p[f"IBV:{d.name}"] for d in cc.diodes]), cc.vt)
    xbv = xbv if bool(torch.isfinite(xbv).any()) else None  # the solvers skip the breakdown branch
    ideal = cat([torch.full((d.anode.numel(),), d.ideal, dtype=torch.bool, device=dev) for d in cc.diodes],
                torch.bool)
    index = torch.arange(anode.numel(), device=dev)
    inc_d, inc_root, inc_kap, fix_d, fix_idx, fix_kap = [], [], [], [], [], []
    for term, sign in ((anode, 1.0), (cathode, -1.0)):  # κ = ±gain of the terminal
        r, k = cc.root[term], sign * gain[term]
        free = r < nf
        inc_d.append(index[free]), inc_root.append(r[free]), inc_kap.append(k[free])
        fix_d.append(index[~free]), fix_idx.append(r[~free] - nf), fix_kap.append(k[~free])
    inc = Incidences(cat(inc_d, torch.long), cat(inc_root, torch.long), cat(inc_kap))
    is_ideal = ideal[inc.d]
    by_colour = [(inc.subset((pos[inc.root] >= 0) & ~is_ideal, pos), inc.subset((pos[inc.root] >= 0) & is_ideal, pos))
                 for pos in positions]
    empty = torch.zeros(1, anode.numel(), dtype=dt, device=dev)
    vcrit = nvt * torch.log(nvt / (math.sqrt(2.0) * IS))
    single = torch.bincount(inc.d, minlength=anode.numel()) == 1  # diodes with one free terminal
    slots = [_slots(shock, colour.numel(), single, IS, nvt, vcrit, xbv)
             for (shock, _), colour in zip(by_colour, cc.colours)]
    dio = DiodeSet(IS, nvt, xbv, vcrit, ideal, empty, inc, inc.subset(~is_ideal), inc.subset(is_ideal), by_colour,
                   slots, [None] * len(slots))
    fixed = FixedTerminals(cat(fix_d, torch.long), cat(fix_idx, torch.long), cat(fix_kap), anode.numel())
    return dio, fixed.with_slots(slots)


_BV_ITERATIONS = 25  # ngspice's cap on the breakdown-voltage iteration (diotemp.c)
_CUBIC = (3.0 / math.e) ** 3  # the reverse-bias cubic's constant, (3/e)³


def breakdown_voltage(IS: torch.Tensor, nvt: torch.Tensor, BV: torch.Tensor, IBV: torch.Tensor,
                      vt: float) -> torch.Tensor:
    """ngspice's effective breakdown voltage xbv (V) of diodes with saturation current IS (A),
    N·V_T = ``nvt`` (V), breakdown voltage BV (V; inf: none) and current IBV (A) at −BV; V_T =
    ``vt`` (V). ngspice 39 (``DIOtempUpdate`` in src/spicelib/devices/dio/diotemp.c, at
    TEMP = TNOM, breakdown emission coefficient NBV = N) shifts the knee so that the breakdown
    current meets IBV:

    * if IBV < IS·BV/V_T: xbv = BV;
    * else xbv₀ = BV − N·V_T·ln(1 + IBV/IS), then xbv ← BV − N·V_T·ln(IBV/IS + 1 − xbv/V_T),
      which solves IS·(exp((BV − xbv)/(N·V_T)) − 1 + xbv/V_T) = IBV.

    ngspice stops that iteration once the current is within RELTOL·IBV of IBV (at most 25
    steps); here all 25 are taken, so the knee agrees to within RELTOL·N·V_T (4.5e-11 V for
    N = 1.75 at the decks' reltol = 1e-9). Differentiable in all four parameters."""
    finite = torch.isfinite(BV)
    if not bool(finite.any()):
        return BV.clone()
    bv = torch.where(finite, BV, torch.ones_like(BV))
    adjusted = IBV >= IS * bv / vt
    cbv = torch.where(adjusted, IBV, IS * bv / vt)  # keeps the unused branch's logarithm finite
    xbv = bv - nvt * torch.log1p(cbv / IS)
    for _ in range(_BV_ITERATIONS):
        xbv = bv - nvt * torch.log(cbv / IS + 1 - xbv / vt)
    xbv = torch.where(adjusted, xbv, bv)
    return torch.where(finite, xbv, torch.full_like(xbv, math.inf))


def diode_iv(v: torch.Tensor, IS: torch.Tensor, nvt: torch.Tensor, xbv: torch.Tensor | None,
             inv_nvt: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Current I (A) and conductance dI/dv (S) of ngspice's DC diode law at diode voltages v (V),
    for saturation current IS (A), N·V_T = ``nvt`` (V) and effective breakdown voltage ``xbv``
    (V, from :func:`breakdown_voltage`; inf or None: no breakdown); ``inv_nvt`` = 1/nvt (V⁻¹)
    where the caller has it (a compiled kernel then multiplies instead of dividing per
    element). As ngspice 39 (``DIOload`` in src/spicelib/devices/dio/dioload.c, bottom
    junction):

    * forward, v ≥ −3·N·V_T: Shockley, IS·(exp(v/(N·V_T)) − 1);
    * reverse, −xbv ≤ v < −3·N·V_T: ngspice's cubic, −IS·(1 + (3·N·V_T/(e·v))³), which we
      follow rather than Shockley's −IS·(1 − exp(v/(N·V_T))) (they differ by up to ~5 % of IS,
      e.g. 58 µV across 10 MΩ for a 1N4148's IS = 2.5 nA);
    * breakdown, v < −xbv (and v < −3·N·V_T): −IS·exp(−(xbv + v)/(N·V_T)).

    I is non-decreasing in v (continuous with its slope at −3·N·V_T, an upward step of
    IS·(3·N·V_T/(e·xbv))³ at −xbv), so its integral, the co-content, is convex. Both exponentials
    are continued linearly beyond an exponent of 40 (a Newton safeguard: keeps the function
    convex and finite, and is inactive at any physical solution). SPICE's gmin is not included
    (the compiled circuit carries it as a conductance)."""
    inv = 1.0 / nvt if inv_nvt is None else inv_nvt
    x = v * inv
    fwd = x >= -3.0
    e = torch.exp(torch.clamp(x, min=-3.0, max=_EXP_MAX))
    r = 1.0 / torch.clamp(x, max=-3.0)  # N V_T / v where reverse biased
    cube = _CUBIC * r ** 3  # (3 N V_T / (e v))³ < 0
    current = IS * (torch.where(fwd, e * (1 + torch.clamp(x - _EXP_MAX, min=0.0)), -cube) - 1)
    conductance = IS * inv * torch.where(fwd, e, 3 * cube * r)
    if xbv is not None:
        y = torch.clamp(-(_finite(xbv) + v) * inv, min=0.0)  # the breakdown exponent, where it applies
        eb = torch.exp(torch.clamp(y, max=_EXP_MAX))
        brk = ~fwd & (v < -xbv)
        current = torch.where(brk, -IS * eb * (1 + torch.clamp(y - _EXP_MAX, min=0.0)), current)
        conductance = torch.where(brk, IS * inv * eb, conductance)
    return current, conductance


def _finite(xbv: torch.Tensor) -> torch.Tensor:
    """xbv with 0 where it is inf (no breakdown): keeps the unused breakdown branch finite."""
    return torch.where(torch.isfinite(xbv), xbv, torch.zeros_like(xbv))


def diode_cocontent(v: torch.Tensor, IS: torch.Tensor, nvt: torch.Tensor, xbv: torch.Tensor) -> torch.Tensor:
    """The co-content ∫₀^v I dv' (W) of :func:`diode_iv`'s law (without its linear continuations)
    at diode voltages v (V), for IS (A), N·V_T = ``nvt`` (V) and xbv (V; inf: no breakdown):
    convex, as I is non-decreasing. Per region, with v₀ = −3·N·V_T, c = 3·N·V_T/e and
    v_b = min(−xbv, v₀) where breakdown starts:

    * forward: IS·N·V_T·(exp(v/(N·V_T)) − 1) − IS·v;
    * reverse: E(v₀) − IS·(v − v₀) + ½·IS·c³·(v⁻² − v₀⁻²);
    * breakdown: E(v_b) + IS·N·V_T·(exp(−(xbv + v)/(N·V_T)) − exp(−(xbv + v_b)/(N·V_T)))."""
    v0 = -3 * nvt
    fwd = v >= v0
    brk = ~fwd & (v < -xbv)
    xb = _finite(xbv)
    vb = torch.minimum(-xb, v0)
    vf = torch.clamp(v, min=v0)  # every branch is evaluated everywhere: keep each finite
    e_fwd = IS * nvt * torch.expm1(vf / nvt) - IS * vf
    e0 = IS * nvt * (math.exp(-3.0) - 1) - IS * v0
    c3 = (-v0 / math.e) ** 3

    def reverse(x: torch.Tensor) -> torch.Tensor:
        return e0 - IS * (x - v0) + 0.5 * IS * c3 * (x ** -2 - v0 ** -2)

    e_rev = reverse(torch.clamp(v, max=v0))
    vbrk = torch.where(brk, v, vb)
    e_brk = reverse(vb) + IS * nvt * (torch.exp(-(xb + vbrk) / nvt) - torch.exp(-(xb + vb) / nvt))
    return torch.where(fwd, e_fwd, torch.where(brk, e_brk, e_rev))


def inflow(ops: Operators, s: torch.Tensor, colour: int | None = None,
           cols: Columns | None = None) -> torch.Tensor:
    """f = f_fixed + M s (A): the current each free root receives from everything but itself
    and its diodes; with ``colour`` (and its roots ``cols``), only that colour's rows."""
    if colour is None:
        return ops.f_fixed + ops.M @ s
    return ops.M.rows(colour, s, ops.f_fixed[:, cols])


def residual(cc: Compiled, ops: Operators, s: torch.Tensor, u: torch.Tensor, fused: bool = False,
             known: tuple[int, torch.Tensor] | None = None, proven: bool = False) -> torch.Tensor:
    """KCL residual r = ∂E/∂s (B, n_free), A: the current leaving each free node at voltages s
    (V) with sources u (V); projected to zero where an active ideal clamp can supply it.
    ``fused``: the node-by-node diode currents as one compiled kernel per colour. ``known``:
    (colour, its inflow at s, A), already computed (a BCD sweep's last colour: no other colour
    has moved since); with ``proven``, that colour's residual is known to be within tolerance
    (its last Newton step bounds it) and is not evaluated: its entries are 0."""
    dio = ops.dio
    if dio.shock.d.numel() and dio.slotted:  # colour by colour: D x − f + its diodes' currents, one pass
        r = torch.zeros_like(s) if proven else torch.empty_like(s)
        for c, (sl, w, cols) in enumerate(zip(dio.slots, dio.fixed_slots, ops.M.cols)):
            if proven and known[0] == c:
                continue
            f = known[1] if known is not None and known[0] == c else inflow(ops, s, c, cols)
            x, Dc = s[:, cols], ops.D[:, cols]
            set_columns_(r, cols, Dc * x - f if sl is None else _slot_residual(sl, w, x, Dc, f, fused=fused))
    else:
        r = ops.D * s - inflow(ops, s)
    if dio.shock.d.numel() and not dio.slotted:
        i, _ = diode_iv(dio.voltages(s), dio.IS, dio.nvt, dio.xbv)
        r = r.index_add(1, dio.shock.root, dio.shock.kap * i[:, dio.shock.d])
    if dio.clamps.d.numel():  # an active clamp (v ≈ 0) supplies whatever current pushes outward
        v = dio.voltages(s)
        scale = (cc.voltages(s, u).abs().amax(1, keepdim=True) + 1e-30) * 1e-12
        at = (v[:, dio.clamps.d] >= -scale).to(r.dtype)  # clamp at its bound
        push = torch.zeros_like(r).index_add(1, dio.clamps.root, at * torch.sign(dio.clamps.kap))
        r = torch.where((push > 0) & (r < 0) | (push < 0) & (r > 0), torch.zeros_like(r), r)
    return r


@fusable
def _slot_residual(sl: Slots, w: torch.Tensor, x: torch.Tensor, Dc: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """A colour's KCL residual D x − f + Σ κ·I (B, n_c), A: its nodes at voltages x (B, n_c), V,
    with conductance D (S) and inflow f (A), and the current its slotted diodes draw (fixed
    parts w (B, k, n_c), V)."""
    return sl.add(Dc * x - f, [sl.part("kap", g) * i for g, (_, i, _) in zip(sl.groups(), sl.currents(w, x))])


def _diode_entries(dio: DiodeSet, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The diodes' Hessian terms κ_p κ_q I′(v) (S) as COO triplets: rows, columns (n_k,) and
    values (B, n_k), one entry per pair of terminals of one diode. Ideal clamps: a ValueError
    (their energy is a bound, with no Hessian)."""
    if bool(dio.ideal.any()):
        raise ValueError("method='newton' does not handle ideal clamps: use method='bcd'")
    _, di = diode_iv(dio.voltages(s), dio.IS, dio.nvt, dio.xbv)
    inc = dio.inc
    same = inc.d[:, None] == inc.d[None, :]  # terminal pairs of one diode
    p, q = same.nonzero(as_tuple=True)
    return inc.root[p], inc.root[q], inc.kap[p] * inc.kap[q] * di[:, inc.d[p]]


def hessian_entries(ops: Operators, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Hessian ∂²E/∂s² at free voltages s (B, n_free), V, as COO triplets for a sparse
    factorisation: rows, columns (n_k,) and values (B, n_k) in S, duplicates to be summed
    (the same matrix as ``hessian``, without its n_free² storage)."""
    B, nf = s.shape
    diag = torch.arange(nf, device=s.device)
    m_rows, m_cols, m_vals = ops.M.entries()
    d_rows, d_cols, d_vals = _diode_entries(ops.dio, s)
    rows = torch.cat([diag, m_rows, d_rows])
    cols = torch.cat([diag, m_cols, d_cols])
    vals = torch.cat([ops.D.expand(B, -1), -m_vals.expand(B, -1), d_vals], dim=1)
    return rows, cols, vals


def hessian(ops: Operators, s: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dense Hessian ∂²E/∂s² (B, n_free, n_free), S, at free voltages s (V): conductances plus
    each Shockley diode's I′(v), its entries summed in ``dtype`` (default s's; float64 keeps
    a small conductance next to a large diode conductance in float32 circuits). Undefined
    for ideal clamps (a ValueError)."""
    B, nf = s.shape
    rows, cols, vals = hessian_entries(ops, s)
    dtype = s.dtype if dtype is None else dtype
    H = torch.zeros(B, nf * nf, dtype=dtype, device=s.device).index_add_(1, rows * nf + cols, vals.to(dtype))
    return H.reshape(B, nf, nf)

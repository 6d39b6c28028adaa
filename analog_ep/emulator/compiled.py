"""A Circuit turned into tensors: what the energy, the solvers and the EP rule work on.

Node voltages are expressed through a *root* vector ``ext = [s | u | 0]``: ``s`` the free node
voltages (the unknowns), ``u`` the source voltages (per sample: inputs, biases, targets) and
ground. Every node n is ``gain[n] * ext[root[n]]``; amplifier outputs are nodes whose root is
their input's root, which is exactly the amplifier's lossless change of variable.

Conductances, diode parameters, amplifier gains and source voltages live in ``params`` (torch
tensors) so that EP can differentiate the energy with respect to any of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import networkx as nx
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import torch

from ..circuit.constants import THERMAL_VOLTAGE
from ..circuit.ir import Amplifiers, Circuit, CircuitError, Conductances, CurrentSources, Diodes, Nudges, Role, VoltageSources
from ..circuit.builder import input_pairs
from ..circuit.transforms import expand_series_resistance


Columns = slice | torch.Tensor  # a set of columns: a slice where contiguous (views), else an index


def columns(idx: torch.Tensor) -> Columns:
    """``idx`` (1-D, ascending) as a slice where it is a contiguous range — selecting those
    columns is then a view, not a gather — else ``idx`` itself."""
    n = idx.numel()
    if n and int(idx[-1]) - int(idx[0]) == n - 1 and bool((idx[1:] > idx[:-1]).all()):
        return slice(int(idx[0]), int(idx[0]) + n)
    return idx


def add_columns_(out: torch.Tensor, cols: Columns, values: torch.Tensor) -> torch.Tensor:
    """out[:, cols] += values, in place (each column receives one addition either way)."""
    if isinstance(cols, slice):
        out[:, cols] += values
        return out
    return out.index_add_(1, cols, values)


def set_columns_(out: torch.Tensor, cols: Columns, values: torch.Tensor) -> torch.Tensor:
    """out[:, cols] = values, in place."""
    if isinstance(cols, slice):
        out[:, cols] = values
        return out
    return out.index_copy_(1, cols, values)


@dataclass
class Block:
    """One conductance group: dense (a: rows, b: cols, g: (m, n)) or sparse (a, b, g: (k,))."""

    name: str  # parameter key in Compiled.params
    a: torch.Tensor
    b: torch.Tensor
    dense: bool

    def __post_init__(self) -> None:
        # the terminals' node columns, as slices where contiguous (a dense block's rows and
        # columns usually are: gathering a layer's voltages is then a view)
        self.a_cols, self.b_cols = (columns(self.a), columns(self.b)) if self.dense else (self.a, self.b)


@dataclass
class DiodeGroup:
    name: str
    anode: torch.Tensor
    cathode: torch.Tensor
    ideal: bool


@dataclass
class Compiled:
    circuit: Circuit
    dtype: torch.dtype
    device: torch.device
    free: list[int]  # node index of each free voltage s_k
    sources: list[int]  # node index of each source voltage u_k
    root: torch.Tensor  # (n_nodes,) index into ext = [s | u | 0]
    amp_chain: list[tuple[torch.Tensor, torch.Tensor, str, torch.Tensor]]  # (out, inp, param key, index) by depth
    params: dict[str, torch.Tensor]
    blocks: list[Block]
    currents: list[tuple[torch.Tensor, str]]
    diodes: list[DiodeGroup]
    outputs: torch.Tensor  # node indices of the OUTPUT nodes (nudged in EP)
    colours: list[torch.Tensor]  # partition of range(n_free) into non-interacting sets
    gmin: float  # conductance across every junction, as SPICE adds it
    vt: float = THERMAL_VOLTAGE
    trainable: list[str] = field(default_factory=list)
    cache: dict = field(default_factory=dict, repr=False)  # solver operators, keyed by parameter versions
    # per-sample perturbation of the conductances towards fixed nodes (e.g. read noise of samples
    # read one after another): given the sources u (B, n_src) it returns (ΔD, Δf), each
    # (B, n_free), added to the diagonal conductance (S) and to the current the sources push into
    # each free root (A); the same u object must give the same draws (the solvers and the energy
    # see one perturbed circuit per settle)
    perturb: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)

    @property
    def n_free(self) -> int:
        return len(self.free)

    @property
    def n_src(self) -> int:
        return len(self.sources)

    def source_values(self, batch: int = 1) -> torch.Tensor:
        """The circuit's own source voltages, repeated over a batch: (batch, n_src)."""
        return self.params["u"].expand(batch, -1).clone()

    def inputs_to_sources(self, x: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
        """Source matrix (B, n_src) whose input sources are set from ``x`` (B, n_in).

        With ``names``, x's columns are those node names; otherwise a layered circuit's inputs
        (x{i}p = +x_i, x{i}n = -x_i)."""
        x = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        x = x.reshape(1, -1) if x.ndim == 1 else x
        u = self.source_values(x.shape[0])
        if names is not None:
            pos = self._source_positions()
            u[:, [pos[n] for n in names]] = x
            return u
        p, m = self._input_columns(x.shape[1])
        set_columns_(u, p, x)
        set_columns_(u, m, -x)
        return u

    def _source_positions(self) -> dict[str, int]:
        """Each source node's name -> its column in u (cached)."""
        if "source_pos" not in self.cache:
            self.cache["source_pos"] = {self.circuit.nodes[n]: k for k, n in enumerate(self.sources)}
        return self.cache["source_pos"]

    def _input_columns(self, n_in: int) -> tuple[Columns, Columns]:
        """The columns of u holding x{i}p and x{i}n, i < n_in, as slices where contiguous
        (cached per n_in; a CircuitError if the circuit lacks them)."""
        key = ("input_columns", n_in)
        if key not in self.cache:
            pos = self._source_positions()
            try:
                plus, minus = input_pairs(n_in)
                cols = [pos[n] for n in plus], [pos[n] for n in minus]
            except KeyError:
                raise CircuitError(f"the circuit has no x{{i}}p/x{{i}}n input pairs for {n_in} inputs; "
                                   "pass names=") from None
            self.cache[key] = tuple(columns(torch.as_tensor(c, dtype=torch.long, device=self.device)) for c in cols)
        return self.cache[key]

    def node_gain(self, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """gain[n] of every node: 1, or the product of amplifier gains along its chain."""
        params = self.params if params is None else params
        gain = torch.ones(len(self.circuit.nodes), dtype=self.dtype, device=self.device)
        for out, inp, key, idx in self.amp_chain:
            gain = gain.index_put((out,), params[key][idx] * gain[inp])
        return gain

    def node_offset(self, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor | None:
        """offset[n] of every node: amplifier output offsets ("off:<group>" parameters, a device
        non-ideality: V_out = A·V_in + V_off) carried along amplifier chains; None without any."""
        params = self.params if params is None else params
        if not any(k.startswith("off:") for k in params):
            return None
        off = torch.zeros(len(self.circuit.nodes), dtype=self.dtype, device=self.device)
        for out, inp, key, idx in self.amp_chain:
            extra = params.get("off:" + key[2:])
            off = off.index_put((out,), params[key][idx] * off[inp] + (0.0 if extra is None else extra[idx]))
        return off

    def voltages(self, s: torch.Tensor, u: torch.Tensor, gain: torch.Tensor | None = None,
                 params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """All node voltages (B, n_nodes) from free voltages s (B, n_free) and sources u (B, n_src);
        ``params`` overrides the circuit's own (whose gains and offsets are cached)."""
        if params is None:
            cached, offset = self.gain_and_offset()
            gain = cached if gain is None else gain
        else:
            gain, offset = (self.node_gain(params) if gain is None else gain), self.node_offset(params)
        zero = torch.zeros(s.shape[0], 1, dtype=s.dtype, device=s.device)
        ext = torch.cat([s, u.expand(s.shape[0], -1), zero], dim=1)
        return ext[:, self.root] * gain + (0.0 if offset is None else offset)

    def node_voltages(self, s: torch.Tensor, u: torch.Tensor, nodes: Columns) -> torch.Tensor:
        """Voltages (B, n), V, of the nodes ``nodes`` (node indices, or a slice of them) alone:
        ``voltages(s, u)[:, nodes]`` without gathering every node (a layer's nodes, whose roots
        are all free or all sources, are read from s or u directly)."""
        side, cols = self._read_plan(nodes)
        if side is None:  # ground or a mix
            return self.voltages(s, u)[:, nodes]
        ext = s if side == "free" else u.expand(s.shape[0], -1)
        gain, offset = self.gain_and_offset()
        V = ext[:, cols] * gain[nodes]
        return V if offset is None else V + offset[nodes]

    def _read_plan(self, nodes: Columns) -> tuple[str | None, Columns | None]:
        """Where :meth:`node_voltages` reads ``nodes`` from: ("free", their columns of s),
        ("source", their columns of u) or (None, None) for ground or a mix. Cached for a slice
        and for the outputs (the structure is fixed; working it out costs several syncs)."""
        key = ("read", (nodes.start, nodes.stop, nodes.step)) if isinstance(nodes, slice) else \
            ("read", "outputs") if nodes is self.outputs else None
        if key is not None and key in self.cache:
            return self.cache[key]
        root, nf = self.root[nodes], self.n_free
        if bool((root < nf).all()):
            plan = ("free", columns(root))
        elif bool(((root >= nf) & (root < nf + self.n_src)).all()):
            plan = ("source", columns(root - nf))
        else:
            plan = (None, None)
        if key is not None:
            self.cache[key] = plan
        return plan

    def gain_and_offset(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`node_gain` and :meth:`node_offset` of the present parameters, cached in
        ``cache`` until an amplifier's gain or offset tensor changes."""
        keys = self.cache.get("amp_keys")
        if keys is None:
            keys = self.cache["amp_keys"] = [k for k in self.params if k.startswith(("a:", "off:"))]
        key = tuple((id(self.params[k]), self.params[k]._version) for k in keys)
        hit = self.cache.get("gain")
        if hit is None or hit[0] != key:
            hit = self.cache["gain"] = (key, self.node_gain(), self.node_offset())
        return hit[1], hit[2]

    def to_circuit(self) -> Circuit:
        """The circuit with the present conductance values (e.g. after training)."""
        values = {b.name[2:]: self.params[b.name].detach().cpu().double().numpy() for b in self.blocks
                  if b.name.startswith("g:") and b.name[2:] in {g.name for g in self.circuit.groups(Conductances)}}
        return self.circuit.with_conductances(values)


def _colouring(n_free: int, edges: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Colour the free-node coupling graph: a bipartite graph (a layered net) gets its two
    sides, anything else networkx's greedy colouring. The bipartite test is vectorised (scipy's
    csgraph: a breadth-first search from the lowest node of each component, then the parity of
    each node's depth; a graph is bipartite iff every edge joins the two parities), so two dense
    1024-node layers (10⁶ edges) colour in milliseconds. Each component's lowest node is on
    side 1 and isolated nodes on side 0, as networkx's ``bipartite.color`` assigns them."""
    if n_free == 0:
        return []
    rows = np.concatenate([a for a, _ in edges] + [np.zeros(0, np.int64)])
    cols = np.concatenate([b for _, b in edges] + [np.zeros(0, np.int64)])
    graph = scipy.sparse.coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n_free, n_free)).tocsr()
    _, label = scipy.sparse.csgraph.connected_components(graph, directed=False)
    degree = np.bincount(rows, minlength=n_free) + np.bincount(cols, minlength=n_free)
    side = np.zeros(n_free, dtype=np.int64)  # isolated nodes stay on side 0
    depth = np.zeros(n_free, dtype=np.int64)
    coupled = np.flatnonzero(degree > 0)
    for root in coupled[np.unique(label[coupled], return_index=True)[1]]:  # each component's lowest node
        order, pred = scipy.sparse.csgraph.breadth_first_order(graph, root, directed=False)
        for v in order[1:]:
            depth[v] = depth[pred[v]] + 1
        side[order] = 1 - depth[order] % 2
    if bool(np.all(side[rows] != side[cols])):
        colour = side
    else:
        nx_graph = nx.Graph()
        nx_graph.add_nodes_from(range(n_free))
        nx_graph.add_edges_from(zip(rows.tolist(), cols.tolist()))
        greedy = nx.greedy_color(nx_graph, strategy="largest_first")
        colour = np.asarray([greedy[i] for i in range(n_free)], dtype=np.int64)
    return [np.flatnonzero(colour == c) for c in np.unique(colour)]


def compile_circuit(circuit: Circuit, *, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
                    gmin: float = 0.0) -> Compiled:
    """Tensors of ``circuit`` for the emulator. ``gmin`` adds SPICE's junction conductance
    across every diode (use the deck's gmin when comparing with ngspice)."""
    circuit = expand_series_resistance(circuit)
    device = torch.device(device)
    n_nodes = len(circuit.nodes)
    free = circuit.free_nodes()
    sources = circuit.source_node_list()
    dep = circuit.dependent_map()
    slot = {n: k for k, n in enumerate(free)}
    slot.update({n: len(free) + k for k, n in enumerate(sources)})
    ground_slot = len(free) + len(sources)
    slot[0] = ground_slot
    root = np.array([slot[dep[n][0]] if n in dep else slot[n] for n in range(n_nodes)], dtype=np.int64)
    t = lambda a, dt=dtype: torch.as_tensor(np.array(a), dtype=dt, device=device)
    params: dict[str, torch.Tensor] = {}

    u = np.zeros(len(sources))
    source_pos = {n: k for k, n in enumerate(sources)}
    for g in circuit.groups(VoltageSources):
        u[[source_pos[int(n)] for n in g.node]] = g.v
    params["u"] = t(u)

    # amplifier chains, resolved depth by depth so gains compose (and stay differentiable)
    direct = {}
    for g in circuit.groups(Amplifiers):
        params[f"a:{g.name}"] = t(g.gain)
        for k, (i, o) in enumerate(zip(g.inp.tolist(), g.out.tolist())):
            direct[o] = (i, f"a:{g.name}", k)
    depth = {}
    def _depth(n):
        if n not in depth:
            depth[n] = 0 if n not in direct else 1 + _depth(direct[n][0])
        return depth[n]
    amp_chain = []
    for d in sorted({_depth(o) for o in direct}):
        level = [o for o in direct if depth[o] == d]
        for key in sorted({direct[o][1] for o in level}):
            outs = [o for o in level if direct[o][1] == key]
            amp_chain.append((t(outs, torch.long), t([direct[o][0] for o in outs], torch.long), key,
                              t([direct[o][2] for o in outs], torch.long)))

    blocks, trainable, coupling = [], [], []
    is_free = lambda nodes: root[nodes] < len(free)

    def add_block(key, a, b, g, dense, train):
        params[key] = t(g)
        blocks.append(Block(key, t(a, torch.long), t(b, torch.long), dense))
        if train:
            trainable.append(key)
        ra, rb = np.broadcast_arrays(root[a][:, None], root[b][None, :]) if dense else (root[a], root[b])
        ra, rb = ra.ravel(), rb.ravel()
        both = (ra < len(free)) & (rb < len(free)) & (ra != rb)
        coupling.append((ra[both], rb[both]))

    for g in circuit.groups(Conductances):
        if g.dense and (len(set(is_free(g.a.ravel()))) > 1 or len(set(is_free(g.b.ravel()))) > 1):
            a, b, gv = g.edges()  # mixed free/fixed rows or columns: use the sparse path
            add_block(f"g:{g.name}", a, b, gv, False, g.trainable)
        elif g.dense:
            add_block(f"g:{g.name}", g.a.ravel(), g.b.ravel(), g.g, True, g.trainable)
        else:
            add_block(f"g:{g.name}", g.a, g.b, g.g, False, g.trainable)
    for g in circuit.groups(Nudges):
        add_block(f"g:{g.name}", g.node, g.target, g.beta, False, False)
    diodes = []
    for g in circuit.groups(Diodes):
        ra, rc = root[g.anode], root[g.cathode]
        if np.any(ra == rc):
            raise CircuitError(f"diodes {g.name!r}: both terminals depend on the same node")
        if g.ideal and np.any((ra < len(free)) & (rc < len(free))):
            raise CircuitError(f"ideal clamps {g.name!r}: each must join a free node to a fixed one "
                               "(use Shockley diodes between two free nodes)")
        params[f"IS:{g.name}"], params[f"N:{g.name}"] = t(g.IS), t(g.N)
        params[f"BV:{g.name}"], params[f"IBV:{g.name}"] = t(g.BV), t(g.IBV)  # V (inf: no breakdown), A
        diodes.append(DiodeGroup(g.name, t(g.anode, torch.long), t(g.cathode, torch.long), g.ideal))
        both = (ra < len(free)) & (rc < len(free))
        coupling.append((ra[both], rc[both]))
        if gmin > 0 and not g.ideal:
            add_block(f"gmin:{g.name}", g.anode, g.cathode, np.full(len(g), gmin), False, False)
    currents = []
    for g in circuit.groups(CurrentSources):
        params[f"I:{g.name}"] = t(g.i)
        currents.append((t(g.node, torch.long), f"I:{g.name}"))

    floating = _floating(circuit, root, len(free))
    if floating:
        raise CircuitError(f"free nodes with no conductive path to a source or ground: {floating[:5]}")
    colours = [t(c, torch.long) for c in _colouring(len(free), coupling)]
    outputs = t(circuit.nodes_with_role(Role.OUTPUT), torch.long)
    return Compiled(circuit, dtype, device, free, sources, t(root, torch.long), amp_chain, params, blocks,
                    currents, diodes, outputs, colours, gmin, trainable=trainable)


def _floating(circuit: Circuit, root: np.ndarray, n_free: int) -> list[str]:
    """Free nodes whose energy is not strictly convex: no resistive path to a fixed node.
    (Diodes count as conductive: SPICE's gmin and the exponential make them so.) Every fixed
    node is one vertex, n_free; the components come from scipy's csgraph (vectorised: a wide
    input layer's ~10⁵ edges to the sources cost milliseconds)."""
    ends = []
    for g in circuit.groups(Conductances):
        a, b, gv = g.edges()
        keep = gv > 0
        ends.append((root[a][keep], root[b][keep]))
    ends += [(root[g.node], root[g.target]) for g in circuit.groups(Nudges)]
    ends += [(root[g.anode], root[g.cathode]) for g in circuit.groups(Diodes)]
    rows = np.minimum(np.concatenate([a for a, _ in ends] + [np.zeros(0, np.int64)]), n_free)
    cols = np.minimum(np.concatenate([b for _, b in ends] + [np.zeros(0, np.int64)]), n_free)
    graph = scipy.sparse.coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n_free + 1, n_free + 1))
    _, label = scipy.sparse.csgraph.connected_components(graph, directed=False)
    free = circuit.free_nodes()
    return [circuit.nodes[free[k]] for k in np.flatnonzero(label[:n_free] != label[n_free])]

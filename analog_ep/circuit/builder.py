"""Build Circuits from a layer spec (the Kendall et al. 2020 layered circuit) or from any
symmetric weighted ``networkx`` graph.

Signed weights: a conductance only couples two voltages positively, so a weight w < 0 is
a conductance |w| to an *inverted* copy of one end: an inverting amplifier (gain -1) for a
free node, a negated voltage source for an input. Inputs come as (+x, -x) source pairs and
every weight of the layered circuit is a conductance pair (g+, g-), effective w = g+ - g-.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import networkx as nx
import numpy as np

from .ir import (
    GROUND,
    IBV_DEFAULT,
    Amplifiers,
    Circuit,
    CircuitError,
    Conductances,
    Diodes,
    NODE_NAME,
    Role,
    VoltageSources,
    is_ground_name,
)
from .units import parse_value


@dataclass(frozen=True)
class DiodeModel:
    """Clamp diode parameters: saturation current IS (A), emission coefficient N, series
    resistance RS (ohm), reverse breakdown voltage BV (V; inf: none) and the current IBV (A)
    at -BV, as in a SPICE ``.model D`` card. ``ideal=True`` is the emulator's limit model; IS
    and N are then what a SPICE export uses to approximate it."""

    IS: float = 1e-14
    N: float = 1.0
    RS: float = 0.0
    ideal: bool = False
    BV: float = math.inf
    IBV: float = IBV_DEFAULT

    @classmethod
    def parse(cls, text: str) -> "DiodeModel":
        """``"ideal"``, ``"IS,N"``, ``"IS,N,RS"``, ``"IS,N,RS,BV"`` or ``"IS,N,RS,BV,IBV"``
        (SI suffixes allowed)."""
        text = text.strip()
        if text.lower() == "ideal":
            return cls(ideal=True)
        parts = [p for p in text.split(",") if p.strip()]
        if not 2 <= len(parts) <= 5:
            raise ValueError(f"diode spec {text!r}: expected 'ideal', or 'IS,N' optionally followed by "
                             "',RS', ',BV', ',IBV'")
        return cls(**dict(zip(("IS", "N", "RS", "BV", "IBV"), (parse_value(p) for p in parts))))

    def describe(self) -> str:
        """``"ideal"`` or ``"IS=..,N=..,RS=.."`` (plus ``",BV=..,IBV=.."`` with breakdown), for headers."""
        if self.ideal:
            return "ideal"
        text = f"IS={self.IS:g},N={self.N:g},RS={self.RS:g}"
        return text + (f",BV={self.BV:g},IBV={self.IBV:g}" if math.isfinite(self.BV) else "")

    def group(self, name: str, anode, cathode) -> Diodes:
        return Diodes(name, anode, cathode, self.IS, self.N, self.RS, ideal=self.ideal, BV=self.BV, IBV=self.IBV)


def input_pairs(n_in: int) -> tuple[list[str], list[str]]:
    """The node names of a layered circuit's differential inputs: x{i}p carries +v_i, x{i}n −v_i."""
    return [f"x{i}p" for i in range(n_in)], [f"x{i}n" for i in range(n_in)]


def parse_layers(spec: str | Sequence[int]) -> list[int]:
    """``"784,100,10"`` -> [784, 100, 10]; at least an input and an output layer."""
    if isinstance(spec, str):
        try:
            sizes = [int(s) for s in spec.replace(" ", "").split(",") if s]
        except ValueError:
            raise ValueError(f"layer spec {spec!r}: expected comma-separated integers like 784,100,10") from None
    else:
        sizes = [int(s) for s in spec]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"layer spec {spec!r}: need >= 2 layers of size >= 1")
    return sizes


class _Nodes:
    """Accumulates node names and roles while a builder runs."""

    def __init__(self):
        self.names: list[str] = [GROUND]
        self.roles: list[Role] = [Role.GROUND]
        self.where: dict[str, int] = {GROUND: 0}

    def add(self, name: str, role: Role) -> int:
        if name in self.where:
            raise CircuitError(f"duplicate node name {name!r}")
        self.where[name] = len(self.names)
        self.names.append(name)
        self.roles.append(role)
        return self.where[name]

    def add_many(self, names: Sequence[str], role: Role) -> np.ndarray:
        return np.array([self.add(n, role) for n in names], dtype=np.int64)


def layered(
    sizes: str | Sequence[int],
    *,
    seed: int = 0,
    inputs: Sequence[float] | None = None,
    g_init: tuple[float, float] = (1e-7, 1e-5),
    amplifier_gain: float | None = None,
    diode: DiodeModel | None = DiodeModel(),
    clamp: tuple[float, float] = (0.0, 1.0),
    bias: bool = True,
    bias_voltage: float = 1.0,
) -> Circuit:
    """The layered circuit of Kendall et al. 2020 (2 x n_in input sources, hidden layers, outputs).

    * inputs x_i drive source pairs ``x{i}p`` = +x_i and ``x{i}n`` = -x_i (default: a random
      test pattern in [0, 1] drawn from ``seed``);
    * layer l is joined to layer l-1 by two trainable dense blocks ``w{l}p``/``w{l}n`` of
      conductances (uniform in ``g_init`` siemens) to the +copy and -copy of each lower node;
      a hidden node's -copy is an inverting amplifier, its +copy the node itself or, with
      ``amplifier_gain`` A, an amplifier of gain A (and the -copy then has gain -A);
    * with ``bias``, conductance pairs ``b{l}p``/``b{l}n`` to sources at +/-``bias_voltage``;
    * with ``diode``, every hidden and output node has two clamp diodes to sources at
      ``clamp`` = (low, high) volts: node -> high and low -> node.
    """
    sizes = parse_layers(sizes)
    lo, hi = g_init
    if not (0 <= lo <= hi) or not math.isfinite(hi):
        raise ValueError(f"g_init {g_init}: need 0 <= low <= high, in siemens")
    rng = np.random.default_rng(seed)
    n_in = sizes[0]
    x = rng.uniform(0.0, 1.0, n_in) if inputs is None else np.asarray(inputs, dtype=float).reshape(-1)
    if x.shape != (n_in,) or not np.all(np.isfinite(x)):
        raise ValueError(f"inputs: need {n_in} finite values")

    nodes = _Nodes()
    plus, minus = input_pairs(n_in)
    xp, xn = nodes.add_many(plus, Role.INPUT), nodes.add_many(minus, Role.INPUT)
    elements: list = [VoltageSources("x", np.concatenate([xp, xn]), np.concatenate([x, -x]),
                                     names=[f"V{n}" for n in plus + minus])]
    if bias:
        bp, bn = nodes.add("bp", Role.BIAS), nodes.add("bn", Role.BIAS)
        elements.append(VoltageSources("bias", [bp, bn], [bias_voltage, -bias_voltage], names=["Vbp", "Vbn"]))
    if diode is not None:
        c_lo, c_hi = nodes.add("clo", Role.BIAS), nodes.add("chi", Role.BIAS)
        elements.append(VoltageSources("clamp", [c_lo, c_hi], list(clamp), names=["Vclo", "Vchi"]))

    below_p, below_n = xp, xn
    n_layers = len(sizes) - 1
    for l in range(1, n_layers + 1):
        is_out = l == n_layers
        role = Role.OUTPUT if is_out else Role.HIDDEN
        names = [f"o{j}" if is_out else f"h{l}_{j}" for j in range(sizes[l])]
        here = nodes.add_many(names, role)
        m, n = len(below_p), sizes[l]
        for sign, below in (("p", below_p), ("n", below_n)):
            g = rng.uniform(lo, hi, (m, n))
            elements.append(Conductances(f"w{l}{sign}", below[:, None], here[None, :], g))
        if bias:
            for sign, src in (("p", bp), ("n", bn)):
                g = rng.uniform(lo, hi, (1, n))
                elements.append(Conductances(f"b{l}{sign}", np.array([[src]]), here[None, :], g))
        if diode is not None:
            elements.append(diode.group(f"d{l}hi", here, np.full(n, c_hi)))
            elements.append(diode.group(f"d{l}lo", np.full(n, c_lo), here))
        if not is_out:
            gain = 1.0 if amplifier_gain is None else float(amplifier_gain)
            copies_n = nodes.add_many([f"{s}n" for s in names], Role.INTERNAL)
            amp_in, amp_out, gains = [here], [copies_n], [np.full(n, -gain)]
            if amplifier_gain is None:
                copies_p = here
            else:
                copies_p = nodes.add_many([f"{s}p" for s in names], Role.INTERNAL)
                amp_in.append(here)
                amp_out.append(copies_p)
                gains.append(np.full(n, gain))
            elements.append(Amplifiers(f"a{l}", np.concatenate(amp_in), np.concatenate(amp_out), np.concatenate(gains)))
            below_p, below_n = copies_p, copies_n

    desc = ",".join(map(str, sizes))
    meta = dict(kind="layered", layers=desc, seed=seed, g_init=list(g_init), amplifier_gain=amplifier_gain,
                diode=None if diode is None else diode.describe(),
                clamp=list(clamp), bias=bias, phase="free")
    return Circuit(tuple(nodes.names), tuple(nodes.roles), tuple(elements),
                   title=f"analog-ep layered network {desc} (seed {seed})", meta=meta)


_FIXED_ROLES = {Role.INPUT: "input", Role.BIAS: "bias"}
_GRAPH_ROLES = {r.value: r for r in (Role.INPUT, Role.BIAS, Role.HIDDEN, Role.OUTPUT)}


def from_graph(
    graph: nx.Graph,
    *,
    diode: DiodeModel | None = None,
    clamp: tuple[float, float] = (0.0, 1.0),
    title: str | None = None,
) -> Circuit:
    """A Circuit from an undirected graph whose edges carry a signed ``weight`` (siemens) and
    whose nodes carry a ``role`` (input, bias, hidden, output). Input and bias nodes carry
    their voltage ``v`` (default 0). A ``DiGraph`` is accepted when it is symmetric.

    A negative weight between two free nodes uses an inverting amplifier copy ``{v}_inv`` of
    the second node; between a free and a fixed node, a negated source ``{fixed}_neg``. With
    ``diode``, hidden and output nodes get two clamp diodes to sources at ``clamp`` (unless the
    node has ``clamp=False``)."""
    if graph.is_multigraph():
        raise CircuitError("multigraphs are not supported: merge parallel edges into one weight")
    edges: dict[frozenset, float] = {}
    for u, v, data in graph.edges(data=True):
        if u == v:
            raise CircuitError(f"self-loop on node {u!r}: a weight needs two different nodes")
        if "weight" not in data:
            raise CircuitError(f"edge ({u!r}, {v!r}) has no 'weight'")
        w = float(data["weight"])
        if not math.isfinite(w):
            raise CircuitError(f"edge ({u!r}, {v!r}) has a non-finite weight {w}")
        key = frozenset((u, v))
        if graph.is_directed() and key in edges and edges[key] != w:
            raise CircuitError(f"asymmetric weights: ({v!r}->{u!r}) = {edges[key]} but ({u!r}->{v!r}) = {w}")
        edges[key] = w
    if graph.is_directed():
        for u, v in graph.edges():
            if not graph.has_edge(v, u):
                raise CircuitError(f"asymmetric graph: edge ({u!r}->{v!r}) has no reverse edge")

    nodes = _Nodes()
    index: dict[object, int] = {}
    src_nodes, src_vals, src_names = [], [], []
    for n, data in graph.nodes(data=True):
        name = str(n)
        if not NODE_NAME.match(name):
            raise CircuitError(f"node name {name!r}: use letters, digits and '_'")
        if is_ground_name(name):
            raise CircuitError(f"node name {name!r} is reserved: SPICE reads '0' and 'gnd' (any case) as ground, "
                               "so this node would be shorted to ground; rename it")
        role = data.get("role")
        if role not in _GRAPH_ROLES:
            raise CircuitError(f"node {name!r} has role {role!r}; expected one of {sorted(_GRAPH_ROLES)}")
        role = _GRAPH_ROLES[role]
        index[n] = nodes.add(name, role)
        if role in _FIXED_ROLES:
            v = float(data.get("v", 0.0))
            if not math.isfinite(v):
                raise CircuitError(f"node {name!r}: non-finite voltage {v}")
            src_nodes.append(index[n])
            src_vals.append(v)
            src_names.append(f"V{name}")
    fixed_v = dict(zip(src_nodes, src_vals))

    a, b, g = [], [], []
    inv_in, inv_out = [], []
    inverted: dict[int, int] = {}

    def negated(i: int) -> int:
        if i not in inverted:
            if i in fixed_v:
                j = nodes.add(f"{nodes.names[i]}_neg", nodes.roles[i])
                src_nodes.append(j)
                src_vals.append(-fixed_v[i])
                src_names.append(f"V{nodes.names[j]}")
            else:
                j = nodes.add(f"{nodes.names[i]}_inv", Role.INTERNAL)
                inv_in.append(i)
                inv_out.append(j)
            inverted[i] = j
        return inverted[i]

    for key, w in edges.items():
        u, v = sorted((index[n] for n in key))
        if u in fixed_v and v in fixed_v:
            raise CircuitError(f"edge between two fixed nodes {nodes.names[u]!r}-{nodes.names[v]!r} has no effect")
        if w == 0:
            continue
        if w < 0:
            if u in fixed_v:  # invert the fixed end: a source pair costs no amplifier
                u, v = v, u
            v = negated(v)
        a.append(u)
        b.append(v)
        g.append(abs(w))

    elements: list = []
    if src_nodes:
        elements.append(VoltageSources("src", src_nodes, src_vals, names=src_names))
    elements.append(Conductances("w", a, b, g))
    if inv_in:
        elements.append(Amplifiers("inv", inv_in, inv_out, -1.0))
    if diode is not None:
        clamped = [index[n] for n, d in graph.nodes(data=True)
                   if nodes.roles[index[n]] in (Role.HIDDEN, Role.OUTPUT) and d.get("clamp", True)]
        if clamped:
            c_lo, c_hi = nodes.add("clo", Role.BIAS), nodes.add("chi", Role.BIAS)
            elements.append(VoltageSources("clamp", [c_lo, c_hi], list(clamp), names=["Vclo", "Vchi"]))
            elements.append(diode.group("dhi", clamped, [c_hi] * len(clamped)))
            elements.append(diode.group("dlo", [c_lo] * len(clamped), clamped))
    return Circuit(tuple(nodes.names), tuple(nodes.roles), tuple(elements),
                   title=title or f"analog-ep graph network ({graph.number_of_nodes()} nodes, {len(edges)} edges)",
                   meta=dict(kind="graph", phase="free"))

"""Circuit IR: the single description of a circuit that both the SPICE exporter and the
emulator read, so "SPICE vs emulator" compares the same circuit by construction.

Nodes are named and carry a :class:`Role`. Elements come in vectorised groups (one group per
kind of element and purpose) because real networks have 10^5-10^6 resistors: a group stores
index arrays and parameter arrays, never one Python object per element.

All values are SI: siemens, volts, amperes. Arrays are copied on construction and made
read-only, so a Circuit is immutable; training produces new Circuits with
:meth:`Circuit.with_conductances`.
"""
from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, Mapping, Sequence

import numpy as np

GROUND = "0"
IBV_DEFAULT = 1e-3  # A: SPICE's current at the breakdown voltage -BV when a model card gives none
NODE_NAME = re.compile(r"^[A-Za-z0-9_]+$")
"""What a node name may contain: letters, digits and '_' (safe in any SPICE deck)."""
_GROUP_NAME = re.compile(r"^[A-Za-z0-9_]*$")


def is_ground_name(name: str) -> bool:
    """Whether SPICE reads ``name`` as the ground node: ``0``, or ``gnd`` in any case (ngspice
    shorts every ``gnd``/``GND`` node to ground). Such names are reserved for node 0."""
    return name.lower() in (GROUND, "gnd")


class Role(str, enum.Enum):
    """What a node is for. Fixed roles are held by a voltage source; free roles are unknowns."""

    GROUND = "ground"
    INPUT = "input"
    BIAS = "bias"
    TARGET = "target"
    HIDDEN = "hidden"
    OUTPUT = "output"
    INTERNAL = "internal"  # amplifier outputs, inverted copies: set by another node


class CircuitError(ValueError):
    """A circuit that is not physically or structurally valid."""


def _frozen(a, dtype) -> np.ndarray:
    arr = np.array(a, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return arr


def _names(names: Sequence[str] | None, n: int, what: str) -> tuple[str, ...] | None:
    if names is None:
        return None
    names = tuple(str(s) for s in names)
    if len(names) != n:
        raise CircuitError(f"{what}: {len(names)} names for {n} elements")
    return names


@dataclass(frozen=True)
class Conductances:
    """Linear conductances g >= 0 between nodes a and b (a resistor of 1/g ohm each).

    ``a``, ``b`` and ``g`` broadcast together: 1-D arrays of equal length describe a sparse
    edge list; ``a`` of shape (m, 1), ``b`` of shape (1, n) and ``g`` of shape (m, n) describe
    a dense bipartite block (a layer), which the emulator turns into one matmul.
    Elements with g == 0 are open circuits and are not exported.
    """

    name: str
    a: np.ndarray
    b: np.ndarray
    g: np.ndarray
    trainable: bool = True
    names: tuple[str, ...] | None = None  # explicit element names (imported decks)

    def __post_init__(self):
        object.__setattr__(self, "a", _frozen(self.a, np.int64))
        object.__setattr__(self, "b", _frozen(self.b, np.int64))
        object.__setattr__(self, "g", _frozen(self.g, np.float64))
        try:
            shape = np.broadcast_shapes(self.a.shape, self.b.shape, self.g.shape)
        except ValueError as e:
            raise CircuitError(f"conductance group {self.name!r}: shapes do not match") from e
        if shape != self.g.shape or self.g.ndim not in (1, 2):
            raise CircuitError(f"conductance group {self.name!r}: g must have the full 1-D or 2-D shape")
        if not np.all(np.isfinite(self.g)) or np.any(self.g < 0):
            raise CircuitError(f"conductance group {self.name!r}: conductances must be finite and >= 0")
        object.__setattr__(self, "names", _names(self.names, self.g.size, self.name))

    kind: ClassVar[str] = "conductances"

    def __len__(self) -> int:
        return int(self.g.size)

    @property
    def dense(self) -> bool:
        return self.g.ndim == 2

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flattened (a, b, g) of every element, dense blocks included."""
        a, b = np.broadcast_arrays(self.a, self.b)
        return a.reshape(-1), b.reshape(-1), self.g.reshape(-1)


@dataclass(frozen=True)
class VoltageSources:
    """Ideal sources from ground to ``node``: these nodes are fixed, not unknowns."""

    name: str
    node: np.ndarray
    v: np.ndarray
    names: tuple[str, ...] | None = None

    kind: ClassVar[str] = "sources"

    def __len__(self) -> int:
        return int(self.v.size)

    def __post_init__(self):
        object.__setattr__(self, "node", _frozen(self.node, np.int64).reshape(-1))
        object.__setattr__(self, "v", _frozen(self.v, np.float64).reshape(-1))
        if self.node.shape != self.v.shape or not np.all(np.isfinite(self.v)):
            raise CircuitError(f"voltage sources {self.name!r}: need one finite value per node")
        object.__setattr__(self, "names", _names(self.names, self.v.size, self.name))


@dataclass(frozen=True)
class CurrentSources:
    """Ideal currents ``i`` injected from ground into ``node`` (co-content -i V)."""

    name: str
    node: np.ndarray
    i: np.ndarray
    names: tuple[str, ...] | None = None

    kind: ClassVar[str] = "currents"

    def __len__(self) -> int:
        return int(self.i.size)

    def __post_init__(self):
        object.__setattr__(self, "node", _frozen(self.node, np.int64).reshape(-1))
        object.__setattr__(self, "i", _frozen(self.i, np.float64).reshape(-1))
        if self.node.shape != self.i.shape or not np.all(np.isfinite(self.i)):
            raise CircuitError(f"current sources {self.name!r}: need one finite value per node")
        object.__setattr__(self, "names", _names(self.names, self.i.size, self.name))


@dataclass(frozen=True)
class Diodes:
    """Junction diodes anode -> cathode: ngspice's level-1 diode at DC, I = IS (exp(v / (N V_T)) - 1)
    in forward bias, with optional series resistance RS (ohm) and reverse breakdown at BV volts
    (IBV amperes flow at -BV); the emulator's ``diode_iv`` states the law in every region.

    ``ideal`` marks the emulator's limit model (an ideal clamp: V_anode <= V_cathode, no
    current otherwise); SPICE cannot express it and exports it as a Shockley diode with the
    given IS, N, so give an ideal clamp a steep IS/N if it is to be simulated.
    Parameters are per diode so that device-to-device spread can be represented. ``BV`` = inf
    means no breakdown (the SPICE default); ``IBV`` defaults to ngspice's 1 mA.
    ``non_dc`` keeps, per diode, the model-card parameters that do not change the DC operating
    point (charge storage, noise, temperature coefficients at TNOM = TEMP) as (NAME, value)
    pairs in SI units, so that an imported ``.model`` card is written back whole.
    """

    name: str
    anode: np.ndarray
    cathode: np.ndarray
    IS: np.ndarray
    N: np.ndarray
    RS: np.ndarray
    ideal: bool = False
    names: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None  # .model names from an imported deck
    BV: np.ndarray | float = np.inf
    IBV: np.ndarray | float = IBV_DEFAULT
    non_dc: tuple[tuple[tuple[str, float], ...], ...] | None = None

    kind: ClassVar[str] = "diodes"

    def __len__(self) -> int:
        return int(self.anode.size)

    def __post_init__(self):
        n = np.size(self.anode)
        for f, dt in (("anode", np.int64), ("cathode", np.int64), ("IS", np.float64), ("N", np.float64),
                      ("RS", np.float64), ("BV", np.float64), ("IBV", np.float64)):
            arr = np.broadcast_to(np.asarray(getattr(self, f), dtype=dt), (n,))
            object.__setattr__(self, f, _frozen(arr, dt))
        if not (np.all(self.IS > 0) and np.all(self.N > 0) and np.all(self.RS >= 0)):
            raise CircuitError(f"diodes {self.name!r}: need IS > 0, N > 0, RS >= 0")
        if not (np.all(np.isfinite(self.IS)) and np.all(np.isfinite(self.N)) and np.all(np.isfinite(self.RS))):
            raise CircuitError(f"diodes {self.name!r}: parameters must be finite")
        if not (np.all(self.BV > 0) and np.all(self.IBV > 0) and np.all(np.isfinite(self.IBV))):
            raise CircuitError(f"diodes {self.name!r}: need BV > 0 (inf: no breakdown) and a finite IBV > 0")
        object.__setattr__(self, "names", _names(self.names, n, self.name))
        object.__setattr__(self, "models", _names(self.models, n, self.name))
        if self.non_dc is not None:
            if len(self.non_dc) != n:
                raise CircuitError(f"diodes {self.name!r}: {len(self.non_dc)} non-DC parameter sets for {n} diodes")
            memo: dict[int, tuple[tuple[str, float], ...]] = {}  # diodes of one model share one tuple
            for p in self.non_dc:
                if id(p) not in memo:
                    memo[id(p)] = tuple((str(k), float(v)) for k, v in p)
            object.__setattr__(self, "non_dc", tuple(memo[id(p)] for p in self.non_dc))


@dataclass(frozen=True)
class Amplifiers:
    """Bidirectional amplifiers (ideal transformers): V_out = A V_in and I_in = A I_out.

    Lossless, so they add no co-content: every element on the output side simply sees
    A V_in. A = -1 gives the inverted copy of a node used for negative weights. In SPICE:
    a VCVS (E) of gain A, a 0 V sense source, and a CCCS (F) of gain A on the input.
    """

    name: str
    inp: np.ndarray
    out: np.ndarray
    gain: np.ndarray
    names: tuple[str, ...] | None = None

    kind: ClassVar[str] = "amplifiers"

    def __len__(self) -> int:
        return int(self.inp.size)

    def __post_init__(self):
        n = np.size(self.inp)
        object.__setattr__(self, "inp", _frozen(self.inp, np.int64).reshape(-1))
        object.__setattr__(self, "out", _frozen(self.out, np.int64).reshape(-1))
        object.__setattr__(self, "gain", _frozen(np.broadcast_to(np.asarray(self.gain, float), (n,)), np.float64))
        if self.out.shape != self.inp.shape or not np.all(np.isfinite(self.gain)) or np.any(self.gain == 0):
            raise CircuitError(f"amplifiers {self.name!r}: need finite non-zero gains, one per pair")
        object.__setattr__(self, "names", _names(self.names, n, self.name))


@dataclass(frozen=True)
class Nudges:
    """The EP nudge: a conductance ``beta`` from ``node`` (an output) to ``target`` (a fixed
    node holding y). Its co-content ½β(V - y)² is exactly β times the MSE cost."""

    name: str
    node: np.ndarray
    target: np.ndarray
    beta: np.ndarray

    kind: ClassVar[str] = "nudges"

    def __len__(self) -> int:
        return int(self.node.size)

    def __post_init__(self):
        n = np.size(self.node)
        object.__setattr__(self, "node", _frozen(self.node, np.int64).reshape(-1))
        object.__setattr__(self, "target", _frozen(self.target, np.int64).reshape(-1))
        object.__setattr__(self, "beta", _frozen(np.broadcast_to(np.asarray(self.beta, float), (n,)), np.float64))
        if self.target.shape != self.node.shape or not np.all(np.isfinite(self.beta)) or np.any(self.beta < 0):
            raise CircuitError(f"nudges {self.name!r}: need finite beta >= 0, one per output")


Element = Conductances | VoltageSources | CurrentSources | Diodes | Amplifiers | Nudges


@dataclass(frozen=True)
class Circuit:
    """Nodes (index 0 is ground) and element groups, plus free-form metadata for headers."""

    nodes: tuple[str, ...]
    roles: tuple[Role, ...]
    elements: tuple[Element, ...]
    title: str = "analog-ep circuit"
    meta: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "roles", tuple(Role(r) for r in self.roles))
        object.__setattr__(self, "elements", tuple(self.elements))
        object.__setattr__(self, "meta", dict(self.meta))
        self._validate()

    # ------------------------------------------------------------------ structure
    def _validate(self) -> None:
        n = len(self.nodes)
        if n == 0 or self.nodes[0] != GROUND or self.roles[0] is not Role.GROUND:
            raise CircuitError("node 0 must be ground, named '0'")
        if len(self.roles) != n:
            raise CircuitError("one role per node is required")
        if len(set(self.nodes)) != n:
            dup = sorted({s for s in self.nodes if self.nodes.count(s) > 1})
            raise CircuitError(f"duplicate node names: {dup[:5]}")
        if len({s.lower() for s in self.nodes}) != n:
            raise CircuitError("node names must be unique ignoring case (SPICE is case-insensitive)")
        bad = [s for s in self.nodes if not NODE_NAME.match(s)]
        if bad:
            raise CircuitError(f"node names must be letters, digits and '_': {bad[:5]}")
        grounds = [s for s in self.nodes[1:] if is_ground_name(s)]
        if grounds:
            raise CircuitError(f"node name {grounds[0]!r} is reserved: SPICE reads '0' and 'gnd' (any case) as ground")
        if any(r is Role.GROUND for r in self.roles[1:]):
            raise CircuitError("only node 0 may have the ground role")
        group_names = [e.name for e in self.elements]
        if len(set((type(e), e.name) for e in self.elements)) != len(group_names):
            raise CircuitError("element group names must be unique per kind")
        for e in self.elements:
            if not _GROUP_NAME.match(e.name):
                raise CircuitError(f"group name {e.name!r}: letters, digits and '_' only")
            for f in dataclasses.fields(e):
                if f.name in ("a", "b", "node", "target", "anode", "cathode", "inp", "out"):
                    idx = getattr(e, f.name)
                    if idx.size and (idx.min() < 0 or idx.max() >= n):
                        raise CircuitError(f"group {e.name!r}: node index out of range")
        fixed = self.source_node_list()
        if len(set(fixed)) != len(fixed):
            raise CircuitError("a node is driven by more than one voltage source")
        if GROUND_INDEX in fixed:
            raise CircuitError("a voltage source may not drive ground")
        outs = [int(o) for g in self.groups(Amplifiers) for o in g.out]
        if len(set(outs)) != len(outs) or set(outs) & set(fixed) or GROUND_INDEX in outs:
            raise CircuitError("an amplifier output must be a node driven by nothing else")
        for g in self.groups(Conductances):
            if np.any(np.broadcast_arrays(g.a, g.b)[0] == np.broadcast_arrays(g.a, g.b)[1]):
                raise CircuitError(f"conductance group {g.name!r}: self-loop")
        for g in self.groups(Nudges):
            if not set(g.target.tolist()) <= set(fixed):
                raise CircuitError(f"nudges {g.name!r}: targets must be voltage-source nodes")
        self.dependent_map()  # raises on amplifier loops

    def groups(self, kind: type) -> Iterator:
        return (e for e in self.elements if isinstance(e, kind))

    def group(self, kind: type, name: str):
        for e in self.groups(kind):
            if e.name == name:
                return e
        raise KeyError(f"no {kind.__name__} group named {name!r}")

    def index(self, name: str) -> int:
        try:
            return self.nodes.index(name)
        except ValueError:
            raise KeyError(f"no node named {name!r}") from None

    def source_node_list(self) -> list[int]:
        return [int(i) for g in self.groups(VoltageSources) for i in g.node]

    def fixed_voltages(self) -> dict[int, float]:
        """Node index -> voltage for every source-driven node."""
        return {int(i): float(v) for g in self.groups(VoltageSources) for i, v in zip(g.node, g.v)}

    def dependent_map(self) -> dict[int, tuple[int, float]]:
        """Amplifier output -> (root node, total gain), following chains of amplifiers.

        The root is a free node, a fixed node or ground; a loop of amplifiers is an error."""
        direct = {int(o): (int(i), float(a)) for g in self.groups(Amplifiers) for i, o, a in zip(g.inp, g.out, g.gain)}
        out: dict[int, tuple[int, float]] = {}
        for node in direct:
            gain, cur, seen = 1.0, node, set()
            while cur in direct:
                if cur in seen:
                    raise CircuitError(f"amplifier loop through node {self.nodes[cur]!r}")
                seen.add(cur)
                cur, a = direct[cur]
                gain *= a
            out[node] = (cur, gain)
        return out

    def free_nodes(self) -> list[int]:
        """Indices of the unknown node voltages: not ground, not sources, not amplifier outputs."""
        fixed = set(self.source_node_list()) | set(self.dependent_map()) | {GROUND_INDEX}
        return [i for i in range(len(self.nodes)) if i not in fixed]

    def nodes_with_role(self, role: Role | str) -> list[int]:
        role = Role(role)
        return [i for i, r in enumerate(self.roles) if r is role]

    # ------------------------------------------------------------------ derived circuits
    def replace(self, **changes) -> "Circuit":
        return dataclasses.replace(self, **changes)

    def with_conductances(self, values: Mapping[str, np.ndarray]) -> "Circuit":
        """A copy whose named conductance groups take new values (same shapes)."""
        unknown = set(values) - {g.name for g in self.groups(Conductances)}
        if unknown:
            raise KeyError(f"no conductance groups {sorted(unknown)}")
        new = []
        for e in self.elements:
            if isinstance(e, Conductances) and e.name in values:
                g = np.asarray(values[e.name], dtype=np.float64)
                if g.shape != e.g.shape:
                    raise CircuitError(f"group {e.name!r}: shape {g.shape} != {e.g.shape}")
                e = dataclasses.replace(e, g=g)
            new.append(e)
        return self.replace(elements=tuple(new))

    def with_sources(self, values: Mapping[str, float]) -> "Circuit":
        """A copy with new voltages on source-driven nodes, given by node name."""
        idx = {self.index(k): float(v) for k, v in values.items()}
        fixed = set(self.source_node_list())
        if not set(idx) <= fixed:
            bad = [self.nodes[i] for i in set(idx) - fixed]
            raise CircuitError(f"not source-driven nodes: {bad[:5]}")
        new = []
        for e in self.elements:
            if isinstance(e, VoltageSources) and any(int(i) in idx for i in e.node):
                v = np.array([idx.get(int(i), float(x)) for i, x in zip(e.node, e.v)])
                e = dataclasses.replace(e, v=v)
            new.append(e)
        return self.replace(elements=tuple(new))

    def nudged(self, targets: Mapping[str, float] | Sequence[float], beta: float, name: str = "nudge") -> "Circuit":
        """The nudged-phase circuit: each output gets a conductance ``beta`` to a new target
        source at y. ``targets`` maps output node names to y, or lists y for every output
        node in order."""
        outputs = self.nodes_with_role(Role.OUTPUT)
        if isinstance(targets, Mapping):
            pairs = [(self.index(k), float(v)) for k, v in targets.items()]
            if any(self.roles[i] is not Role.OUTPUT for i, _ in pairs):
                raise CircuitError("targets may only be set on output nodes")
        else:
            ys = [float(v) for v in targets]
            if len(ys) != len(outputs):
                raise CircuitError(f"{len(ys)} targets for {len(outputs)} output nodes")
            pairs = list(zip(outputs, ys))
        if not pairs:
            raise CircuitError("the circuit has no output nodes to nudge")
        if not np.isfinite(beta) or beta < 0:
            raise CircuitError("beta must be a finite conductance >= 0")
        nodes, roles = list(self.nodes), list(self.roles)
        tnodes = []
        for i, _ in pairs:
            tname = f"t_{self.nodes[i]}"
            if tname in nodes:
                raise CircuitError(f"node {tname!r} exists already: circuit is already nudged?")
            nodes.append(tname)
            roles.append(Role.TARGET)
            tnodes.append(len(nodes) - 1)
        ys = [y for _, y in pairs]
        outs = [i for i, _ in pairs]
        elements = self.elements + (
            VoltageSources(f"{name}_t", tnodes, ys),
            Nudges(name, outs, tnodes, beta),
        )
        meta = dict(self.meta, phase="nudged", beta=float(beta))
        return Circuit(tuple(nodes), tuple(roles), elements, self.title, meta)

    def element_counts(self) -> dict[str, int]:
        """How many elements of each kind the circuit has, in the order they first appear."""
        counts: dict[str, int] = {}
        for e in self.elements:
            counts[e.kind] = counts.get(e.kind, 0) + len(e)
        return counts

    def summary(self) -> str:
        parts = ", ".join(f"{v} {k.lower()}" for k, v in self.element_counts().items())
        return f"{len(self.nodes)} nodes ({len(self.free_nodes())} free); {parts}"


GROUND_INDEX = 0

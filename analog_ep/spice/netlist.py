"""Circuit -> SPICE deck text (ngspice syntax, SPICE3-compatible element lines).

The deck carries only element lines, ``.model``, ``.options`` and ``.op`` -- never a
``.control`` block. Structured comments (``*@ group``, ``*@ role``) let :mod:`.parser` rebuild
the same element groups and node roles, so export -> import -> export is the identity.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Iterator, Mapping


from ..circuit.ir import (
    GROUND_INDEX,
    IBV_DEFAULT,
    Amplifiers,
    Circuit,
    CircuitError,
    Conductances,
    CurrentSources,
    Diodes,
    Nudges,
    Role,
    VoltageSources,
)
from ..circuit.units import format_value

# Tight enough for microvolt agreement with the emulator; gmin is the conductance ngspice
# puts across every junction, which the emulator models when comparing.
DEFAULT_OPTIONS: dict[str, str] = {"reltol": "1e-9", "abstol": "1e-15", "vntol": "1e-12", "gmin": "1e-15", "itl1": "1000"}
DERIVED_META = ("circuit",)  # header keys regenerated on every export
_NAMES_PER_LINE = 16


def inferred_roles(n_nodes: int, driven: Iterable[int], targets: Iterable[int], amp_outs: Iterable[int]) -> list[Role]:
    """The role a deck implies for each node when it carries no ``*@ role`` line."""
    roles = [Role.HIDDEN] * n_nodes
    roles[GROUND_INDEX] = Role.GROUND
    for i in driven:
        roles[i] = Role.INPUT
    for i in targets:
        roles[i] = Role.TARGET
    for i in amp_outs:
        roles[i] = Role.INTERNAL
    return roles


def _default_roles(c: Circuit) -> list[Role]:
    targets = [int(t) for g in c.groups(Nudges) for t in g.target]
    return inferred_roles(len(c.nodes), c.source_node_list(), targets, c.dependent_map())


def element_names(group, nodes: tuple[str, ...]) -> list[str]:
    """SPICE element names of a group: explicit ones, or generated readable ones."""
    if getattr(group, "names", None) is not None:
        return list(group.names)
    if isinstance(group, Conductances):
        if group.dense:
            m, n = group.g.shape
            return [f"R{group.name}_{i}_{j}" for i in range(m) for j in range(n)]
        return [f"R{group.name}_{k}" for k in range(len(group))]
    if isinstance(group, Nudges):
        return [f"R{group.name}_{nodes[i]}" for i in group.node]
    if isinstance(group, Amplifiers):
        return [f"{group.name}_{nodes[o]}" for o in group.out]
    prefix = {VoltageSources: "V", CurrentSources: "I", Diodes: "D"}[type(group)]
    return [f"{prefix}{group.name}_{k}" for k in range(len(group))]


DiodeCard = tuple[float, float, float, float, float, tuple[tuple[str, float], ...]]
"""A diode model's parameters: (IS, N, RS, BV, IBV, non-DC (NAME, value) pairs)."""


def diode_models(c: Circuit) -> tuple[dict[str, list[str]], dict[str, DiodeCard]]:
    """Model name of every diode (per group) and the parameters of every model: one
    ``.model`` per distinct parameter set, and imported model names are kept."""
    per_group: dict[str, list[str]] = {}
    defs: dict[str, DiodeCard] = {}
    generated: dict[DiodeCard, str] = {}
    for g in c.groups(Diodes):
        names = []
        non_dc = g.non_dc if g.non_dc is not None else ((),) * len(g)
        for k, key in enumerate(zip(g.IS.tolist(), g.N.tolist(), g.RS.tolist(), g.BV.tolist(), g.IBV.tolist(), non_dc)):
            if g.models is not None:
                name = g.models[k]
            elif key in generated:
                name = generated[key]
            else:
                name = f"dm{len(defs)}"
                while name in defs:
                    name += "_"
                generated[key] = name
            if defs.setdefault(name, key) != key:
                raise CircuitError(f"diode model {name!r} is used with two different parameter sets")
            names.append(name)
        per_group[g.name] = names
    return per_group, defs


def model_card(card: DiodeCard) -> list[tuple[str, float]]:
    """The (NAME, value) parameters a ``.model NAME D(...)`` line carries for ``card``: IS and N
    always, RS when non-zero, BV and IBV with breakdown (IBV alone when it differs from SPICE's
    default), then the non-DC parameters as imported."""
    IS, N, RS, BV, IBV, non_dc = card
    params = [("IS", IS), ("N", N)]
    if RS > 0:
        params.append(("RS", RS))
    if math.isfinite(BV):
        params.append(("BV", BV))
    if math.isfinite(BV) or IBV != IBV_DEFAULT:
        params.append(("IBV", IBV))
    return params + list(non_dc)


def _group_lines(g, c: Circuit, models: Mapping) -> Iterator[str]:
    nodes, fmt = c.nodes, format_value
    names = element_names(g, nodes)
    if isinstance(g, Conductances):
        a, b, gv = g.edges()
        for name, i, j, x in zip(names, a.tolist(), b.tolist(), gv.tolist()):
            if x > 0:
                yield f"{name} {nodes[i]} {nodes[j]} {fmt(1.0 / x)}"
    elif isinstance(g, Nudges):
        for name, i, t, beta in zip(names, g.node.tolist(), g.target.tolist(), g.beta.tolist()):
            if beta > 0:
                yield f"{name} {nodes[i]} {nodes[t]} {fmt(1.0 / beta)}"
    elif isinstance(g, VoltageSources):
        for name, i, v in zip(names, g.node.tolist(), g.v.tolist()):
            yield f"{name} {nodes[i]} 0 {fmt(v)}"
    elif isinstance(g, CurrentSources):
        for name, i, cur in zip(names, g.node.tolist(), g.i.tolist()):
            yield f"{name} 0 {nodes[i]} {fmt(cur)}"
    elif isinstance(g, Diodes):
        for name, p, q, model in zip(names, g.anode.tolist(), g.cathode.tolist(), models[g.name]):
            yield f"{name} {nodes[p]} {nodes[q]} {model}"
    elif isinstance(g, Amplifiers):
        taken = {s.lower() for s in nodes}
        for name, i, o, a in zip(names, g.inp.tolist(), g.out.tolist(), g.gain.tolist()):
            sense = f"{name}_s"
            if sense.lower() in taken:
                raise CircuitError(f"amplifier {name!r}: its sense node {sense!r} clashes with a circuit node")
            yield f"E{name} {sense} 0 {nodes[i]} 0 {fmt(a)}"
            yield f"V{name} {sense} {nodes[o]} 0"
            yield f"F{name} {nodes[i]} 0 V{name} {fmt(a)}"


def deck_options(circuit: Circuit, options: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``.options`` a deck gets: explicit ones, else the imported deck's, else the defaults."""
    return dict(options if options is not None else circuit.meta.get("spice_options") or DEFAULT_OPTIONS)


def deck_lines(circuit: Circuit, options: Mapping[str, str] | None = None, header: bool = True) -> Iterator[str]:
    """The deck, line by line (a generator: a 1.6 M-resistor deck is never one string twice)."""
    c = circuit
    yield f"* {c.title}"
    if header:
        yield "* generated by analog-ep: the DC operating point is the energy minimum of the network"
        for k, v in c.meta.items():
            if k not in DERIVED_META and k != "spice_options":
                yield f"* {k}: {v}"
        yield f"* circuit: {c.summary()}"
    defaults = _default_roles(c)
    by_role: dict[Role, list[str]] = {}
    for name, role, default in zip(c.nodes, c.roles, defaults):
        if role is not default:
            by_role.setdefault(role, []).append(name)
    for role, names in by_role.items():
        for k in range(0, len(names), _NAMES_PER_LINE):
            yield f"*@ role {role.value} " + " ".join(names[k:k + _NAMES_PER_LINE])
    opts = deck_options(c, options)
    if opts:
        yield ".options " + " ".join(f"{k}={v}" for k, v in opts.items())
    models, model_defs = diode_models(c)
    for g in c.elements:
        flag = " ideal" if isinstance(g, Diodes) and g.ideal else ""
        yield f"*@ group {g.kind} {g.name}{flag}"
        yield from _group_lines(g, c, models)
    for name, card in model_defs.items():
        yield f".model {name} D(" + " ".join(f"{k}={format_value(v)}" for k, v in model_card(card)) + ")"
    yield ".op"
    yield ".end"


def write_deck(circuit: Circuit, options: Mapping[str, str] | None = None, header: bool = True) -> str:
    """The whole deck as one string (ends with a newline)."""
    return "\n".join(deck_lines(circuit, options, header)) + "\n"


def save_deck(circuit: Circuit, path: str | Path, options: Mapping[str, str] | None = None) -> Path:
    path = Path(path)
    with path.open("w") as f:
        for line in deck_lines(circuit, options):
            f.write(line + "\n")
    return path

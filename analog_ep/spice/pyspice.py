"""Bridge to PySpice's ``Circuit`` API, the idiom circuit people already script in.

PySpice is imported lazily so that the emulator and training run where it is not installed.
Building through PySpice costs seconds for 10^5 resistors where plain text costs 0.1 s, so
the library itself writes text (:mod:`.netlist`); this module is for users who continue in
PySpice."""
from __future__ import annotations

from ..circuit.ir import Amplifiers, Circuit, Conductances, CurrentSources, Diodes, Nudges, VoltageSources
from .netlist import deck_options, diode_models, element_names, model_card
from .parser import parse_deck


def to_pyspice(circuit: Circuit):
    """The same circuit as a ``PySpice.Spice.Netlist.Circuit`` (SI values, same names)."""
    try:
        from PySpice.Spice.Netlist import Circuit as PyCircuit
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("PySpice is not installed: pip install PySpice") from e

    c, nodes = circuit, circuit.nodes
    pc = PyCircuit(c.title)
    models, defs = diode_models(c)
    for name, card in defs.items():
        pc.model(name, "D", **dict(model_card(card)))
    for g in c.elements:
        names = element_names(g, nodes)
        if isinstance(g, Conductances):
            a, b, gv = g.edges()
            for nm, i, j, x in zip(names, a.tolist(), b.tolist(), gv.tolist()):
                if x > 0:
                    pc.R(nm[1:], nodes[i], nodes[j], 1.0 / x)
        elif isinstance(g, Nudges):
            for nm, i, t, beta in zip(names, g.node.tolist(), g.target.tolist(), g.beta.tolist()):
                if beta > 0:
                    pc.R(nm[1:], nodes[i], nodes[t], 1.0 / beta)
        elif isinstance(g, VoltageSources):
            for nm, i, v in zip(names, g.node.tolist(), g.v.tolist()):
                pc.V(nm[1:], nodes[i], pc.gnd, v)
        elif isinstance(g, CurrentSources):
            for nm, i, cur in zip(names, g.node.tolist(), g.i.tolist()):
                pc.I(nm[1:], pc.gnd, nodes[i], cur)
        elif isinstance(g, Diodes):
            for nm, p, q, model in zip(names, g.anode.tolist(), g.cathode.tolist(), models[g.name]):
                pc.D(nm[1:], nodes[p], nodes[q], model=model)
        elif isinstance(g, Amplifiers):
            for nm, i, o, a in zip(names, g.inp.tolist(), g.out.tolist(), g.gain.tolist()):
                sense = f"{nm}_s"
                pc.VCVS(nm, sense, pc.gnd, nodes[i], pc.gnd, voltage_gain=a)
                pc.V(nm, sense, nodes[o], 0)
                pc.CCCS(nm, nodes[i], pc.gnd, f"V{nm}", current_gain=a)
    for k, v in deck_options(c).items():
        pc.raw_spice += f".options {k}={v}\n"
    return pc


def from_pyspice(pycircuit) -> Circuit:
    """A Circuit from a PySpice circuit, through the same validating parser as any deck."""
    return parse_deck(str(pycircuit), source="<PySpice circuit>")

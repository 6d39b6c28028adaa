"""Power at an ngspice operating point, per element group, in the emulator's keys and sign
convention (:mod:`analog_ep.emulator.power`: every element absorbs V·I; Σ over all elements = 0
by Tellegen's theorem), so the two can be compared group by group.

What comes from ngspice itself: the node voltages and the branch currents of the voltage
sources, including each amplifier's 0 V sense source (whose branch current is the current the
amplifier's output delivers). Conductance, nudge and diode currents are the element laws at
ngspice's node voltages (:attr:`OperatingPoint.currents`); SPICE's gmin across every junction
is its own group, ``gmin:<diodes>``, as in a circuit compiled with ``gmin=``.
"""
from __future__ import annotations

import numpy as np

from ..circuit.ir import Amplifiers, Circuit, Conductances, CurrentSources, Diodes, Nudges, VoltageSources
from ..circuit.units import parse_value
from .netlist import element_names
from .ngspice import OperatingPoint

NGSPICE_GMIN = 1e-12
"""S: ngspice's GMIN when a deck's ``.options`` gives none (ngspice 39 manual, ``.options GMIN``)."""


def operating_point_powers(circuit: Circuit, op: OperatingPoint) -> dict[str, float]:
    """Power absorbed by every element group of ``circuit`` at its ngspice operating point
    ``op``, W (a source absorbs minus what it delivers: a voltage source ``V n 0`` with
    ngspice's branch current I absorbs V·I). Keys: ``g:<group>`` (conductances and nudges),
    ``gmin:<diodes>``, ``d:<diodes>``, ``V:<group>``, ``I:<group>``, ``amp_in:<group>``,
    ``amp_out:<group>``. Diodes with series resistance are refused: ngspice does not report
    their internal node (expand them first with
    :func:`analog_ep.circuit.transforms.expand_series_resistance`)."""
    v = op.vector(circuit)
    gmin = parse_value(op.options["gmin"]) if "gmin" in op.options else NGSPICE_GMIN
    cur = lambda names: np.array([op.currents[n] for n in names])
    out: dict[str, float] = {}
    for g in circuit.groups(Conductances):
        a, b, gv = g.edges()
        keep = gv > 0  # open elements are not exported
        names = [n for n, k in zip(element_names(g, circuit.nodes), keep) if k]
        out[f"g:{g.name}"] = float(cur(names) @ (v[a] - v[b])[keep])
    for g in circuit.groups(Nudges):
        out[f"g:{g.name}"] = float(cur(element_names(g, circuit.nodes)) @ (v[g.node] - v[g.target]))
    for g in circuit.groups(Diodes):
        if np.any(g.RS > 0):
            raise ValueError(f"diodes {g.name!r} have series resistance: expand them first "
                             "(analog_ep.circuit.transforms.expand_series_resistance)")
        vd = v[g.anode] - v[g.cathode]
        out[f"d:{g.name}"] = float(cur(element_names(g, circuit.nodes)) @ vd)
        out[f"gmin:{g.name}"] = float(gmin * vd @ vd)
    for g in circuit.groups(VoltageSources):
        out[f"V:{g.name}"] = float(cur(element_names(g, circuit.nodes)) @ v[g.node])
    for g in circuit.groups(CurrentSources):
        out[f"I:{g.name}"] = -float(g.i @ v[g.node])
    for g in circuit.groups(Amplifiers):
        i_out = cur([f"V{n}" for n in element_names(g, circuit.nodes)])
        out[f"amp_in:{g.name}"] = float((g.gain * i_out) @ v[g.inp])
        out[f"amp_out:{g.name}"] = -float(i_out @ v[g.out])
    return out

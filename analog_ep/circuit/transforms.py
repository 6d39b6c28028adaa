"""Circuit-to-circuit rewrites that keep every node voltage the same."""
from __future__ import annotations

import dataclasses

import numpy as np

from .ir import GROUND_INDEX, Circuit, Conductances, CurrentSources, Diodes, Role


def known_voltages(circuit: Circuit) -> dict[int, float]:
    """Voltages fixed by the circuit alone: ground, source nodes, and amplifier outputs whose
    input is one of those."""
    known = {GROUND_INDEX: 0.0, **circuit.fixed_voltages()}
    for out, (root, gain) in circuit.dependent_map().items():
        if root in known:
            known[out] = gain * known[root]
    return known


def fold_sources(circuit: Circuit) -> Circuit:
    """Norton-fold every conductance between a fixed-voltage node and another node into one
    conductance to ground (the sum) and one current source (sum of g V) at that node.

    Node voltages are unchanged, but SPICE no longer factors a matrix with one entry per input
    resistor: for a 2x784-100-10 deck this turns a 14-25 s operating point into ~0.03 s.
    Conductances to fixed nodes stop being separate elements, so use it for verification
    decks, not to read per-resistor currents."""
    known = known_voltages(circuit)
    n = len(circuit.nodes)
    fixed = np.zeros(n, dtype=bool)
    fixed[list(known)] = True
    volts = np.zeros(n)
    volts[list(known)] = list(known.values())
    g_sum, i_sum = np.zeros(n), np.zeros(n)
    kept = []
    for e in circuit.elements:
        if not isinstance(e, Conductances):
            kept.append(e)
            continue
        a, b, g = e.edges()
        fa, fb = fixed[a], fixed[b]
        one = fa ^ fb
        free_end = np.where(fa, b, a)[one]
        fixed_end = np.where(fa, a, b)[one]
        np.add.at(g_sum, free_end, g[one])
        np.add.at(i_sum, free_end, g[one] * volts[fixed_end])
        keep = ~fa & ~fb  # between two fixed nodes: a constant, dropped too
        if not keep.any():
            continue
        names = None if e.names is None else [nm for nm, k in zip(e.names, keep) if k]
        kept.append(Conductances(e.name, a[keep], b[keep], g[keep], e.trainable, names))
    nodes = np.flatnonzero(g_sum > 0)
    if nodes.size:
        kept.append(Conductances("norton_g", nodes, np.full(nodes.size, GROUND_INDEX), g_sum[nodes], trainable=False))
        kept.append(CurrentSources("norton_i", nodes, i_sum[nodes]))
    meta = dict(circuit.meta, norton="sources folded into Norton equivalents (same node voltages)")
    return circuit.replace(elements=tuple(kept), meta=meta)


def expand_series_resistance(circuit: Circuit) -> Circuit:
    """Give every diode with RS > 0 an explicit internal node and a conductance 1/RS, as SPICE
    does inside its diode model, so that solvers only see ideal junctions."""
    nodes, roles, elements = list(circuit.nodes), list(circuit.roles), []
    for e in circuit.elements:
        if not isinstance(e, Diodes) or not np.any(e.RS > 0):
            elements.append(e)
            continue
        series = np.flatnonzero(e.RS > 0)
        inner = []
        for k in series:
            nodes.append(f"{e.name}_{k}_rs")
            roles.append(Role.INTERNAL)
            inner.append(len(nodes) - 1)
        anode = e.anode.copy()
        anode[series] = inner
        elements.append(Conductances(f"{e.name}_rs", e.anode[series], inner, 1.0 / e.RS[series], trainable=False))
        elements.append(dataclasses.replace(e, anode=anode, RS=np.zeros_like(e.RS)))
    if len(nodes) == len(circuit.nodes):
        return circuit
    return Circuit(tuple(nodes), tuple(roles), tuple(elements), circuit.title, circuit.meta)

"""Proof that trained weights work as a circuit: the trained Circuit in ngspice, digit by digit,
against the emulator."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..circuit.builder import input_pairs
from ..circuit.ir import Diodes, Role
from ..spice.ngspice import OperatingPoint
from .compare import compare, input_sources


@dataclass
class SpiceCheck:
    n: int
    agree: int  # classifications equal in SPICE and the emulator
    max_abs_dv: float  # over all node voltages of all n circuits, V
    spice_seconds: float
    spice_errors: int  # SPICE misclassifications against the labels


def spice_check(circuit, x: np.ndarray, labels: np.ndarray, jobs: int | None = None,
                on_done: Callable[[OperatingPoint], None] | None = None) -> SpiceCheck:
    """Run each row of input voltages ``x`` of a layered circuit through ngspice (Norton-folded
    decks, ~0.03 s each) and through the emulator in float64 with SPICE's gmin; compare.
    ``on_done``: called with each ngspice operating point as it finishes (a progress bar)."""
    if any(d.ideal for d in circuit.groups(Diodes)):
        raise ValueError("the circuit has ideal clamps, which SPICE cannot simulate exactly; "
                         "train with Shockley diodes (circuit.diode = 'IS,N') to verify in SPICE")
    n_in = x.shape[1]
    plus, minus = input_pairs(n_in)
    if input_sources(circuit) != plus + minus:
        raise ValueError("spice_check needs a layered circuit whose inputs are the x{i}p/x{i}n source pairs")
    cmp = compare(circuit, np.concatenate([x, -x], axis=1), jobs=jobs, norton=True, on_done=on_done)
    outputs = [cmp.nodes.index(circuit.nodes[i]) for i in circuit.nodes_with_role(Role.OUTPUT)]
    spice_cls, emu_cls = cmp.spice[:, outputs].argmax(1), cmp.emulator[:, outputs].argmax(1)
    return SpiceCheck(len(x), int((spice_cls == emu_cls).sum()), cmp.max_abs_dv, cmp.spice_seconds,
                      int((spice_cls != np.asarray(labels)).sum()))

"""Proof that trained weights work as a circuit: the trained Circuit in ngspice, digit by digit,
against the emulator."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..circuit.ir import Diodes
from ..circuit.transforms import fold_sources
from ..emulator import compile_circuit, settle
from ..spice.netlist import deck_options
from ..spice.ngspice import run_op_many
from ..spice.units import parse_value


@dataclass
class SpiceCheck:
    n: int
    agree: int  # classifications equal in SPICE and the emulator
    max_abs_dv: float  # over all node voltages of all n circuits, V
    spice_seconds: float
    spice_errors: int  # SPICE misclassifications against the labels


def spice_check(circuit, x: np.ndarray, labels: np.ndarray, jobs: int | None = None) -> SpiceCheck:
    """Run each row of input voltages ``x`` through ngspice (Norton-folded deck: same voltages, ~0.03 s each)
    and through the emulator in float64 with SPICE's gmin; compare."""
    if any(d.ideal for d in circuit.groups(Diodes)):
        raise ValueError("the circuit has ideal clamps, which SPICE cannot simulate exactly; "
                         "train with Shockley diodes (circuit.diode = 'IS,N') to verify in SPICE")
    n_in = x.shape[1]
    names = [f"x{i}p" for i in range(n_in)] + [f"x{i}n" for i in range(n_in)]
    circuits = [fold_sources(circuit.with_sources(dict(zip(names, np.concatenate([row, -row]))))) for row in x]
    ops = run_op_many(circuits, jobs=jobs)
    outputs = [circuit.nodes[i] for i in circuit.nodes_with_role("output")]
    spice_v = np.array([[op.node_voltages[o] for o in outputs] for op in ops])
    spice_all = np.stack([op.vector(circuit) for op in ops])
    cc = compile_circuit(circuit, dtype=torch.float64, gmin=parse_value(deck_options(circuit).get("gmin", "1e-12")))
    res = settle(cc, x=torch.as_tensor(x, dtype=torch.float64))
    emu_all = res.voltages_of(circuit.nodes).numpy()
    emu_v = res.V[:, cc.outputs].numpy()
    agree = int((spice_v.argmax(1) == emu_v.argmax(1)).sum())
    return SpiceCheck(len(x), agree, float(np.abs(spice_all - emu_all).max()), sum(op.seconds for op in ops),
                      int((spice_v.argmax(1) != labels).sum()))

"""SPICE vs emulator on the same Circuit: node-by-node agreement and the speed ratio."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..circuit.ir import Circuit, Role
from ..circuit.transforms import fold_sources
from ..emulator import compile_circuit, settle
from ..spice.netlist import deck_options
from ..spice.ngspice import OperatingPoint, run_op_many
from ..spice.units import parse_value


@dataclass
class Comparison:
    nodes: list[str]
    spice: np.ndarray  # (B, n) volts
    emulator: np.ndarray  # (B, n)
    spice_seconds: float  # summed over the B operating points
    emulator_seconds: float  # one batched settle (after a warm-up)
    options: dict[str, str]
    method: str
    iterations: int
    residual: float
    notes: list[str] = field(default_factory=list)

    @property
    def abs_dv(self) -> np.ndarray:
        return np.abs(self.spice - self.emulator)

    @property
    def max_abs_dv(self) -> float:
        return float(self.abs_dv.max()) if self.abs_dv.size else 0.0

    @property
    def speedup(self) -> float:
        return self.spice_seconds / max(self.emulator_seconds, 1e-12)

    def table(self, limit: int = 20) -> str:
        worst = self.abs_dv.max(0)
        order = np.argsort(-worst)[:limit]
        k = np.argmax(self.abs_dv, axis=0)
        lines = [f"{'node':>16s} {'spice V':>18s} {'emulator V':>18s} {'|dV| V':>10s}"]
        for j in order:
            lines.append(f"{self.nodes[j]:>16s} {self.spice[k[j], j]: 18.12g} {self.emulator[k[j], j]: 18.12g} "
                         f"{worst[j]:10.3g}")
        return "\n".join(lines)


def input_sources(circuit: Circuit) -> list[str]:
    """Names of the source nodes a row of ``--batch-inputs`` sets, in order."""
    return [circuit.nodes[i] for i in circuit.source_node_list() if circuit.roles[i] is Role.INPUT]


def compare(circuit: Circuit, inputs: np.ndarray | None = None, *, method: str = "auto",
            dtype: torch.dtype = torch.float64, jobs: int | None = None, timeout: float = 900.0,
            norton: bool = False, on_done: Callable[[OperatingPoint], None] | None = None) -> Comparison:
    """Operating points of ``circuit`` in ngspice and in the emulator (SPICE's gmin modelled).
    ``inputs`` (B, n_inputs) sets the input sources, one circuit per row. ``norton`` gives
    ngspice Norton-folded decks (same node voltages, far faster for wide input layers).
    ``on_done``: called with each ngspice operating point as it finishes (a progress bar)."""
    names = input_sources(circuit)
    if inputs is None:
        circuits = [circuit]
    else:
        inputs = np.atleast_2d(np.asarray(inputs, dtype=float))
        if inputs.shape[1] != len(names):
            raise ValueError(f"batch inputs have {inputs.shape[1]} columns; the deck has {len(names)} input sources")
        circuits = [circuit.with_sources(dict(zip(names, row))) for row in inputs]
    ops = run_op_many([fold_sources(c) for c in circuits] if norton else circuits, jobs=jobs, timeout=timeout,
                      on_done=on_done)
    spice = np.stack([op.vector(circuit) for op in ops])
    options = deck_options(circuit)
    cc = compile_circuit(circuit, dtype=dtype, gmin=parse_value(options.get("gmin", "1e-12")))
    u = cc.source_values(len(circuits))
    if inputs is not None:
        pos = {circuit.nodes[n]: k for k, n in enumerate(cc.sources)}
        u[:, [pos[n] for n in names]] = torch.as_tensor(inputs, dtype=dtype)
    settle(cc, u, method=method)  # warm-up: first-call allocations are not the solver's time
    t0 = time.perf_counter()
    res = settle(cc, u, method=method)
    seconds = time.perf_counter() - t0
    emu = res.voltages_of(circuit.nodes).double().cpu().numpy()
    notes = sorted({n for op in ops for n in op.notes})
    return Comparison(list(circuit.nodes), spice, emu, sum(op.seconds for op in ops), seconds, options, res.method,
                      res.iterations, res.residual, notes)

"""DC operating point through ``ngspice -b`` in a subprocess, results read from its rawfile.

Why a subprocess rather than PySpice's shared-library mode: a crash, a hang or a
non-converging deck stays in the child process (we get an exit status and a timeout, not a
dead interpreter); runs can go in parallel processes; and it avoids shared mode's known
failures with ngspice 39 (stderr lines raised as errors, memory growth over many runs) and the
slow construction of big circuits through PySpice's object API. The deck is always written by
:mod:`.netlist` from a Circuit, so ngspice never sees user text. For many small decks,
:func:`analog_ep.spice.pyspice.run_op_pyspice` runs the same deck in ngspice's shared library
in this process and returns the same :class:`OperatingPoint` (:func:`operating_point` builds it
for both).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..circuit.constants import THERMAL_VOLTAGE
from ..circuit.ir import Amplifiers, Circuit, Conductances, Diodes, Nudges, VoltageSources
from .netlist import deck_options, element_names, save_deck

_FALLBACKS = ("gmin stepping", "source stepping", "transient op")


class SpiceError(RuntimeError):
    """ngspice could not produce an operating point (missing, crashed, timed out, no convergence)."""


@dataclass
class OperatingPoint:
    """Node voltages (V, by IR node name) and element currents (A, by SPICE element name).

    Voltage-source currents are ngspice's branch currents (SPICE sign: positive flowing into
    the + terminal); conductance, nudge and diode currents (anode -> cathode / a -> b) are
    computed from the node voltages with the circuit's own element laws."""

    node_voltages: dict[str, float]
    currents: dict[str, float]
    seconds: float
    analysis_seconds: float | None
    notes: list[str] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)

    def vector(self, circuit: Circuit) -> np.ndarray:
        """Voltages in the circuit's node order."""
        return np.array([self.node_voltages[n] for n in circuit.nodes])


def find_ngspice() -> str:
    path = shutil.which("ngspice")
    if path is None:
        raise SpiceError("ngspice is not installed: apt-get install -y ngspice (or run 'make setup')")
    return path


def read_rawfile(path: str | Path) -> dict[str, np.ndarray]:
    """Parse an ngspice rawfile (binary or ASCII, real data): variable name -> values."""
    data = Path(path).read_bytes()
    names: list[str] = []
    npoints = nvars = 0
    pos = 0
    while True:
        end = data.index(b"\n", pos)
        line = data[pos:end].decode("ascii", "replace")
        pos = end + 1
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "flags" and "complex" in value:
            raise SpiceError("complex rawfile data is not expected from an operating point")
        elif key == "no. variables":
            nvars = int(value)
        elif key == "no. points":
            npoints = int(value)
        elif key == "variables":
            for _ in range(nvars):
                end = data.index(b"\n", pos)
                names.append(data[pos:end].decode().split()[1].lower())
                pos = end + 1
        elif key == "binary":
            values = np.frombuffer(data, dtype="<f8", count=nvars * npoints, offset=pos)
            break
        elif key == "values":  # ASCII: per point, its index then one value per variable
            tokens = data[pos:].decode().split()
            values = np.array([float(t) for p in range(npoints)
                               for t in tokens[p * (nvars + 1) + 1:(p + 1) * (nvars + 1)]])
            break
    values = values.reshape(npoints, nvars)
    return {n: values[:, k] for k, n in enumerate(names)}


def _voltage_key(name: str) -> str:
    m = re.fullmatch(r"v\((.*)\)", name)
    return m.group(1) if m else name


def element_currents(circuit: Circuit, v: np.ndarray) -> dict[str, float]:
    """Currents of conductances, nudges and diodes from node voltages ``v`` (circuit order).
    Diodes with series resistance are left out: their current needs the internal node."""
    out: dict[str, float] = {}
    for g in circuit.groups(Conductances):
        a, b, gv = g.edges()
        for name, x in zip(element_names(g, circuit.nodes), (gv * (v[a] - v[b])).tolist()):
            out[name] = x
    for g in circuit.groups(Nudges):
        for name, x in zip(element_names(g, circuit.nodes), (g.beta * (v[g.node] - v[g.target])).tolist()):
            out[name] = x
    for g in circuit.groups(Diodes):
        vt = g.N * THERMAL_VOLTAGE
        i = g.IS * np.expm1((v[g.anode] - v[g.cathode]) / vt)
        for name, x, rs in zip(element_names(g, circuit.nodes), i.tolist(), g.RS.tolist()):
            if rs == 0:
                out[name] = x
    return out


def run_op(circuit: Circuit, *, options: Mapping[str, str] | None = None, timeout: float = 900.0,
           workdir: str | Path | None = None) -> OperatingPoint:
    """Operating point of ``circuit`` in ngspice. ``options`` overrides the deck's ``.options``
    (default :data:`analog_ep.spice.netlist.DEFAULT_OPTIONS`). Raises SpiceError on failure."""
    exe = find_ngspice()
    with tempfile.TemporaryDirectory(prefix="analog-ep-spice-", dir=workdir) as tmp:
        tmp = Path(tmp)
        deck, raw = tmp / "deck.cir", tmp / "out.raw"
        save_deck(circuit, deck, options)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPICE")}
        env["HOME"] = str(tmp)  # no user .spiceinit
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([exe, "-b", "-r", str(raw), str(deck)], cwd=tmp, env=env,
                                  capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SpiceError(f"ngspice timed out after {timeout:g} s") from None
        seconds = time.perf_counter() - t0
        log = proc.stdout + "\n" + proc.stderr
        if proc.returncode < 0:
            raise SpiceError(f"ngspice crashed (signal {-proc.returncode})")
        if proc.returncode != 0 or not raw.exists() or raw.stat().st_size == 0:
            reason = "; ".join(log_errors(log)[-3:]) or f"exit status {proc.returncode}"
            raise SpiceError(f"ngspice found no operating point: {reason}")
        vectors = read_rawfile(raw)
    return operating_point(circuit, vectors, log, seconds, options)


def log_errors(log: str) -> list[str]:
    """ngspice's error lines in its printed output (``error ...``, ``... solution failed``,
    ``... aborted``), stripped, in order."""
    return [l.strip() for l in log.splitlines() if re.match(r"\s*(error|.*solution failed|.*aborted)", l, re.I)]


def operating_point(circuit: Circuit, vectors: Mapping[str, np.ndarray], log: str, seconds: float,
                    options: Mapping[str, str] | None = None) -> OperatingPoint:
    """The operating point of ``circuit`` from ngspice's output vectors and its printed log.

    ``vectors`` maps ngspice's vector names to their values, in either spelling ngspice uses:
    rawfile names (``v(node)``, ``i(vsrc)``) or shared-library names (``node``,
    ``vsrc#branch``); the first value of each is taken. Voltages are in volts, branch currents
    in amperes. ``seconds`` is the wall time of the run; ``options`` the ``.options`` override
    the deck was written with (``None``: the deck's own). Fallbacks (gmin or source stepping,
    transient op) found in ``log`` become :attr:`OperatingPoint.notes`; a singular matrix or a
    node without a voltage raises :class:`SpiceError`."""
    notes = sorted({l.strip() for l in log.splitlines()
                    if any(f in l.lower() for f in _FALLBACKS) or "singular matrix" in l.lower()})
    singular = [n for n in notes if "singular matrix" in n.lower()]
    if singular:
        raise SpiceError("ngspice reports a singular matrix (a node with no DC path to a source?): " + singular[0])
    by_lower = {k.lower(): k for k in circuit.nodes}
    volts = {by_lower[_voltage_key(k)]: float(x[0]) for k, x in vectors.items() if _voltage_key(k) in by_lower}
    volts["0"] = 0.0
    missing = [n for n in circuit.nodes if n not in volts]
    if missing:
        raise SpiceError(f"ngspice returned no voltage for nodes {missing[:5]}")
    spelled = {n.lower(): n for g in circuit.groups(VoltageSources) for n in element_names(g, circuit.nodes)}
    spelled.update({f"v{n}".lower(): f"V{n}" for g in circuit.groups(Amplifiers) for n in element_names(g, circuit.nodes)})
    currents = {}
    for k, x in vectors.items():
        m = re.fullmatch(r"i\((.*)\)", k) or re.fullmatch(r"(.*)#branch", k)
        if m and m.group(1) in spelled:  # E branches mirror their sense sources: left out
            currents[spelled[m.group(1)]] = float(x[0])
    vec = np.array([volts[n] for n in circuit.nodes])
    currents.update(element_currents(circuit, vec))
    m = re.search(r"Total analysis time \(seconds\) = ([0-9.eE+-]+)", log)
    return OperatingPoint(volts, currents, seconds, float(m.group(1)) if m else None, notes,
                          deck_options(circuit, options))


def run_op_many(circuits: Sequence[Circuit], *, jobs: int | None = None,
                on_done: Callable[[OperatingPoint], None] | None = None, **kwargs) -> list[OperatingPoint]:
    """Operating points of several circuits in parallel ngspice processes (order kept).
    ``on_done`` is called in this thread with each operating point as it finishes (in the order
    they finish), e.g. to advance a progress bar."""
    jobs = jobs or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_op, c, **kwargs) for c in circuits]
        if on_done is not None:
            for done in as_completed(futures):
                on_done(done.result())
        return [f.result() for f in futures]

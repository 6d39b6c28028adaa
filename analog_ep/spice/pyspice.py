"""PySpice: the bridge to its ``Circuit`` API, and an in-process ngspice runner.

* :func:`to_pyspice` / :func:`from_pyspice` convert to and from PySpice's ``Circuit``, the
  idiom circuit people already script in. Building through PySpice costs seconds for 10^5
  resistors where plain text costs 0.1 s, so the library itself writes text (:mod:`.netlist`).
* :func:`run_op_pyspice` runs the deck our exporter writes in ngspice's shared library through
  ``PySpice.Spice.NgSpice.Shared`` and returns the same :class:`~.ngspice.OperatingPoint` as
  the subprocess runner :func:`~.ngspice.run_op`, without starting a process per deck.

PySpice is imported lazily so that the emulator and training run where it is not installed.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Mapping

from ..circuit.ir import Amplifiers, Circuit, Conductances, CurrentSources, Diodes, Nudges, VoltageSources
from .netlist import deck_options, diode_models, element_names, model_card, write_deck
from .ngspice import OperatingPoint, SpiceError, log_errors, operating_point
from .parser import parse_deck

# PySpice's logger for NgSpiceShared: it warns "Unsupported Ngspice version" for ngspice > 34
# (PySpice 1.5 knows versions up to 34; 39 works) and logs every ngspice stderr line that does
# not start with "Warning:" as an error. run_op_pyspice reports ngspice's output itself.
_PYSPICE_LOGGER = "PySpice.Spice.NgSpice.Shared.NgSpiceShared"
_LOCK = threading.Lock()  # one ngspice shared library per process: one run at a time


class PySpiceMissing(SpiceError, ImportError):
    """PySpice is not installed. A SpiceError, so that the command line reports it in one line,
    and an ImportError, as a missing package is."""

    def __init__(self) -> None:
        super().__init__("PySpice is not installed: pip install PySpice (or run 'make setup')")


def to_pyspice(circuit: Circuit):
    """The same circuit as a ``PySpice.Spice.Netlist.Circuit`` (SI values, same names)."""
    try:
        from PySpice.Spice.Netlist import Circuit as PyCircuit
    except ImportError as e:
        raise PySpiceMissing() from e

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


@contextmanager
def _pyspice_quiet() -> Iterator[None]:
    """Drop PySpice's NgSpiceShared log records while we drive it (see ``_PYSPICE_LOGGER``)."""
    logger = logging.getLogger(_PYSPICE_LOGGER)
    logger.addFilter(_drop)
    try:
        yield
    finally:
        logger.removeFilter(_drop)


def _drop(record: logging.LogRecord) -> bool:
    """A logging filter that lets nothing through."""
    return False


def _ngspice_shared():
    """PySpice's process-wide ngspice instance (created on first use)."""
    try:
        from PySpice.Spice.NgSpice.Shared import NgSpiceShared
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise PySpiceMissing() from e
    try:
        return NgSpiceShared.new_instance()
    except OSError as e:  # the shared library is missing
        raise SpiceError(f"cannot load ngspice's shared library ({e}): apt-get install -y libngspice0 "
                         "(or run 'make setup')") from None


def run_op_pyspice(circuit: Circuit, *, options: Mapping[str, str] | None = None) -> OperatingPoint:
    """Operating point of ``circuit`` in ngspice's shared library, in this process.

    The deck is :func:`~.netlist.write_deck`'s text for ``circuit`` (``options`` overrides its
    ``.options``, as in :func:`~.ngspice.run_op`), so ngspice never sees user text. The result
    matches :func:`~.ngspice.run_op`'s: node voltages in volts, currents in amperes, fallback
    notes; ``seconds`` is the wall time of loading, running and reading back the deck, and
    ``analysis_seconds`` the wall time of ngspice's ``run`` command alone. Raises
    :class:`~.ngspice.SpiceError` when ngspice finds no operating point.

    Handles PySpice 1.5's problems with ngspice >= 35: its "Unsupported Ngspice version"
    warning is silenced; its ``NgSpiceCommandError`` (raised for any stderr line not starting
    with "Warning:", gmin-stepping notes for instance) and ``NgSpiceCircuitError`` (raised when
    "error" appears anywhere in ngspice's output, the echoed circuit title included) are judged
    from ngspice's error lines and the presence of the result instead; values are read with
    ``.as_ndarray()`` (NumPy 2 refuses ``float()`` of PySpice's one-element arrays); and every
    run's plot and circuit are removed from ngspice afterwards, so memory stays flat over
    thousands of runs (without that, each run of a 16-8-4 deck kept ~0.5 MB and runs slowed down
    as plots accumulated).

    Differences from the subprocess runner: no ``timeout`` (a hang or a crash in ngspice hangs
    or ends this process), runs are serialised by a lock (one shared library per process), and
    ngspice reads its init files (``spinit``, ``~/.spiceinit``) once, when PySpice first loads
    it."""
    from PySpice.Spice.NgSpice.Shared import NgSpiceCircuitError, NgSpiceCommandError

    text = write_deck(circuit, options)
    with _LOCK, _pyspice_quiet():
        ng = _ngspice_shared()
        t0 = time.perf_counter()
        before = set(ng.plot_names)
        try:
            ng.load_circuit(text)
        except NgSpiceCircuitError:
            pass  # raised for a title with "error" in it too: judged below, as the run is
        log = ng.stdout + "\n" + ng.stderr
        t_run = time.perf_counter()
        try:
            ng.run()
        except NgSpiceCommandError:
            pass  # raised for harmless stderr lines too: judged below from the output and the plot
        t_run = time.perf_counter() - t_run
        log += "\n" + ng.stdout + "\n" + ng.stderr
        made = [p for p in ng.plot_names if p not in before]
        try:
            ops = [p for p in made if p.startswith("op")]
            if not ops:
                reason = "; ".join(log_errors(log)[-3:]) or "no op plot"
                raise SpiceError(f"ngspice found no operating point: {reason}")
            plot = ng.plot(None, ops[0])
            vectors = {name: vector.to_waveform().as_ndarray() for name, vector in plot.items()}
        finally:
            for p in made:
                ng.destroy(p)
            try:
                ng.remove_circuit()
            except NgSpiceCommandError:
                pass  # the deck never loaded: nothing to remove
        seconds = time.perf_counter() - t0
    op = operating_point(circuit, vectors, log, seconds, options)
    return dataclasses.replace(op, analysis_seconds=t_run)

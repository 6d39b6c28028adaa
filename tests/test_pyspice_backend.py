"""The in-process ngspice runner (PySpice's shared mode) against the subprocess runner."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from analog_ep.cli import app
from analog_ep.spice import SpiceError, parse_deck, read_deck, run_op
from analog_ep.spice.pyspice import run_op_pyspice

from .conftest import NETLISTS, ROOT

runner = CliRunner()
pytestmark = pytest.mark.spice


def _cli_json(*args: str) -> dict:
    res = runner.invoke(app, ["spice", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path", NETLISTS, ids=[p.name for p in NETLISTS])
def test_cli_pyspice_backend_agrees_with_subprocess(path: Path):
    """Every golden deck: the two backends agree to 1e-12 V on every node."""
    ours, theirs = _cli_json("--backend", "pyspice", str(path)), _cli_json(str(path))
    assert ours["backend"] == "pyspice" and theirs["backend"] == "subprocess"
    assert set(ours["node_voltages"]) == set(theirs["node_voltages"]) == set(read_deck(path).nodes)
    for node, v in theirs["node_voltages"].items():
        assert abs(ours["node_voltages"][node] - v) <= 1e-12, node
    assert ours["options"] == theirs["options"]


def test_currents_and_notes_match_the_subprocess_runner():
    c = read_deck(ROOT / "netlists" / "layered_16_8_4_nudged.cir")
    a, b = run_op(c), run_op_pyspice(c)
    assert set(a.currents) == set(b.currents)
    assert max(abs(a.currents[k] - b.currents[k]) for k in a.currents) <= 1e-15
    assert a.notes == b.notes == []
    assert b.seconds > 0 and b.analysis_seconds is not None


def test_gmin_stepping_notes_are_not_errors(caplog):
    """ngspice prints gmin stepping on stderr without a "Warning:" prefix; PySpice 1.5 raises
    NgSpiceCommandError for that although the result is fine. The runner returns the operating
    point, reports the fallback as a note and lets none of PySpice's warnings or errors through
    (its debug records of ngspice's output remain for who asks for them)."""
    c = read_deck(ROOT / "netlists" / "diode_clamp.cir")
    options = {**run_op(c).options, "noopiter": "1"}  # skip plain Newton: gmin stepping at once
    with caplog.at_level(logging.DEBUG, logger="PySpice"):
        op = run_op_pyspice(c, options=options)
    assert any(r.name.startswith("PySpice") for r in caplog.records)
    assert not [r for r in caplog.records if r.name.startswith("PySpice") and r.levelno >= logging.WARNING]
    assert any("gmin stepping" in n for n in op.notes)
    ref = run_op(c, options=options)
    assert ref.notes == op.notes
    assert max(abs(op.node_voltages[n] - ref.node_voltages[n]) for n in c.nodes) <= 1e-12


def test_failure_is_a_spice_error_and_leaves_ngspice_usable():
    from PySpice.Spice.NgSpice.Shared import NgSpiceShared

    plots = NgSpiceShared.new_instance().plot_names
    floating = parse_deck("* floating\nV1 a 0 1\nR1 a b 1k\nR2 c d 1k\n.op\n.end\n")
    with pytest.raises(SpiceError, match="singular|no operating point"):
        run_op_pyspice(floating)
    divider = read_deck(ROOT / "netlists" / "divider.cir")
    assert run_op_pyspice(divider).node_voltages["mid"] == pytest.approx(0.6875, abs=1e-12)
    assert NgSpiceShared.new_instance().plot_names == plots


def test_memory_stays_flat_over_many_runs():
    """Each run's plot and circuit are removed: without that a 16-8-4 deck keeps ~0.5 MB per run."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        pytest.skip("needs /proc (Linux)")
    c = read_deck(ROOT / "netlists" / "layered_16_8_4.cir")
    rss = lambda: int(statm.read_text().split()[1]) * 4096 / 2**20  # MiB
    for _ in range(20):
        run_op_pyspice(c)
    before = rss()
    for _ in range(200):
        run_op_pyspice(c)
    assert rss() - before < 20


def test_fresh_process_prints_nothing_but_the_result():
    """No "Unsupported Ngspice version" warning (PySpice 1.5 knows ngspice up to 34)."""
    code = ("from analog_ep.spice import read_deck\nfrom analog_ep.spice.pyspice import run_op_pyspice\n"
            f"print(run_op_pyspice(read_deck({str(ROOT / 'netlists' / 'divider.cir')!r})).node_voltages['mid'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0.6875" and proc.stderr == ""


def test_error_in_the_title_is_not_an_error():
    """PySpice 1.5 raises NgSpiceCircuitError when "error" appears in ngspice's output, and
    ngspice echoes the circuit's title when it loads a deck."""
    c = read_deck(ROOT / "netlists" / "divider.cir").replace(title="error budget of a divider")
    assert run_op_pyspice(c).node_voltages["mid"] == pytest.approx(0.6875, abs=1e-12)

"""The SPICE backend against ngspice itself (these tests need the ngspice binary)."""
import json
import math

import numpy as np
import pytest
from scipy.optimize import brentq
from typer.testing import CliRunner

from analog_ep.circuit import layered
from analog_ep.circuit.transforms import fold_sources
from analog_ep.cli import app
from analog_ep.spice import SpiceError, parse_deck, read_deck, run_op
from analog_ep.circuit.constants import THERMAL_VOLTAGE
from analog_ep.spice.pyspice import from_pyspice, to_pyspice

from .conftest import NETLISTS

pytestmark = pytest.mark.spice
runner = CliRunner()


@pytest.mark.parametrize("path", NETLISTS, ids=[p.name for p in NETLISTS])
def test_every_golden_deck_runs_in_ngspice(path):
    c = read_deck(path)
    op = run_op(c)
    assert set(op.node_voltages) == set(c.nodes)
    assert all(math.isfinite(v) for v in op.node_voltages.values())
    assert op.notes == []  # no gmin/source stepping needed


def test_divider_is_exact():
    op = run_op(read_deck(NETLISTS[0].parent / "divider.cir"))
    assert op.node_voltages["mid"] == pytest.approx(2.2 / 3.2, abs=1e-12)
    # element currents: the source delivers what the resistors carry (SPICE sign: into +)
    assert op.currents["V1"] == pytest.approx(-1.0 / 3200, rel=1e-9)
    assert op.currents["R1"] == pytest.approx(1.0 / 3200, rel=1e-9)


def test_diode_clamp_matches_shockley():
    op = run_op(read_deck(NETLISTS[0].parent / "diode_clamp.cir"))
    gmin = 1e-15
    f = lambda v: (2.0 - v) / 1e4 - 1e-14 * math.expm1((v - 0.5) / THERMAL_VOLTAGE) - gmin * (v - 0.5)
    assert op.node_voltages["out"] == pytest.approx(brentq(f, 0.5, 2.0, xtol=1e-15), abs=1e-12)


def test_norton_folding_keeps_voltages():
    c = layered("16,8,4", seed=3, amplifier_gain=2.0)
    a, b = run_op(c).vector(c), run_op(fold_sources(c)).vector(c)
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_pyspice_export_and_import_round_trip():
    c = layered("3,2,2", seed=1, amplifier_gain=2.0)
    pc = to_pyspice(c)
    c2 = from_pyspice(pc)
    np.testing.assert_allclose(run_op(c2).vector(c), run_op(c).vector(c), atol=1e-12)


def test_floating_node_is_a_clear_error():
    c = parse_deck("* floating\nV1 a 0 1\nR1 a b 1k\nR2 c d 1k\n.op\n.end\n")
    with pytest.raises(SpiceError, match="singular|no operating point"):
        run_op(c)


def test_conflicting_sources_fail_cleanly():
    # two amplifiers driving one node are refused by the IR before ngspice is reached
    with pytest.raises(Exception, match="amplifier|driven"):
        parse_deck("* t\nV1 a 0 1\nEa s1 0 a 0 2\nVa s1 b 0\nFa a 0 Va 2\nEb s2 0 a 0 3\nVb s2 b 0\nFb a 0 Vb 3\nR1 b 0 1k\n.end\n")


def test_timeout_becomes_spice_error():
    with pytest.raises(SpiceError, match="timed out"):
        run_op(layered("784,50,10", seed=0), timeout=0.01)


def test_cli_spice_json(tmp_path):
    deck = tmp_path / "k.cir"
    assert runner.invoke(app, ["export", "--layers", "4,3,2", "--amplifier-gain", "2", "-o", str(deck)]).exit_code == 0
    res = runner.invoke(app, ["spice", str(deck), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out["node_voltages"]) == set(read_deck(deck).nodes)
    assert out["seconds"] > 0 and out["options"]["reltol"] == "1e-9"


def test_cli_spice_refuses_control_block_and_never_runs_it(tmp_path):
    marker = tmp_path / "pwned"
    deck = tmp_path / "evil.cir"
    deck.write_text(f"* evil\nV1 a 0 1\nR1 a 0 1k\n.control\nshell touch {marker}\n.endc\n.op\n.end\n")
    res = runner.invoke(app, ["spice", str(deck)])
    assert res.exit_code != 0
    assert "evil.cir:4:" in res.stderr and ".control" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_kendall_size_deck_runs(tmp_path):
    """The Kendall et al. 2020 size (2x784 inputs, 100 hidden, 10 outputs), Norton-folded."""
    deck = tmp_path / "k.cir"
    assert runner.invoke(app, ["export", "--layers", "784,100,10", "--seed", "0", "--norton", "-o", str(deck)]).exit_code == 0
    res = runner.invoke(app, ["spice", str(deck), "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout.strip().splitlines()[-1])["node_voltages"]) == len(read_deck(deck).nodes)


@pytest.mark.slow
def test_kendall_size_full_deck_runs_in_ngspice_batch(tmp_path):
    import subprocess
    deck = tmp_path / "k.cir"
    assert runner.invoke(app, ["export", "--layers", "784,100,10", "--seed", "0", "-o", str(deck)]).exit_code == 0
    proc = subprocess.run(["ngspice", "-b", str(deck)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0 and "no convergence" not in proc.stdout.lower()


def test_cli_compare_json_and_plot(tmp_path):
    import numpy as np
    deck = NETLISTS[0].parent / "layered_16_8_4.cir"
    rows = tmp_path / "in.csv"
    np.savetxt(rows, np.random.default_rng(0).uniform(0, 1, (3, 32)), delimiter=",")
    plot = tmp_path / "parity.png"
    res = runner.invoke(app, ["compare", str(deck), "--json", "--plot", str(plot), "--batch-inputs", str(rows)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["max_abs_dv"] <= 1e-6 and out["samples"] == 3 and out["nodes"] == 65
    assert out["spice_seconds"] > 0 and out["emulator_seconds"] > 0
    assert plot.stat().st_size > 1000
    bad = tmp_path / "bad.csv"
    np.savetxt(bad, np.zeros((2, 5)), delimiter=",")
    res = runner.invoke(app, ["compare", str(deck), "--batch-inputs", str(bad)])
    assert res.exit_code == 2 and "32 input sources" in res.stderr


# a value for every non-DC diode parameter the importer accepts (level-1 switches at their off values)
NON_DC_VALUES = dict(
    TT=20e-9, TTT1=1e-3, TTT2=1e-5, CJO=4e-12, VJ=0.75, M=0.4, TM1=1e-3, TM2=1e-5, FC=0.5, CJP=1e-12, PHP=0.8,
    MJSW=0.3, FCS=0.4, CTA=1e-3, CTP=1e-3, TPB=1e-3, TPHP=1e-3, LM=1e-6, LP=1e-6, WM=1e-6, WP=1e-6, XOM=1e-6,
    XOI=1e-6, XM=1e-7, XP=1e-7, TNOM=27, EG=0.69, XTI=2, TRS=1e-3, TRS2=1e-5, TCV=1e-3, TLEV=1, TLEVC=1, KF=1e-16,
    AF=1.2, FV_MAX=5, BV_MAX=200, ID_MAX=1, TE_MAX=400, PD_MAX=1, RTH0=100, CTH0=1e-6, LEVEL=1, IKF=0, IKR=0)


def test_non_dc_diode_parameters_leave_ngspice_operating_point_unchanged():
    """The claim behind deck_notes: ngspice 39's operating point with every accepted non-DC
    parameter set equals the one without, in forward bias, reverse bias and breakdown."""
    from analog_ep.spice.parser import DIODE_NON_DC_PARAMS

    assert set(NON_DC_VALUES) == set(DIODE_NON_DC_PARAMS.values())
    def deck(extra: str) -> str:
        return ("* non-DC parameters\nV1 a 0 DC 120\nR1 a k 10k\nD1 0 k dz\nV2 b 0 2\nR2 b f 1k\nD2 f 0 dz\n"
                "V3 c 0 -5\nR3 c r 1meg\nD3 r 0 dz\n"
                f".model dz D(IS=2.52n RS=.568 N=1.752 BV=100 IBV=100u {extra})\n.op\n.end\n")
    bare = parse_deck(deck(""))
    full = parse_deck(deck(" ".join(f"{k}={v}" for k, v in NON_DC_VALUES.items())))
    a, b = run_op(bare).vector(bare), run_op(full).vector(bare)
    assert a[bare.index("k")] > 100 and a[bare.index("f")] > 0.5 and a[bare.index("r")] < -4.99  # all three regions
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)

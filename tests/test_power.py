"""Power, settling time and energy (issue 16): Tellegen's theorem on random circuits, emulator
against ngspice on the golden decks, a single RC node, V² scaling, and the energy report."""
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from analog_ep.circuit import DiodeModel, layered
from analog_ep.circuit.ir import Amplifiers, Circuit, Conductances, Role, VoltageSources
from analog_ep.cli import app
from analog_ep.data import load_dataset
from analog_ep.emulator import compile_circuit, settle
from analog_ep.emulator.power import AMPLIFIER_PORTS, element_powers
from analog_ep.spice import read_deck, run_op
from analog_ep.spice.netlist import element_names
from analog_ep.spice.power import operating_point_powers
from analog_ep.studies.plots import energy_breakdown_plot, energy_vs_size_plot
from analog_ep.studies.power import EnergyModel, energy_report, mlp_flops, node_capacitance, settle_times
from analog_ep.train import Trainer

from .conftest import NETLISTS
from .test_emulator import random_graph_circuit, random_layered_circuit
from .test_train import tiny_config

TELLEGEN = 1e-12  # |Σ absorbed| relative to the power scale (relative_balance), Newton settle to rtol 1e-13, float64
GMIN = 1e-15  # the decks' .options gmin, modelled by the emulator when comparing
runner = CliRunner()


def tight(cc, u=None, **kw):
    """A float64 Newton settle to the rounding floor (Shockley diodes), BCD for ideal clamps."""
    method = "bcd" if any(d.ideal for d in cc.diodes) else "newton"
    return settle(cc, u, method=method, rtol=1e-13, max_iters=500, on_fail="ignore", **kw)


def power_scale(powers, res) -> torch.Tensor:
    """The circuit's power scale (B,), W: Σ |absorbed| + G·V_max², G the sum of its conductances
    and V_max its largest node voltage (so that a circuit whose true power is 0 W, e.g. every
    conductance between equal voltages, is judged by its rounding, not 0/0)."""
    G = sum(float(res.cc.params[b.name].abs().sum()) for b in res.cc.blocks)
    return sum(p.abs() for p in powers.absorbed.values()) + G * res.V.abs().amax(1) ** 2


def relative_balance(powers, res) -> torch.Tensor:
    """|Σ absorbed| relative to the circuit's power scale."""
    return powers.balance.abs() / power_scale(powers, res)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(random_graph_circuit(), random_layered_circuit()), st.integers(1, 3))
def test_tellegen_closes_on_random_circuits(circuit, batch):
    """Σ over all elements (resistors, diodes, nudges, sources, both ports of every amplifier) of
    the absorbed power V·I is 0: signed weights (inverting amplifiers, negated sources), gain
    amplifiers, Shockley diodes with and without series resistance, nudged circuits."""
    cc = compile_circuit(circuit)
    u = cc.source_values(batch) * (1 + torch.rand(batch, cc.n_src, dtype=torch.float64))
    u = u + 0.1 * torch.rand(batch, cc.n_src, dtype=torch.float64)  # no circuit at 0 V throughout
    res = tight(cc, u)
    powers = element_powers(res)
    assert bool((relative_balance(powers, res) <= TELLEGEN).all()), relative_balance(powers, res)
    assert set(powers.kind.values()) >= {"conductance", "voltage_source"}
    scale = power_scale(powers, res)
    amplifiers = powers.total(AMPLIFIER_PORTS)
    assert bool((amplifiers.abs() <= TELLEGEN * scale).all())  # ideal transformers: what goes in comes out
    assert bool(((powers.delivered - powers.dissipated - amplifiers).abs() <= TELLEGEN * scale).all())


def test_tellegen_with_an_ep_nudge_and_ideal_clamps():
    """The nudge of settle(beta=, target=) (±β) and the currents of active ideal clamps close the
    balance too; without the clamps' currents the clamp sources would not."""
    c = layered("8,6,3", seed=0, g_init=(1e-6, 1e-4), diode=DiodeModel(ideal=True), clamp=(0.0, 0.05),
                amplifier_gain=2.0)
    cc = compile_circuit(c)
    u = cc.inputs_to_sources(torch.rand(4, 8, dtype=torch.float64))
    y = torch.rand(4, 3, dtype=torch.float64)
    for beta in (1e-5, -1e-5):
        res = tight(cc, u, beta=beta, target=y)
        powers = element_powers(res, beta=beta, target=y)
        assert bool((relative_balance(powers, res) <= TELLEGEN).all())
        assert float(powers.absorbed["nudge"].sum()) * beta > 0  # a −β nudge is active: it delivers
        clamp_current = powers.source_current[:, [cc.sources.index(c.index(n)) for n in ("clo", "chi")]]
        assert float(clamp_current.abs().max()) > 0  # some clamp conducts


@pytest.mark.spice
@pytest.mark.parametrize("path", NETLISTS, ids=[p.name for p in NETLISTS])
def test_source_currents_and_powers_agree_with_ngspice(path):
    """Every voltage source's branch current (amplifier sense sources included: the current each
    amplifier delivers) to 1e-9 A; every group's power to 1e-9 of the circuit's total |P|; and
    Tellegen's theorem holds in ngspice's result to its tolerances (reltol 1e-9)."""
    circuit = read_deck(path)
    op = run_op(circuit)
    cc = compile_circuit(circuit, gmin=GMIN)
    emu = element_powers(tight(cc))
    for g in circuit.groups(VoltageSources):
        for name, node in zip(element_names(g, circuit.nodes), g.node):
            assert abs(-op.currents[name] - float(emu.source_current[0, cc.sources.index(int(node))])) <= 1e-9, name
    for g in circuit.groups(Amplifiers):
        for k, name in enumerate(element_names(g, circuit.nodes)):
            assert abs(op.currents[f"V{name}"] - float(emu.amplifiers[g.name].i_out[0, k])) <= 1e-9, name
    ref = operating_point_powers(circuit, op)
    total = sum(abs(v) for v in ref.values())
    assert set(ref) == set(emu.absorbed)
    assert max(abs(ref[k] - float(emu.absorbed[k][0])) for k in ref) <= 1e-9 * total
    assert abs(sum(ref.values())) <= 1e-9 * total


def rc_circuit(g: float = 1e-5, v: float = 1.0) -> Circuit:
    """One free node n, a conductance g to a source at v."""
    return Circuit(("0", "x", "n"), (Role.GROUND, Role.INPUT, Role.OUTPUT),
                   (VoltageSources("x", [1], [v]), Conductances("w", [1], [2], [g])))


def test_single_rc_node_settles_in_rc_ln_one_over_tol():
    """t = RC·ln(1/tol) exactly (1e-12 relative) for one node of capacitance C behind a
    conductance g; the node's wire capacitance counts its one device. The transient solver
    (implicit Euler, dt = RC/1000) started from 0 V is within tol of the DC point at that time,
    to 1 % of tol (the step's bias: a factor exp(ln(1/tol)·dt/2RC) ≈ 1.003)."""
    g, tol = 1e-5, 1e-3
    cc = compile_circuit(rc_circuit(g))
    energy = EnergyModel(node_capacitance=1e-13)
    cap = node_capacitance(cc, energy)
    C = 1e-13 + energy.wire_capacitance * energy.cell_pitch
    assert float(cap[0]) == pytest.approx(C, rel=1e-15)
    t = settle_times(settle(cc), cap, tol)
    assert t[0] == pytest.approx(C / g * math.log(1 / tol), rel=1e-12)
    tau = C / g
    res = settle(cc, method="transient", s0=torch.zeros(1, 1, dtype=torch.float64), on_fail="ignore",
                 options=dict(dt=tau / 1000, duration=float(t[0]), capacitance=C))
    assert float(1 - res.s[0, 0]) == pytest.approx(tol, rel=0.01)


def test_linear_circuit_power_scales_as_v_squared():
    """Doubling every source of a circuit without diodes (signed weights, gain amplifiers)
    quadruples every group's power, to 1e-12 relative."""
    c = layered("6,5,4,3", seed=2, g_init=(1e-6, 1e-4), amplifier_gain=3.0, diode=None)
    cc = compile_circuit(c)
    u = cc.inputs_to_sources(torch.rand(3, 6, dtype=torch.float64))
    one, two = element_powers(tight(cc, u)), element_powers(tight(cc, 2 * u))
    for k, p in one.absorbed.items():
        torch.testing.assert_close(two.absorbed[k], 4 * p, rtol=1e-12, atol=0)


def tiny_circuit_report(**kw) -> tuple:
    c = layered("6,5,3", seed=0, g_init=(1e-6, 1e-4), amplifier_gain=2.0, clamp=(0.6, 1.0))
    cc = compile_circuit(c)
    u = cc.inputs_to_sources(4 * torch.rand(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    y = torch.zeros(5, 3, dtype=torch.float64)
    y[:, 0] = 0.5
    return cc, energy_report(cc, u, EnergyModel(**kw), target=y, beta=1e-5, mode="centered", batch_size=4,
                             layers=[6, 5, 3])


def test_energy_report_adds_up():
    """Inference: the breakdown sums to the energy, which is the drawn power × settle time plus
    one conversion per output; the drawn power equals dissipation + amplifier overhead + sinking
    sources (Tellegen). Training step: three phases (centred) with one conversion per free node
    each, plus the writes of every trainable device shared by the batch."""
    cc, r = tiny_circuit_report(hold_time=1e-9)
    energy = EnergyModel(hold_time=1e-9)
    assert sum(r["breakdown_J"].values()) == pytest.approx(r["energy_per_inference_J"], rel=1e-12)
    assert r["breakdown_J"]["read-out (ADC)"] == pytest.approx(3 * energy.walden_fom * 2 ** 8)
    assert r["tellegen_residual"] < 1e-9  # the settle's rtol is 1e-10
    assert sum(r["power_breakdown_W"].values()) == pytest.approx(r["power_W"], rel=1e-12)
    assert r["latency_per_inference_s"] == pytest.approx(r["settle_time_s"] + 1e-9 + 1 / energy.adc_rate)
    t = r["training_step"]
    devices = sum(int(cc.params[k].numel()) for k in cc.trainable)
    assert t["trainable_devices"] == devices and set(t["phases_J"]) == {"free", "+β", "−β"}
    assert t["write_energy_per_sample_J"] == pytest.approx(devices * energy.write_energy / 4)
    assert r["energy_per_training_step_J"] == pytest.approx(sum(t["phases_J"].values())
                                                            + t["write_energy_per_sample_J"])
    assert t["phases_J"]["free"] == pytest.approx(r["energy_per_inference_J"] - 3 * energy.conversion_energy
                                                  + cc.n_free * energy.conversion_energy)


def test_amplifier_supply_model():
    """With rails given, the amplifiers' share of the drawn power is their quiescent power,
    2·V_s·I_q per op-amp, plus V_s·(|I_in| + |I_out|) per amplifier, less the net power their
    ports deliver: the difference of two reports with I_q and 2·I_q is the quiescent part."""
    n_amp = 2 * 5  # an inverting and a gain copy of each of the 5 hidden nodes
    a = tiny_circuit_report(supply_voltage=5.0)[1]["power_breakdown_W"]["amplifiers"]
    b = tiny_circuit_report(supply_voltage=5.0, quiescent_current=34e-6)[1]["power_breakdown_W"]["amplifiers"]
    assert b - a == pytest.approx(2 * 5.0 * 17e-6 * 2 * n_amp, rel=1e-9)
    low = tiny_circuit_report(supply_voltage=1e-3)[1]
    assert any("clip" in note for note in low["notes"])


def test_digital_comparison_counts_flops():
    assert mlp_flops([784, 100, 10]) == 2 * 784 * 100 + 100 + 2 * 100 * 10 + 10
    _, r = tiny_circuit_report()
    d = r["digital"]
    assert d["flops_per_training_step"] == 3 * d["flops_per_inference"] == 3 * mlp_flops([6, 5, 3])
    for p in d["platforms"]:
        assert p["energy_per_inference_J"] == pytest.approx(d["flops_per_inference"] * p["joules_per_flop"])
        assert p["inference_ratio_digital_over_analog"] == pytest.approx(
            p["energy_per_inference_J"] / r["energy_per_inference_J"])


def test_energy_model_is_checked():
    with pytest.raises(ValueError, match="unknown field.*bogus"):
        EnergyModel().updated({"bogus": 1})
    with pytest.raises(ValueError, match="settle_tolerance"):
        EnergyModel(settle_tolerance=2.0)


def test_figures_are_returned_not_shown():
    _, r = tiny_circuit_report()
    assert energy_breakdown_plot(r).axes
    rows = [dict(r, name=name, conductances=n) for name, n in (("a", 100), ("b", 1000))]
    assert energy_vs_size_plot(rows).axes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(tiny_config(epochs=1), data=load_dataset("digits"), out=out).fit(progress=False)
    return out / "checkpoint.pt"


def test_power_command_json(checkpoint, tmp_path):
    plot = tmp_path / "energy.png"
    res = runner.invoke(app, ["power", "--checkpoint", str(checkpoint), "--n", "12", "--set", "hold_time=1e-9",
                              "--plot", str(plot), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("energy_per_inference_J", "power_W", "settle_time_s", "energy_per_training_step_J"):
        assert got[key] > 0, key
    assert got["n_samples"] == 12 and got["energy_model"]["hold_time"] == 1e-9 and plot.exists()
    assert got["digital"]["layers"] == [64, 32, 10]
    res = runner.invoke(app, ["power", "--checkpoint", str(checkpoint), "--n", "3"])
    assert res.exit_code == 0 and "per inference" in res.stdout
    res = runner.invoke(app, ["power", "--checkpoint", str(checkpoint), "--set", "cell_pich=1"])
    assert res.exit_code == 2 and "unknown field" in res.stderr


def test_evaluate_power(checkpoint):
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(checkpoint), "--power", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["power"]["n_samples"] == 100 and got["power"]["energy_per_inference_J"] > 0


@pytest.mark.spice
def test_power_command_checks_ngspice(checkpoint):
    res = runner.invoke(app, ["power", "--checkpoint", str(checkpoint), "--n", "4", "--spice", "2", "--json"])
    assert res.exit_code == 0, res.output
    sp = json.loads(res.stdout.strip().splitlines()[-1])["spice"]
    assert sp["n"] == 2 and sp["max_rel_power_difference"] < 1e-7 and sp["max_abs_source_current_difference_A"] < 1e-9

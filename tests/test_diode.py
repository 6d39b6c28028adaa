"""ngspice's DC diode law in the emulator: reverse breakdown (BV, IBV), the reverse-bias cubic,
and a vendor-style 1N4148 card, against the law's own integral and against ngspice 39."""
import math

import numpy as np
import pytest
import torch

from analog_ep.circuit import DiodeModel, layered
from analog_ep.circuit.constants import THERMAL_VOLTAGE
from analog_ep.emulator import compile_circuit, energy, settle
from analog_ep.emulator.operators import breakdown_voltage, diode_cocontent, diode_iv
from analog_ep.spice import parse_deck, run_op
from analog_ep.studies.compare import compare

from .test_netlist import CARD_DECK

GMIN = 1e-15  # the decks' .options gmin, modelled by the emulator when comparing
TOL_V = 1e-6  # agreement bound: 1 µV, at reltol=1e-9 abstol=1e-15 vntol=1e-12
OPTIONS = ".options reltol=1e-9 abstol=1e-15 vntol=1e-12 gmin=1e-15 itl1=1000"

# (IS A, N, BV V, IBV A): a 1N4148, a 4 V Zener-like junction, an IBV below IS·BV/V_T (ngspice then
# keeps xbv = BV) and a diode without breakdown
CASES = [(2.52e-9, 1.752, 100.0, 1e-4), (1e-9, 1.5, 4.0, 1e-3), (1e-9, 1.0, 100.0, 1e-9), (1e-14, 1.0, math.inf, 1e-3)]


def _params(dtype=torch.float64):
    IS, N, BV, IBV = (torch.tensor(col, dtype=dtype) for col in zip(*CASES))
    nvt = N * THERMAL_VOLTAGE
    return IS, nvt, breakdown_voltage(IS, nvt, BV, IBV, THERMAL_VOLTAGE), BV, IBV


def test_breakdown_voltage_meets_ibv():
    """xbv solves ngspice's matching condition IS·(exp((BV − xbv)/(N V_T)) − 1 + xbv/V_T) = IBV
    (relative 1e-12), or stays BV when IBV < IS·BV/V_T, or inf without breakdown."""
    IS, nvt, xbv, BV, IBV = _params()
    vt = THERMAL_VOLTAGE
    matched = IS[:2] * (torch.exp((BV[:2] - xbv[:2]) / nvt[:2]) - 1 + xbv[:2] / vt)
    np.testing.assert_allclose(matched.numpy(), IBV[:2].numpy(), rtol=1e-12)
    assert float(IBV[2]) < float(IS[2] * BV[2] / vt) and float(xbv[2]) == 100.0
    assert math.isinf(float(xbv[3]))
    assert 99.52 < float(xbv[0]) < 99.53  # the knee moves ~0.48 V below BV for the 1N4148


def test_current_is_the_cocontents_slope_and_non_decreasing():
    """The I–V law is the derivative of the co-content (autograd, relative 1e-12) and never
    decreases, in forward, reverse (cubic) and breakdown regions: the energy stays convex."""
    IS, nvt, xbv, _, _ = _params()
    v = torch.cat([torch.linspace(-100.5, -95.0, 20001), torch.linspace(-5.0, 0.75, 20001)]).double()
    v = v[:, None].expand(-1, len(CASES)).clone().requires_grad_(True)
    E = diode_cocontent(v, IS, nvt, xbv)
    finite = torch.isfinite(E).detach()  # a 4 V junction at −100 V: exp overflows, as physics would
    (slope,) = torch.autograd.grad(E[finite].sum(), v)
    i, g = diode_iv(v.detach(), IS, nvt, xbv)
    rel = ((slope - i).abs() / (i.abs() + IS))[finite]
    assert float(rel.max()) < 1e-12
    assert bool((i[1:] >= i[:-1]).all())
    vv = v.detach().clone().requires_grad_(True)
    (di,) = torch.autograd.grad(diode_iv(vv, IS, nvt, xbv)[0].sum(), vv)
    assert float(((di - g).abs() / g).max()) < 1e-12
    assert bool((g > 0).all())


def test_reverse_bias_follows_ngspices_cubic():
    """Between −xbv and −3 N V_T ngspice uses −IS(1 + (3 N V_T/(e v))³), not Shockley."""
    IS, nvt = torch.tensor([2.52e-9], dtype=torch.float64), torch.tensor([1.752 * THERMAL_VOLTAGE], dtype=torch.float64)
    v = torch.tensor([[-0.2]], dtype=torch.float64)
    i, _ = diode_iv(v, IS, nvt, torch.tensor([math.inf], dtype=torch.float64))
    assert float(i) == pytest.approx(-2.52e-9 * (1 + (3 * float(nvt) / (math.e * -0.2)) ** 3), rel=1e-15)


def _deck(body: str, model: str) -> str:
    return f"* diode law\n{OPTIONS}\n{body}\n.model dz D({model})\n.op\n.end\n"


# deck, and the knee xbv (V) that the cathode k must pass for the junction to be in breakdown
DECKS = {
    # a source drives a resistor into the cathode, past BV: the junction breaks down
    "1n4148_breakdown": (_deck("V1 a 0 DC 120\nR1 a k 10k\nD1 0 k dz", "IS=2.52n RS=.568 N=1.752 BV=100 IBV=100u"),
                         99.52),
    "zener_1meg": (_deck("V1 a 0 DC 4.5\nR1 a k 1meg\nD1 0 k dz", "IS=1n N=1.5 BV=4 IBV=1m"), 3.46),
    "zener_100ohm": (_deck("V1 a 0 DC 12\nR1 a k 100\nD1 0 k dz", "IS=1n N=1.5 BV=4 IBV=1m"), 3.46),
    "ibv_below_is_bv_vt": (_deck("V1 a 0 DC 120\nR1 a k 10k\nD1 0 k dz", "IS=1n BV=100 IBV=1n"), 100.0),
    # reverse bias at −3.9 N V_T through 10 MΩ: Shockley's reverse current would be 58 µV off
    "reverse_cubic": (_deck("V1 a 0 DC -0.2\nR1 a k 10meg\nD1 k 0 dz", "IS=2.52n N=1.752"), None),
}


@pytest.mark.spice
@pytest.mark.parametrize("method", ["auto", "bcd", "newton"])
@pytest.mark.parametrize("name", list(DECKS))
def test_breakdown_and_reverse_bias_agree_with_ngspice(name, method):
    text, knee = DECKS[name]
    c = parse_deck(text)
    op = run_op(c)
    res = settle(compile_circuit(c, gmin=GMIN), method=method, max_iters=5000)
    dv = np.abs(res.voltages_of(c.nodes)[0].numpy() - op.vector(c)).max()
    assert res.converged and op.notes == []
    assert dv <= TOL_V, f"max |dV| = {dv:.3g} V"
    if knee is not None:
        assert op.node_voltages["k"] > knee  # the junction conducts in breakdown


@pytest.mark.spice
def test_vendor_1n4148_card_agrees_with_ngspice():
    """The card with '+' continuations, mixed case, suffixes with units and DC keywords: one
    diode clamps forward, one breaks down. The default solver ("auto": plain BCD needs ~1,700
    sweeps on these diodes with series resistance; auto hands over to Newton)."""
    cmp = compare(parse_deck(CARD_DECK))
    assert cmp.notes == []
    assert cmp.max_abs_dv <= TOL_V, f"max |dV| = {cmp.max_abs_dv:.3g} V"
    k = cmp.nodes.index("k")
    assert cmp.spice[0, k] > 100  # in breakdown


def test_breakdown_parameters_flow_into_the_compiled_circuit():
    c = layered("3,2", seed=0, diode=DiodeModel(1e-12, 1.5, BV=5.0, IBV=1e-4))
    cc = compile_circuit(c)
    assert torch.equal(cc.params["BV:d1hi"], torch.full((2,), 5.0, dtype=torch.float64))
    assert torch.equal(cc.params["IBV:d1lo"], torch.full((2,), 1e-4, dtype=torch.float64))
    assert torch.isinf(compile_circuit(layered("3,2", seed=0)).params["BV:d1hi"]).all()
    res = settle(cc)
    assert torch.isfinite(energy(cc, res.s, res.u)).all()

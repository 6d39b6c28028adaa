"""EP gradients against the exact equilibrium gradient (implicit differentiation)."""
import pytest
import torch

from analog_ep.circuit import DiodeModel, layered
from analog_ep.emulator import compile_circuit
from analog_ep.emulator.ep import ep_gradient, equilibrium_gradient


def flat(grads, keys):
    return torch.cat([grads[k].reshape(-1) for k in keys])


def rel_err(a, b, keys):
    a, b = flat(a, keys), flat(b, keys)
    return float((a - b).norm() / b.norm())


def problem(seed, gain=None, diode=DiodeModel()):
    c = layered("6,5,3", seed=seed, g_init=(1e-6, 1e-4), amplifier_gain=gain, diode=diode, clamp=(-0.1, 0.4))
    cc = compile_circuit(c)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 6, generator=g, dtype=torch.float64)
    y = torch.rand(4, 3, generator=g, dtype=torch.float64) * 0.3
    u = cc.inputs_to_sources(x)
    beta_unit = float(cc.params["g:w2p"].sum(0).mean())  # typical output-node conductance
    return cc, u, y, beta_unit


@pytest.mark.parametrize("seed, gain", [(0, None), (1, 2.0), (2, 0.5), (3, None)])
def test_centered_ep_matches_exact_gradient(seed, gain):
    """Symmetric nudging, β = 1e-3 of an output node's conductance: relative error <= 1e-3."""
    cc, u, y, unit = problem(seed, gain)
    keys = cc.trainable + ["a:a1"] * (gain is not None) + ["u"]
    exact = equilibrium_gradient(cc, u, y, keys=keys)
    ep = ep_gradient(cc, u, y, 1e-3 * unit, mode="centered", keys=keys)
    assert rel_err(ep.grads, exact, keys) <= 1e-3


def test_one_sided_bias_is_linear_in_beta_and_centered_quadratic():
    cc, u, y, unit = problem(5)
    keys = cc.trainable
    exact = equilibrium_gradient(cc, u, y)
    err = {}
    for mode in ("positive", "centered"):
        err[mode] = [rel_err(ep_gradient(cc, u, y, b * unit, mode=mode).grads, exact, keys) for b in (0.2, 0.1, 0.05)]
    one = err["positive"]
    assert 1.7 < one[0] / one[1] < 2.3 and 1.7 < one[1] / one[2] < 2.3  # O(β)
    cen = err["centered"]
    assert cen[0] / cen[1] > 3.0 and cen[1] < one[1] / 5  # O(β²), far smaller


def test_random_sign_is_unbiased_to_first_order():
    cc, u, y, unit = problem(6)
    exact = equilibrium_gradient(cc, u, y)
    g = torch.Generator().manual_seed(0)
    rnd = ep_gradient(cc, u, y, 1e-3 * unit, mode="random", generator=g)
    assert rel_err(rnd.grads, exact, cc.trainable) < 1e-2
    assert len(rnd.nudged) == 1


def test_conductance_gradient_is_the_local_rule():
    """∂E/∂g = ½ΔV²: the EP update needs only the voltage drop across each resistor."""
    cc, u, y, unit = problem(7, diode=None)
    beta = 1e-3 * unit
    ep = ep_gradient(cc, u, y, beta, mode="positive")
    V0, Vb = ep.free.V, ep.nudged[0].V
    blk = next(b for b in cc.blocks if b.name == "g:w2p")
    d0 = V0[:, blk.a][:, :, None] - V0[:, blk.b][:, None, :]
    db = Vb[:, blk.a][:, :, None] - Vb[:, blk.b][:, None, :]
    local = (0.5 * (db ** 2 - d0 ** 2)).mean(0) / beta
    torch.testing.assert_close(ep.grads["g:w2p"], local, rtol=1e-9, atol=1e-12)


def test_bad_arguments():
    cc, u, y, unit = problem(0)
    with pytest.raises(ValueError, match="mode"):
        ep_gradient(cc, u, y, 1e-6, mode="sideways")
    with pytest.raises(ValueError, match="beta"):
        ep_gradient(cc, u, y, 0.0)

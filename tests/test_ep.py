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


@pytest.mark.parametrize("gain", [None, 2.0])
def test_direct_conductance_gradients_equal_autograd_of_the_energy(gain):
    """The closed-form ½ΔV² path (dense blocks with a fixed side, both-free blocks, sparse
    blocks; per-sample weights) against autograd of the energy at the same states: 1e-12."""
    from analog_ep.emulator import settle
    from analog_ep.emulator.energy import energy
    from analog_ep.emulator.ep import _conductance_grads

    cc, u, y, unit = problem(5, gain)
    free = settle(cc, u)
    nudged = settle(cc, u, beta=unit * 0.1, target=y, s0=free.s)
    w = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    terms = [(w, nudged.s, cc), (-w, free.s, cc), (3.0, free.s * 1.01, cc)]
    keys = [b.name for b in cc.blocks]
    direct = _conductance_grads(cc, keys, terms, u)
    leaves = {k: cc.params[k].detach().clone().requires_grad_(True) for k in keys}
    total = sum((torch.as_tensor(wk) * energy(cc, s, u, params=leaves)).sum() for wk, s, _ in terms)
    auto = dict(zip(keys, torch.autograd.grad(total, list(leaves.values()))))
    kinds = {(b.dense, bool((cc.root[b.a] >= cc.n_free).all()), bool((cc.root[b.b] >= cc.n_free).all()))
             for b in cc.blocks}
    assert {(True, True, False), (True, False, False)} <= kinds  # the fast paths are exercised
    for k in keys:
        torch.testing.assert_close(direct[k], auto[k], rtol=1e-12, atol=1e-12 * float(auto[k].abs().max()))

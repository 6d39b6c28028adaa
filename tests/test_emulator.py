"""The emulator's settle against ngspice, against its own energy, and its transient/noise modes."""

import math
import numpy as np
import networkx as nx
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from analog_ep.circuit import DiodeModel, from_graph, layered
from analog_ep.circuit.constants import BOLTZMANN, THERMAL_VOLTAGE
from analog_ep.circuit.ir import Circuit, Conductances, Diodes, Role, VoltageSources
from analog_ep.emulator import ConvergenceError, compile_circuit, energy, settle
from analog_ep.spice import read_deck, run_op

from .conftest import NETLISTS

GMIN = 1e-15  # the decks' .options gmin, modelled by the emulator when comparing
TOL_V = 1e-6  # agreement bound: 1 µV, at reltol=1e-9 abstol=1e-15 vntol=1e-12


def spice_vs_emulator(circuit, method="bcd"):
    op = run_op(circuit)
    res = settle(compile_circuit(circuit, gmin=GMIN), method=method, max_iters=5000)
    return np.abs(res.voltages_of(circuit.nodes)[0].numpy() - op.vector(circuit)).max(), res


@pytest.mark.spice
@pytest.mark.parametrize("path", NETLISTS, ids=[p.name for p in NETLISTS])
def test_golden_decks_agree_with_ngspice(path):
    dv, res = spice_vs_emulator(read_deck(path))
    assert res.converged and dv <= TOL_V


@st.composite
def random_graph_circuit(draw):
    n_hidden = draw(st.integers(1, 5))
    n_in = draw(st.integers(1, 3))
    g = nx.Graph()
    for i in range(n_in):
        g.add_node(f"x{i}", role="input", v=draw(st.floats(-1, 1)))
    g.add_node("b", role="bias", v=draw(st.floats(-1, 1)))
    for j in range(n_hidden):
        g.add_node(f"h{j}", role="output" if j == n_hidden - 1 else "hidden")
    weight = st.floats(1e-6, 1e-4).flatmap(lambda w: st.sampled_from([w, -w]))
    for j in range(n_hidden):  # every free node reaches a source
        g.add_edge(f"x{draw(st.integers(0, n_in - 1))}", f"h{j}", weight=draw(weight))
    for j in range(n_hidden):
        for k in range(j + 1, n_hidden):
            if draw(st.booleans()):
                g.add_edge(f"h{j}", f"h{k}", weight=draw(weight))
        if draw(st.booleans()):
            g.add_edge("b", f"h{j}", weight=draw(weight))
    diode = draw(st.sampled_from([None, DiodeModel(1e-14, 1.0), DiodeModel(1e-12, 1.8), DiodeModel(1e-14, 1.2, 50.0)]))
    return from_graph(g, diode=diode, clamp=(draw(st.floats(-0.5, 0.2)), draw(st.floats(0.3, 1.0))))


@st.composite
def random_layered_circuit(draw):
    sizes = [draw(st.integers(1, 6)) for _ in range(draw(st.integers(2, 4)))]
    gain = draw(st.sampled_from([None, 0.5, 2.0, 4.0]))
    c = layered(sizes, seed=draw(st.integers(0, 10_000)), amplifier_gain=gain,
                g_init=(1e-6, 1e-4), diode=draw(st.sampled_from([None, DiodeModel()])),
                bias=draw(st.booleans()))
    if draw(st.booleans()):
        c = c.nudged([draw(st.floats(-1, 1)) for _ in c.nodes_with_role(Role.OUTPUT)], draw(st.floats(1e-7, 1e-4)))
    return c


@pytest.mark.spice
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(random_graph_circuit(), random_layered_circuit()), st.sampled_from(["auto", "bcd", "newton"]))
def test_random_circuits_agree_with_ngspice(circuit, method):
    if method == "bcd" and any(np.any(d.RS > 0) for d in circuit.groups(Diodes)):
        method = "newton"
    dv, res = spice_vs_emulator(circuit, method)
    assert res.converged
    assert dv <= TOL_V, f"max |dV| = {dv:.3g} V ({method})"


@settings(max_examples=25, deadline=None)
@given(random_layered_circuit())
def test_settle_is_a_stationary_point_of_the_energy(circuit):
    cc = compile_circuit(circuit)
    res = settle(cc)
    s = res.s.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(cc, s, res.u).sum(), s)
    assert grad.abs().max() <= 1e-9 * max(float(cc.params["u"].abs().max()), 1.0) * 1e-3 + 1e-15
    # a perturbation raises the energy: it is the minimum, not just stationary
    e0 = energy(cc, res.s, res.u)
    assert bool((energy(cc, res.s + 1e-3 * torch.randn_like(res.s), res.u) > e0).all())


def test_batched_inputs_match_single_settles():
    c = layered("6,5,3", seed=0, g_init=(1e-6, 1e-4))
    cc = compile_circuit(c)
    x = torch.rand(4, 6, dtype=torch.float64)
    batched = settle(cc, cc.inputs_to_sources(x))
    for k in range(4):
        single = settle(cc, cc.inputs_to_sources(x[k:k + 1]))
        torch.testing.assert_close(batched.s[k], single.s[0], rtol=0, atol=1e-12)


def test_ideal_clamps_bound_the_nodes():
    c = layered("8,6,3", seed=0, g_init=(1e-6, 1e-4), diode=DiodeModel(ideal=True), clamp=(0.0, 0.05))
    cc = compile_circuit(c)
    res = settle(cc, cc.inputs_to_sources(torch.rand(5, 8, dtype=torch.float64)))
    hidden = [cc.free.index(i) for i in c.nodes_with_role(Role.HIDDEN) + c.nodes_with_role(Role.OUTPUT)]
    s = res.s[:, hidden]
    assert res.converged and bool((s >= -1e-12).all() and (s <= 0.05 + 1e-12).all())
    assert bool(((s - 0.05).abs() < 1e-12).any() or (s.abs() < 1e-12).any())  # some clamp is active


def test_unconverged_settle_raises_and_reports():
    c = layered("8,6,3", seed=0, g_init=(1e-6, 1e-4))
    cc = compile_circuit(c)
    with pytest.raises(ConvergenceError, match="raise max_iters") as err:
        settle(cc, max_iters=1, rtol=1e-14)
    assert err.value.result.iterations == 1 and not err.value.result.converged
    with pytest.raises(ConvergenceError, match="use method='auto'"):
        settle(cc, method="bcd", max_iters=1, rtol=1e-14)
    with pytest.warns(RuntimeWarning, match="not converged"):
        settle(cc, max_iters=1, rtol=1e-14, on_fail="warn")


def test_floating_node_is_refused():
    nodes = ("0", "x", "a", "b")
    roles = (Role.GROUND, Role.INPUT, Role.HIDDEN, Role.HIDDEN)
    c = Circuit(nodes, roles, (VoltageSources("v", [1], [1.0]), Conductances("w", [1], [2], [1e-3])))
    with pytest.raises(ValueError, match="no conductive path"):
        compile_circuit(c)


def test_float32_settle_close_to_float64():
    c = layered("20,10,4", seed=1, g_init=(1e-6, 1e-4), amplifier_gain=2.0)
    x = torch.rand(3, 20, dtype=torch.float64)
    cc64, cc32 = compile_circuit(c), compile_circuit(c, dtype=torch.float32)
    a = settle(cc64, cc64.inputs_to_sources(x))
    b = settle(cc32, cc32.inputs_to_sources(x.float()))
    assert b.s.dtype == torch.float32 and b.converged
    assert float((a.s - b.s.double()).abs().max()) < 1e-4


def test_transient_reaches_the_operating_point():
    c = layered("6,4,2", seed=0, g_init=(1e-6, 1e-4), diode=DiodeModel())
    cc = compile_circuit(c)
    ref = settle(cc)
    # time constant C / G ~ 1e-12 F / 1e-4 S = 10 ns; 2 us is ~200 time constants
    res = settle(cc, method="transient", options=dict(dt=1e-9, duration=2e-6, capacitance=1e-12), on_fail="ignore")
    assert float((res.s - ref.s).abs().max()) < 1e-7
    short = settle(cc, method="transient", options=dict(dt=1e-9, duration=2e-9, capacitance=1e-12), on_fail="ignore")
    assert not short.converged and short.rel_residual > 1e-3  # finite settling time is visible


def test_johnson_noise_gives_kT_over_C():
    """Equipartition: each node's voltage variance in thermal equilibrium is kT/C."""
    c = layered("3,4,2", seed=0, g_init=(1e-5, 1e-4), diode=None, bias=False)
    cc = compile_circuit(c)
    ref = settle(cc)
    C, T = 1e-15, 300.0
    gen = torch.Generator().manual_seed(0)
    batch = 4000
    u = ref.u.expand(batch, -1)
    res = settle(cc, u, s0=ref.s, method="transient", on_fail="ignore",
                 options=dict(dt=5e-14, duration=3e-11, capacitance=C, temperature=T, generator=gen))
    var = res.s.var(0)
    expected = BOLTZMANN * T / C
    np.testing.assert_allclose(var.numpy(), expected, rtol=0.1)  # 4000 samples: ~2 % sampling error


def test_operator_cache_follows_parameter_updates():
    """Settles reuse parameter-only operators; an in-place update or a new tensor invalidates them."""
    c = layered("6,5,3", seed=0, g_init=(1e-6, 1e-4))
    cc = compile_circuit(c)
    x = torch.rand(2, 6, dtype=torch.float64)
    settle(cc, cc.inputs_to_sources(x))
    cc.params["g:w1p"].mul_(3.0)  # in place, as an optimizer step does
    cc.params["g:w2n"] = cc.params["g:w2n"] * 0.5  # a new tensor
    fresh = compile_circuit(c.with_conductances({"w1p": c.group(Conductances, "w1p").g * 3.0,
                                                 "w2n": c.group(Conductances, "w2n").g * 0.5}))
    updated, rebuilt = settle(cc, cc.inputs_to_sources(x)), settle(fresh, fresh.inputs_to_sources(x))
    torch.testing.assert_close(updated.s, rebuilt.s, rtol=0, atol=1e-12)


def test_diode_and_gain_caches_follow_their_parameters():
    """The diode set and the node gains are cached apart from the conductances: an in-place
    change of a diode's IS or an amplifier's gain still reaches the next settle and the voltages
    it reports (what a fresh compile of the changed circuit gives)."""
    c = layered("6,5,3", seed=0, g_init=(1e-6, 1e-4), amplifier_gain=2.0, diode=DiodeModel(1e-12, 1.5))
    cc = compile_circuit(c)
    x = torch.rand(2, 6, dtype=torch.float64) * 4
    settle(cc, cc.inputs_to_sources(x))  # fills the caches
    is_key = next(k for k in cc.params if k.startswith("IS:"))
    gain_key = next(k for k in cc.params if k.startswith("a:"))
    cc.params[is_key].mul_(100.0)
    cc.params[gain_key].mul_(1.5)
    fresh = compile_circuit(c)
    fresh.params[is_key].mul_(100.0)
    fresh.params[gain_key].mul_(1.5)
    updated, rebuilt = settle(cc, cc.inputs_to_sources(x)), settle(fresh, fresh.inputs_to_sources(x))
    torch.testing.assert_close(updated.V, rebuilt.V, rtol=0, atol=1e-12)
    torch.testing.assert_close(updated.outputs, rebuilt.V[:, cc.outputs], rtol=0, atol=1e-12)
    assert not torch.allclose(updated.V, settle(compile_circuit(c), cc.inputs_to_sources(x)).V)


def test_solver_options_are_checked_per_method():
    """An option the method does not have, or a required one left out, is a ValueError that
    names the method and its valid options; an unknown method names the registered ones."""
    cc = compile_circuit(layered("4,3,2", seed=0, g_init=(1e-6, 1e-4)))
    with pytest.raises(ValueError, match=r"method 'bcd': unknown option\(s\) dt; valid options: check_every, inner"):
        settle(cc, method="bcd", options={"dt": 1e-9})
    with pytest.raises(ValueError, match=r"method 'transient' needs option\(s\) duration; valid options: .*temperature"):
        settle(cc, method="transient", options={"dt": 1e-9})
    with pytest.raises(ValueError, match="unknown method 'cg': use one of auto, bcd, newton, transient"):
        settle(cc, method="cg")
    assert settle(cc, method="bcd", options={"inner": 2, "check_every": 5}).converged


def diode_coupled_pair(g: float = 1e-3, v: float = 5.0) -> Circuit:
    """Two free nodes, each tied to a source (+v, -v volts) by a conductance g (S), coupled
    only through a pair of antiparallel Shockley diodes: the forward one conducts hard, and
    BCD, moving one node at a time against its stiff I-V curve, crawls."""
    nodes = ("0", "p", "n", "a", "b")
    roles = (Role.GROUND, Role.INPUT, Role.INPUT, Role.HIDDEN, Role.OUTPUT)
    return Circuit(nodes, roles, (VoltageSources("v", [1, 2], [v, -v]),
                                  Conductances("g", [1, 2], [3, 4], [g, g]),
                                  Diodes("d", [3, 4], [4, 3], [1e-14, 1e-14], [1.0, 1.0], [0.0, 0.0])))


def series_resistance_net() -> Circuit:
    """A 16-8-4 layered net whose clamp diodes have RS = 10 ohm (an internal node each, tied
    to its hidden node by 0.1 S against network conductances of ~1e-5 S: BCD crawls), inputs
    up to 3 V so that clamps conduct."""
    return layered("16,8,4", seed=0, inputs=np.linspace(0.0, 3.0, 16), diode=DiodeModel(IS=1e-14, N=1.0, RS=10.0))


@pytest.mark.spice
@pytest.mark.parametrize("build", [series_resistance_net, diode_coupled_pair])
@pytest.mark.parametrize("options", [None, {"dense_max": 0}], ids=["dense", "sparse"])
def test_auto_finishes_stiff_circuits_with_newton(build, options):
    """Where BCD crawls (hundreds of sweeps not enough), the default method notices the stall
    after 10 sweeps and Newton (dense, or the sparse LU) ends within 1 uV of ngspice."""
    circuit = build()
    cc = compile_circuit(circuit, gmin=GMIN)
    assert not settle(cc, method="bcd", max_iters=300, on_fail="ignore").converged
    res = settle(cc, options=options)
    dv = np.abs(res.voltages_of(circuit.nodes)[0].numpy() - run_op(circuit).vector(circuit)).max()
    assert res.converged and res.method == "auto:bcd+newton" and dv <= TOL_V
    assert res.stages["bcd"] <= 20 and res.stages["newton"] <= 20
    assert res.iterations == res.stages["bcd"] + res.stages["newton"]


def test_auto_newton_finish_is_the_energy_minimum():
    """Without ngspice: auto's Newton finish on the diode-coupled pair is a stationary point of
    the energy: |dE/ds| (autograd) within the stopping rule's rtol·D·V_scale = 1e-10 · 1 mS · 5 V."""
    cc = compile_circuit(diode_coupled_pair())
    res = settle(cc)
    assert res.converged and res.method == "auto:bcd+newton"
    s = res.s.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(cc, s, res.u).sum(), s)
    assert float(grad.abs().max()) <= 1e-10 * 1e-3 * 5.0


def test_auto_is_bcd_bit_for_bit_when_bcd_converges():
    """The training case (BCD converges in a few sweeps, free and nudged, float32 and float64,
    ideal clamps too): the default method gives exactly BCD's state and sweep count."""
    for sizes, kw, dtype in [("20,10,4", dict(g_init=(1e-7, 1e-5), amplifier_gain=4.0, clamp=(0.6, 1.0)), torch.float32),
                             ("20,10,4", dict(g_init=(1e-6, 1e-4)), torch.float64),
                             ("8,6,3", dict(diode=DiodeModel(ideal=True), clamp=(0.0, 0.05)), torch.float64)]:
        cc = compile_circuit(layered(sizes, seed=1, **kw), dtype=dtype)
        u = cc.inputs_to_sources(16 * torch.rand(6, int(sizes.split(",")[0]), dtype=dtype))
        y = torch.rand(6, len(cc.outputs), dtype=dtype)
        for kw in [{}, dict(beta=1e-5, target=y)]:
            bcd, auto = settle(cc, u, method="bcd", **kw), settle(cc, u, **kw)
            assert auto.method == "auto:bcd" and auto.stages == {"bcd": bcd.iterations}
            assert torch.equal(auto.s, bcd.s) and auto.iterations == bcd.iterations


def test_sparse_newton_matches_dense():
    """Newton's sparse LU (forced with dense_max=0) and its dense solve reach the same state
    (within 1e-12 V) on a circuit with diodes between free nodes and series resistances."""
    cc = compile_circuit(series_resistance_net())
    u = cc.source_values(3) * torch.tensor([[1.0], [0.5], [1.2]], dtype=torch.float64)
    dense = settle(cc, u, method="newton")
    sparse = settle(cc, u, method="newton", options={"dense_max": 0})
    torch.testing.assert_close(sparse.s, dense.s, rtol=0, atol=1e-12)


def test_newton_at_the_rounding_floor_stops_with_advice():
    """A tolerance float32 cannot reach: Newton stops as soon as it makes no progress (not
    after max_iters steps) and the error says what to do."""
    cc = compile_circuit(diode_coupled_pair(), dtype=torch.float32)
    with pytest.raises(ConvergenceError, match="loosen rtol or use float64") as err:
        settle(cc, method="newton", rtol=1e-12)
    assert err.value.result.iterations < 100


@pytest.mark.parametrize("volts, ohms, sweeps", [(10.0, 1e3, 2), (100.0, 10.0, 2), (10.0, 1e6, 3)])
def test_a_forward_biased_start_settles_in_few_sweeps(volts, ohms, sweeps):
    """A source driving a diode through a resistor: the linear first guess (the source's
    voltage) lies far into forward bias. The Newton restarts at the knee and climbs with SPICE's
    logarithmic junction limit, so BCD settles in 2-3 sweeps (the former restart 10 n V_T past
    the knee, with rises of 2 n V_T, needed 4 and 6 for the first and last case), to KCL within
    the settle's tolerance (rtol 1e-10 of the 0.1-100 mA)."""
    c = Circuit(("0", "vs", "a"), (Role.GROUND, Role.INPUT, Role.HIDDEN),
                (VoltageSources("v", [1], [volts]), Conductances("r", [1], [2], [1 / ohms]),
                 Diodes("d", [2], [0], 1e-14, 1.0, 0.0)))
    res = settle(compile_circuit(c), method="bcd", max_iters=sweeps)
    v = float(res.s[0, 0])
    current = (volts - v) / ohms
    assert res.converged and res.iterations <= sweeps
    assert abs(current - 1e-14 * np.expm1(v / THERMAL_VOLTAGE)) <= 1e-9 * current


def test_node_by_node_diode_layout_matches_the_indexed_newton():
    """A layered net's clamp diodes each have one free terminal, so BCD works on them node by
    node (Slots); the indexed Newton it replaces (forced by clearing the slots) reaches the
    same state within the settle's tolerance (rtol 1e-10 of 16 V: 1e-8 V)."""
    from analog_ep.emulator.operators import static_operators

    c = layered("30,20,5", seed=3, g_init=(1e-7, 1e-5), amplifier_gain=4.0, diode=DiodeModel(1e-14, 1.0),
                clamp=(0.6, 1.0))
    x = 16.0 * torch.rand(6, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    slotted, indexed = compile_circuit(c), compile_circuit(c)
    assert all(sl is not None for sl in static_operators(slotted).dio.slots)
    cleared = static_operators(indexed).dio.slots
    cleared[:] = [None] * len(cleared)
    a = settle(slotted, slotted.inputs_to_sources(x))
    b = settle(indexed, indexed.inputs_to_sources(x))
    assert a.converged and b.converged
    torch.testing.assert_close(a.s, b.s, rtol=0, atol=1e-8)


@pytest.mark.parametrize("n_cols", [3, 40])  # few source columns: a product; many: gathered
def test_fixed_diode_terminals_give_the_summed_voltages(n_cols):
    """The fixed part of each diode's voltage is Σ κ·ext_u[:, column] over its terminals on
    fixed nodes (a diode may have two), plus its offset, in both layouts: per diode and node
    by node (the slots' gather of it, or a view where the slots hold a range of diodes), to
    float64 rounding."""
    from analog_ep.emulator.operators import FixedTerminals

    g = torch.Generator().manual_seed(4)
    n_d, B = 50, 5
    d = torch.cat([torch.arange(n_d), torch.arange(0, n_d, 7)])  # every 7th diode: both terminals fixed
    idx = torch.randint(0, n_cols, (d.numel(),), generator=g)
    kap = torch.randn(d.numel(), generator=g, dtype=torch.float64)
    ext_u = torch.randn(B, n_cols, generator=g, dtype=torch.float64)
    offset = torch.randn(n_d, generator=g, dtype=torch.float64)
    expect = torch.zeros(B, n_d, dtype=torch.float64)
    for j in range(d.numel()):
        expect[:, d[j]] += kap[j] * ext_u[:, idx[j]]
    expect += offset

    class Layout:  # what FixedTerminals reads of a colour's Slots: its (k, n_c) diode table
        d = torch.randint(0, n_d, (2, 6), generator=g)

    class Range:  # a layer's clamps numbered in turn: its layout is a view of the diodes' voltages
        d = torch.arange(10, 22).view(2, 6)

    fixed = FixedTerminals(d, idx, kap, n_d).with_slots([None, Layout, Range])
    assert (fixed.P is not None) == (n_cols <= 32)
    v, laid = fixed.voltages(ext_u, [None, Layout, Range], offset)
    torch.testing.assert_close(v, expect, rtol=1e-14, atol=1e-14)
    assert laid[0] is None
    torch.testing.assert_close(laid[1], expect[:, Layout.d], rtol=1e-14, atol=1e-14)
    assert torch.equal(laid[2], v[:, Range.d]) and laid[2].data_ptr() == v[:, 10].data_ptr()


def test_layer_couplings_through_one_amplifier_pair_are_one_matrix():
    """A layer's positive and negative conductances reach the next layer through the + and −
    outputs of the same amplifiers, i.e. between the same free roots: the couplings keep one
    summed matrix per pair of layers, M s equals the sum over the blocks (float64 rounding), and
    a colour's residual given its inflow computed before (a BCD sweep's last colour) is the one
    computed afresh, bit for bit."""
    from analog_ep.emulator.operators import assemble, inflow, residual, static_operators

    c = layered("12,9,4", seed=1, g_init=(1e-6, 1e-4), amplifier_gain=4.0, diode=DiodeModel(1e-14, 1.0),
                clamp=(0.0, 1.0))
    cc = compile_circuit(c)
    M = static_operators(cc).M
    assert [tuple(W.shape) for _, _, W in M.dense] == [(9, 4)]
    x = torch.rand(3, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 16
    u = cc.inputs_to_sources(x)
    s = settle(cc, u).s
    ops = assemble(cc, u)
    gain = cc.gain_and_offset()[0]
    expect = torch.zeros_like(s)
    for name in ("g:w2p", "g:w2n"):  # the two blocks, one by one
        blk = next(b for b in cc.blocks if b.name == name)
        ra, rb = cc.root[blk.a], cc.root[blk.b]
        W = cc.params[name] * gain[blk.a][:, None] * gain[blk.b][None, :]
        expect[:, ra] += s[:, rb] @ W.T
        expect[:, rb] += s[:, ra] @ W
    torch.testing.assert_close(M @ s, expect, rtol=1e-13, atol=0)
    for colour, cols in enumerate(M.cols):
        known = (colour, inflow(ops, s, colour, cols))
        assert torch.equal(residual(cc, ops, s, u, known=known), residual(cc, ops, s, u))
        # a colour's rows of M s (through the thin block's contiguous transposed copy)
        torch.testing.assert_close(M.rows(colour, s, torch.zeros_like(s[:, cols])), expect[:, cols], rtol=1e-13,
                                   atol=1e-300)
    W = M.dense[0][2]
    assert [t.is_contiguous() for t in M._dense_t] == [True] and torch.equal(M._dense_t[0], W.T)
    with torch.no_grad():  # a training update: the operators are rebuilt, their layout (structure) is not
        cc.params["g:w2p"].mul_(2.0)
    M2 = static_operators(cc).M
    assert M2 is not M and M2.layout is M.layout
    blk = next(b for b in cc.blocks if b.name == "g:w2p")
    ra, rb = cc.root[blk.a], cc.root[blk.b]
    W = 0.5 * cc.params["g:w2p"] * gain[blk.a][:, None] * gain[blk.b][None, :]  # what the doubling added
    added = torch.zeros_like(s)
    added[:, ra] += s[:, rb] @ W.T
    added[:, rb] += s[:, ra] @ W
    torch.testing.assert_close(M2 @ s, expect + added, rtol=1e-13, atol=0)


def test_a_first_sweep_that_runs_out_of_newton_steps_is_not_checked(monkeypatch):
    """A settle's first sweep starts from the linear first guess; where its last colour's
    Newton ends before its steps are small, the residual is not evaluated after it (it would be
    above tolerance) and the next check decides: one check fewer, the same tolerance."""
    import analog_ep.emulator.solvers as solvers

    c = layered("12,9,4", seed=1, g_init=(1e-6, 1e-4), amplifier_gain=4.0, diode=DiodeModel(1e-14, 1.0),
                clamp=(0.0, 1.0))
    cc = compile_circuit(c)
    u = cc.inputs_to_sources(torch.rand(3, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 16)
    checks, ends = [], []
    residual, sweep = solvers.Problem.residual, solvers._bcd_sweep

    def counted(self, s, known=None, proven=False):
        checks.append(len(ends))
        return residual(self, s, known, proven)

    def recorded(*args, **kwargs):
        out = sweep(*args, **kwargs)
        ends.append(out[2])
        return out

    monkeypatch.setattr(solvers.Problem, "residual", counted)
    monkeypatch.setattr(solvers, "_bcd_sweep", recorded)
    res = settle(cc, u, method="bcd", options={"inner": 1})
    assert res.converged and res.iterations == len(ends) >= 3
    assert ends[0] is False and checks == list(range(2, len(ends) + 1))  # no check after sweep 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_colour_whose_last_newton_step_proves_its_residual_is_not_evaluated(monkeypatch, dtype):
    """A check after a sweep skips the last colour's residual where its last Newton step bounds
    it (``_step_flags``: at most 0.38 of the tolerance). Evaluated anyway, it is within 0.4 of
    the tolerance every time; the settle converges as before and its statistics, worked out
    when read, are the whole residual's."""
    import analog_ep.emulator.solvers as solvers
    from analog_ep.emulator.operators import assemble, residual as full_residual

    c = layered("12,9,4", seed=1, g_init=(1e-6, 1e-4), amplifier_gain=4.0, diode=DiodeModel(2.52e-9, 1.752),
                clamp=(0.0, 1.0))
    cc = compile_circuit(c, dtype=dtype)
    x = torch.rand(16, 12, generator=torch.Generator().manual_seed(3), dtype=dtype) * 16
    u = cc.inputs_to_sources(x)
    proofs, ratios = [], []
    residual = solvers.Problem.residual

    def checked(self, s, known=None, proven=False):
        proofs.append(proven)
        if proven:
            cols = self.ops.M.cols[known[0]]
            r = full_residual(self.cc, self.ops, s, self.u)[:, cols]
            ratios.append(float((r.abs() / self.tol[:, cols]).max()))
        return residual(self, s, known, proven)

    monkeypatch.setattr(solvers.Problem, "residual", checked)
    target = torch.rand(16, 4, generator=torch.Generator().manual_seed(4), dtype=dtype)
    free = settle(cc, u)
    nudged = settle(cc, u, beta=1e-4, target=target, s0=free.s)
    assert free.converged and nudged.converged
    assert any(proofs) and len(ratios) == sum(proofs) and max(ratios) <= 0.4, (proofs, ratios)
    rtol = 1e-5 if dtype == torch.float32 else 1e-10
    for res, ops in ((free, assemble(cc, u)), (nudged, assemble(cc, u, 1e-4, target))):
        assert res.rel_residual <= rtol
        assert res.residual == float(full_residual(cc, ops, res.s, u).abs().max())


def test_newton_steps_until_the_first_small_one_are_stepping_one_by_one(monkeypatch):
    """A small colour's fused Newton runs all its steps in one kernel call, keeping what the
    steps up to the first that may end (``_step_flags``) give: x and the flags are bit for bit
    those of stepping one by one and stopping there (run eagerly here: the same function the
    kernel compiles), and a fused settle makes one such call per sweep for the output layer."""
    import analog_ep.emulator.solvers as solvers
    from analog_ep.emulator.operators import assemble, inflow

    c = layered("12,9,4", seed=1, g_init=(1e-6, 1e-4), amplifier_gain=4.0, diode=DiodeModel(2.52e-9, 1.752),
                clamp=(0.0, 1.0))
    cc = compile_circuit(c, dtype=torch.float32)
    u = cc.inputs_to_sources(torch.rand(8, 12, generator=torch.Generator().manual_seed(5)) * 16)
    ops = assemble(cc, u)
    s = ops.f_fixed / ops.D  # the linear first guess: several steps to go
    tol = ops.D * 1e-5 * u.abs().amax(1, keepdim=True)
    steps, takens = solvers._slot_newton_steps.eager, []
    for c_, cols in enumerate(ops.M.cols):
        sl, w = ops.dio.slots[c_], ops.dio.fixed_slots[c_]
        f, Dc, x0 = inflow(ops, s, c_, cols), ops.D[:, cols], s[:, cols]
        x, flags = steps(sl, w, x0, Dc, f, tol[:, cols], 6, True, True)
        y = solvers._knee_start(sl, w, x0)
        for taken in range(1, 7):
            y, one = steps(sl, w, y, Dc, f, tol[:, cols], 1, False, False)
            if bool(one[0]):
                break
        assert torch.equal(x, y) and torch.equal(flags, one), (c_, taken)
        takens.append(taken)
    assert max(takens) >= 3 and min(takens) < 6, takens  # stopped early, after several steps
    calls = []
    kernel = solvers._slot_newton_steps

    def counted(*args, fused=False):
        calls.append((args[2].shape[1], args[6], args[8]))
        return kernel(*args, fused=fused)

    monkeypatch.setattr(solvers, "_slot_newton_steps", counted)
    res = settle(cc, u, fused=True)
    if kernel.broken is None:
        assert [k for k in calls if k[0] == 4] == [(4, 4, True)] * res.iterations  # output layer: one call a sweep


@pytest.mark.parametrize("bv", [math.inf, 0.8], ids=["no-breakdown", "breakdown-0.8V"])
@pytest.mark.parametrize("rtol", [1e-10, 1e-5])
def test_a_newton_step_that_proves_a_node_settled_bounds_its_residual(rtol, bv):
    """``_step_flags`` node by node, after one Newton step of each colour from an equilibrium
    whose colour was moved by 1e-7 to 0.3 V: every node the step proves (flag 1) has a KCL
    residual (the whole circuit's, given the other colours) of at most 0.38 of its tolerance,
    and every node the quadratic bound lets end (flag 0 where its step was not small) at most
    0.1 of it. Float64, residuals evaluated directly; the bounds' claims hold with no slack.
    Of the 832 node steps, the quadratic bound ends hundreds that were not small. The same
    holds with a breakdown voltage of 0.8 V, where the span also stops at each diode's
    breakdown voltage."""
    import analog_ep.emulator.solvers as solvers
    from analog_ep.emulator.operators import assemble, inflow, residual

    c = layered("12,9,4", seed=1, g_init=(1e-6, 1e-4), amplifier_gain=4.0, diode=DiodeModel(2.52e-9, 1.752, BV=bv),
                clamp=(0.0, 1.0))
    cc = compile_circuit(c)
    u = cc.inputs_to_sources(torch.rand(16, 12, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 16)
    ops, s = assemble(cc, u), settle(cc, u).s
    tol = ops.D * rtol * u.abs().amax(1, keepdim=True)
    g = torch.Generator().manual_seed(7)
    ended_by_bound = {}
    for scale in (1e-7, 1e-5, 1e-3, 0.3):
        for c_, cols in enumerate(ops.M.cols):
            sl, w = ops.dio.slots[c_], ops.dio.fixed_slots[c_]
            x0 = s[:, cols] + scale * torch.randn(s[:, cols].shape, generator=g, dtype=s.dtype)
            f, Dc = inflow(ops, s, c_, cols), ops.D[:, cols]
            x, step, hess, curv, span = solvers._slot_newton_step(sl, w, x0, Dc, f)
            moved = s.clone()
            moved[:, cols] = x
            ratio = (residual(cc, ops, moved, u)[:, cols].abs() / tol[:, cols])
            small = solvers._step_small(step, hess, tol[:, cols])
            for b in range(x.shape[0]):
                for j in range(x.shape[1]):
                    node = (slice(b, b + 1), slice(j, j + 1))
                    may_end, proven = solvers._step_flags(step[node], hess[node], curv[node], span[node],
                                                          tol[:, cols][node], x[node]).tolist()
                    if proven:
                        assert ratio[b, j] <= 0.38, (scale, c_, b, j, float(ratio[b, j]))
                    if may_end and not small[b, j]:
                        assert ratio[b, j] <= 0.1, (scale, c_, b, j, float(ratio[b, j]))
                        ended_by_bound[scale] = ended_by_bound.get(scale, 0) + 1
    assert sum(ended_by_bound.values()) >= 200, ended_by_bound


def test_a_warm_started_settle_ends_each_colours_newton_after_the_step_the_bound_proves(monkeypatch):
    """The nudged phase starts from the free state: after its first sweep (whose Newton
    restarts at the diodes' knees), each colour's Newton ends after one step, some of them not
    small (moving a node's current by more than a tenth of its tolerance), because the
    quadratic bound of ``_step_flags`` proves the residual after them within a tenth of the
    tolerance. Without that bound those steps would need a second, confirming step. The settle
    converges to its tolerance all the same (float32, rtol 1e-5, residual evaluated)."""
    import analog_ep.emulator.solvers as solvers
    from analog_ep.emulator.operators import assemble

    c = layered("12,9,4", seed=1, g_init=(1e-6, 1e-4), amplifier_gain=4.0, diode=DiodeModel(2.52e-9, 1.752),
                clamp=(0.0, 1.0))
    cc = compile_circuit(c, dtype=torch.float32)
    u = cc.inputs_to_sources(torch.rand(16, 12, generator=torch.Generator().manual_seed(3)) * 16)
    target = torch.rand(16, 4, generator=torch.Generator().manual_seed(4))
    free = settle(cc, u)
    steps, flags = solvers._slot_newton, solvers._step_flags
    taken, ends = [], []

    def newton(sl, w, x, Dc, f, inner, tol, restart, fused):
        ends.clear()
        out = steps(sl, w, x, Dc, f, inner, tol, restart, fused)
        taken.append((len(ends), ends[-1]))
        return out

    def recorded(step, hess, curv, span, tol, x):
        out = flags(step, hess, curv, span, tol, x)
        ends.append((bool(out[0]), bool(solvers._step_small(step, hess, tol).all())))
        return out

    monkeypatch.setattr(solvers, "_slot_newton", newton)
    monkeypatch.setattr(solvers, "_step_flags", recorded)
    nudged = settle(cc, u, beta=1e-4, target=target, s0=free.s)
    assert nudged.converged and nudged.rel_residual <= 1e-5
    later = taken[len(assemble(cc, u).M.cols):]  # after the first sweep
    assert later and all(n == 1 for n, _ in later), taken
    assert any(end and not small for _, (end, small) in later), taken  # the bound, not a small step, ended them


def test_node_voltages_read_a_layer_from_its_side_and_remember_where():
    """A layer's voltages are read from s (free roots) or u (sources) directly, the same values
    as from every node's voltages; where a slice or the outputs are read from is worked out once."""
    c = layered("12,9,4", seed=1, amplifier_gain=4.0, diode=DiodeModel(1e-14, 1.0), clamp=(0.0, 1.0))
    cc = compile_circuit(c)
    u = cc.inputs_to_sources(torch.rand(3, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 16)
    s = settle(cc, u).s
    V = cc.voltages(s, u)
    blocks = [b for b in cc.blocks if b.dense]
    sides = [b.a_cols for b in blocks] + [b.b_cols for b in blocks]
    assert any(isinstance(n, slice) for n in sides)
    for nodes in sides + [cc.outputs, torch.arange(cc.root.numel())]:  # the last: a mix (ground, sources, free)
        assert torch.equal(cc.node_voltages(s, u, nodes), V[:, nodes])
    plans = {k: v for k, v in cc.cache.items() if k[0] == "read"}
    assert ("read", "outputs") in plans and plans[("read", "outputs")][0] == "free"
    assert {v[0] for v in plans.values()} == {"free", "source"}


@settings(max_examples=30, deadline=None)
@given(st.one_of(random_graph_circuit(), random_layered_circuit()))
def test_colouring_is_proper_and_two_colours_for_bipartite_couplings(circuit):
    """The colours partition the free nodes, no element joins two free nodes of one colour (BCD
    sets each colour's nodes independently), and a bipartite coupling graph — every layered
    net — gets exactly two colours (the vectorised test), others networkx's greedy colouring."""
    cc = compile_circuit(circuit)
    colour = np.full(cc.n_free, -1)
    for c, nodes in enumerate(cc.colours):
        assert bool((colour[nodes.numpy()] == -1).all())
        colour[nodes.numpy()] = c
    assert bool((colour >= 0).all())
    root, nf = cc.root.numpy(), cc.n_free
    graph = nx.Graph()
    graph.add_nodes_from(range(nf))
    ends = [(b.a, b.b, b.dense) for b in cc.blocks] + [(d.anode, d.cathode, False) for d in cc.diodes]
    for a, b, dense in ends:
        ra, rb = root[a.numpy()], root[b.numpy()]
        ra, rb = np.broadcast_arrays(ra[:, None], rb[None, :]) if dense else (ra, rb)
        both = (ra < nf) & (rb < nf) & (ra != rb)
        assert bool((colour[ra[both]] != colour[rb[both]]).all())
        graph.add_edges_from(zip(ra[both].tolist(), rb[both].tolist()))
    if nx.is_bipartite(graph) and graph.number_of_edges():
        assert len(cc.colours) == 2

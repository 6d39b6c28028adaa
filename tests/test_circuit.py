import math

import networkx as nx
import numpy as np
import pytest

from analog_ep.circuit import (Amplifiers, Circuit, CircuitError, Conductances, DiodeModel, Role, VoltageSources,
                               from_graph, layered, parse_layers)


def tiny(**kw) -> Circuit:
    nodes = ("0", "x", "h")
    roles = (Role.GROUND, Role.INPUT, Role.HIDDEN)
    elements = (VoltageSources("v", [1], [1.0]), Conductances("w", [1], [2], [1e-3]))
    return Circuit(nodes, roles, kw.get("elements", elements))


def test_valid_circuit_and_free_nodes():
    c = tiny()
    assert c.free_nodes() == [2]
    assert c.fixed_voltages() == {1: 1.0}


@pytest.mark.parametrize("elements, message", [
    ((Conductances("w", [1], [1], [1e-3]),), "self-loop"),
    ((VoltageSources("v", [1, 1], [1.0, 2.0]),), "more than one voltage source"),
    ((VoltageSources("v", [0], [1.0]),), "ground"),
    ((Conductances("w", [1], [5], [1e-3]),), "out of range"),
    ((Amplifiers("a", [1, 2], [2, 1], [2.0, 2.0]),), "amplifier loop"),
])
def test_invalid_circuits_are_refused(elements, message):
    with pytest.raises(CircuitError, match=message):
        tiny(elements=elements)


@pytest.mark.parametrize("g", [[-1e-3], [float("nan")], [float("inf")]])
def test_bad_conductances(g):
    with pytest.raises(CircuitError, match="finite and >= 0"):
        Conductances("w", [1], [2], g)


def test_arrays_are_immutable_and_copies_update():
    c = tiny()
    w = c.group(Conductances, "w")
    with pytest.raises(ValueError):
        w.g[0] = 5.0
    c2 = c.with_conductances({"w": [2e-3]})
    assert c2.group(Conductances, "w").g[0] == 2e-3 and w.g[0] == 1e-3
    with pytest.raises(CircuitError, match="shape"):
        c.with_conductances({"w": [1.0, 2.0]})


def test_layered_structure():
    c = layered("4,3,2", seed=0, amplifier_gain=2.0)
    assert len(c.nodes_with_role(Role.INPUT)) == 8  # +x and -x pairs
    assert len(c.nodes_with_role(Role.OUTPUT)) == 2
    assert len(c.free_nodes()) == 5
    w1p = c.group(Conductances, "w1p")
    assert w1p.dense and w1p.g.shape == (4, 3)
    amps = c.group(Amplifiers, "a1")
    assert sorted(amps.gain.tolist()) == [-2.0] * 3 + [2.0] * 3
    x = np.array([c.fixed_voltages()[c.index(f"x{i}p")] for i in range(4)])
    xn = np.array([c.fixed_voltages()[c.index(f"x{i}n")] for i in range(4)])
    assert np.array_equal(xn, -x)
    # same seed, same circuit; other seed, other conductances
    assert np.array_equal(layered("4,3,2", seed=0, amplifier_gain=2.0).group(Conductances, "w1p").g, w1p.g)
    assert not np.array_equal(layered("4,3,2", seed=1).group(Conductances, "w1p").g, w1p.g)


@pytest.mark.parametrize("spec", ["784", "4,0,2", "4,x", ""])
def test_bad_layer_specs(spec):
    with pytest.raises(ValueError, match="layer spec"):
        parse_layers(spec)


def test_nudged_adds_targets_and_beta():
    c = layered("3,2", seed=0).nudged([0.1, 0.9], beta=1e-5)
    assert len(c.nodes_with_role(Role.TARGET)) == 2
    assert c.meta["phase"] == "nudged"
    with pytest.raises(CircuitError, match="targets"):
        layered("3,2").nudged([0.1], 1e-5)
    with pytest.raises(CircuitError, match="already nudged"):
        c.nudged([0.1, 0.9], 1e-5)


def graph():
    g = nx.Graph()
    g.add_node("x", role="input", v=0.5)
    g.add_node("b", role="bias", v=1.0)
    g.add_node("h", role="hidden")
    g.add_node("o", role="output")
    g.add_edge("x", "h", weight=1e-4)
    g.add_edge("x", "o", weight=-2e-5)
    g.add_edge("h", "o", weight=-5e-5)
    g.add_edge("b", "h", weight=1e-5)
    return g


@pytest.mark.parametrize("name", ["gnd", "GND", "Gnd", "0", 0])
def test_from_graph_refuses_ground_names(name):
    """SPICE shorts '0' and 'gnd' (any case) to ground: a graph node so named is an error, not a short."""
    g = graph()
    g.add_node(name, role="hidden")
    g.add_edge("x", name, weight=1e-4)
    with pytest.raises(CircuitError, match=f"node name '{name}' is reserved"):
        from_graph(g)


def test_circuit_refuses_ground_names_beyond_node_0():
    with pytest.raises(CircuitError, match="reserved"):
        Circuit(("0", "x", "GND"), (Role.GROUND, Role.INPUT, Role.HIDDEN),
                (VoltageSources("v", [1], [1.0]), Conductances("w", [1], [2], [1e-3])))


def test_from_graph_signed_weights():
    c = from_graph(graph(), diode=DiodeModel())
    # negative x-o weight: a negated source; negative h-o weight: an inverting amplifier
    assert "x_neg" in c.nodes and c.fixed_voltages()[c.index("x_neg")] == -0.5
    amps = c.group(Amplifiers, "inv")
    assert amps.gain.tolist() == [-1.0]
    assert c.nodes[amps.out[0]].endswith("_inv")
    assert c.roles[c.index("o")] is Role.OUTPUT


def test_from_graph_accepts_symmetric_digraph():
    assert from_graph(graph().to_directed()).summary() == from_graph(graph()).summary()


@pytest.mark.parametrize("mutate, message", [
    (lambda g: g.add_edge("h", "h", weight=1.0), "self-loop"),
    (lambda g: g.add_edge("h", "b", weight=math.nan), "non-finite"),
    (lambda g: g.add_node("z"), "role"),
    (lambda g: g.add_edge("h", "q", weight=1.0), "role"),
    (lambda g: g.add_edge("o", "b"), "no 'weight'"),
    (lambda g: g.add_node("0", role="hidden"), "ground"),
    (lambda g: g.add_edge("x", "b", weight=1.0), "two fixed nodes"),
])
def test_from_graph_errors(mutate, message):
    g = graph()
    mutate(g)
    with pytest.raises(CircuitError, match=message):
        from_graph(g)


def test_from_graph_refuses_asymmetric_digraph():
    g = graph().to_directed()
    g["h"]["o"]["weight"] = 3e-5
    with pytest.raises(CircuitError, match="asymmetric"):
        from_graph(g)
    g = graph().to_directed()
    g.remove_edge("o", "h")
    with pytest.raises(CircuitError, match="asymmetric"):
        from_graph(g)


def test_diode_model_parse():
    assert DiodeModel.parse("ideal").ideal
    assert DiodeModel.parse("10f,1.5").IS == pytest.approx(1e-14, rel=1e-15)
    assert DiodeModel.parse("1e-14,1,10") == DiodeModel(1e-14, 1.0, 10.0)
    assert DiodeModel.parse("1e-14,1,0,5.6") == DiodeModel(1e-14, 1.0, 0.0, BV=5.6)
    assert DiodeModel.parse("2.52n,1.752,.568,100,100u") == DiodeModel(2.52e-9, 1.752, 0.568, BV=100.0, IBV=1e-4)
    with pytest.raises(ValueError):
        DiodeModel.parse("1e-14")


@pytest.mark.parametrize("kw, message", [
    (dict(BV=0.0), "BV > 0"), (dict(IBV=float("inf")), "finite IBV"), (dict(IBV=-1e-3), "IBV > 0"),
    (dict(non_dc=[(("CJO", 1e-12),)]), "1 non-DC parameter sets for 2 diodes"),
])
def test_bad_breakdown_and_card_parameters(kw, message):
    from analog_ep.circuit import Diodes
    with pytest.raises(CircuitError, match=message):
        Diodes("d", [1, 2], [0, 0], 1e-14, 1.0, 0.0, **kw)

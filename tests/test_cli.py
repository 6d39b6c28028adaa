import pytest
from typer.testing import CliRunner

from analog_ep.cli import app
from analog_ep.spice import read_deck

runner = CliRunner()


def test_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("export", "spice", "check"):
        assert cmd in res.stdout


@pytest.mark.parametrize("args, message", [
    (["export", "-o", "x.cir"], "exactly one of --layers, --graph or --checkpoint"),
    (["export", "--layers", "4,x", "-o", "x.cir"], "layer spec"),
    (["export", "--layers", "4,2", "--phase", "nudged", "-o", "x.cir"], "--target"),
    (["export", "--layers", "4,2", "--phase", "nudged", "--target", "1", "-o", "x.cir"], "1 targets for 2"),
    (["export", "--layers", "4,2", "--diode", "1e-14", "-o", "x.cir"], "diode spec"),
    (["export", "--graph", "missing.graphml", "-o", "x.cir"], "no such graph"),
    (["spice", "missing.cir"], "cannot read deck"),
    (["check", "missing.cir"], "cannot read deck"),
])
def test_bad_input_is_one_line_and_nonzero(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr


def test_export_graphml_with_phase_and_check(tmp_path):
    import networkx as nx
    from .test_circuit import graph
    path = tmp_path / "g.graphml"
    nx.write_graphml(graph(), path)
    deck = tmp_path / "g.cir"
    res = runner.invoke(app, ["export", "--graph", str(path), "--diode", "1e-14,1", "--phase", "nudged",
                              "--target", "0.5", "--beta", "1e-5", "-o", str(deck)])
    assert res.exit_code == 0, res.output
    c = read_deck(deck)
    assert c.meta["phase"] == "nudged"
    res = runner.invoke(app, ["check", str(deck)])
    assert res.exit_code == 0 and "ok" in res.stdout


def test_export_pyspice_path(tmp_path):
    deck = tmp_path / "p.cir"
    assert runner.invoke(app, ["export", "--layers", "3,2", "--pyspice", "-o", str(deck)]).exit_code == 0
    assert len(read_deck(deck).free_nodes()) == 2

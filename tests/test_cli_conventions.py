"""Command-line conventions: --version, '-o -' for standard output, commands grouped by use,
--json on the last line, --torch-device (and its deprecated alias --device)."""
import json
import sys
import tomllib

import pytest
import torch
import typer
from typer.testing import CliRunner

import analog_ep
from analog_ep.cli import app
from analog_ep.spice import parse_deck

from .conftest import ROOT, tiny_toml

runner = CliRunner()

PANELS = {"export": "Netlists", "check": "Netlists", "spice": "SPICE vs emulator", "compare": "SPICE vs emulator",
          "train": "Training", "evaluate": "Training", "pack": "Training", "sweep": "Studies", "gdu": "Studies",
          "power": "Studies"}


def test_version_is_the_package_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert res.stdout.strip() == f"analog-ep {version}" == f"analog-ep {analog_ep.__version__}"


def test_export_to_stdout_is_the_file_deck(tmp_path):
    args = ["export", "--layers", "4,3,2", "--amplifier-gain", "2"]
    res = runner.invoke(app, [*args, "-o", "-"])
    assert res.exit_code == 0, res.output
    deck = tmp_path / "d.cir"
    assert runner.invoke(app, [*args, "-o", str(deck)]).exit_code == 0
    assert res.stdout == deck.read_text()
    assert "stdout" in res.stderr
    assert len(parse_deck(res.stdout).free_nodes()) == 5


def test_export_pyspice_to_stdout_parses():
    pytest.importorskip("PySpice")
    res = runner.invoke(app, ["export", "--layers", "3,2", "--pyspice", "-o", "-"])
    assert res.exit_code == 0, res.output
    assert len(parse_deck(res.stdout).free_nodes()) == 2


def test_export_pyspice_without_pyspice_says_so_in_one_line(monkeypatch):
    """Where PySpice is missing (the GPU image has none), --pyspice fails with the install hint and
    exit status 2, not a traceback; the plain-text export still works."""
    monkeypatch.setitem(sys.modules, "PySpice", None)  # makes `import PySpice...` raise ImportError
    monkeypatch.setitem(sys.modules, "PySpice.Spice", None)
    monkeypatch.setitem(sys.modules, "PySpice.Spice.Netlist", None)
    res = runner.invoke(app, ["export", "--layers", "3,2", "--pyspice", "-o", "-"])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    assert "PySpice is not installed: pip install PySpice" in res.stderr
    assert "Traceback" not in res.output
    assert runner.invoke(app, ["export", "--layers", "3,2", "-o", "-"]).exit_code == 0


def test_help_groups_every_command_by_use():
    group = typer.main.get_command(app)
    assert {name: cmd.rich_help_panel for name, cmd in group.commands.items()} == PANELS
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert all(panel in res.stdout for panel in set(PANELS.values()))


def test_check_and_export_json(tmp_path):
    deck = tmp_path / "d.cir"
    res = runner.invoke(app, ["export", "--layers", "4,3,2", "--amplifier-gain", "2", "-o", str(deck), "--json"])
    assert res.exit_code == 0, res.output
    made = json.loads(res.stdout.strip().splitlines()[-1])
    assert made["output"] == str(deck) and made["phase"] == "free" and made["free_nodes"] == 5
    res = runner.invoke(app, ["check", str(deck), "--json"])
    assert res.exit_code == 0, res.output
    checked = json.loads(res.stdout.strip().splitlines()[-1])
    assert checked["ok"] and checked["deck"] == str(deck)
    circuit = parse_deck(deck.read_text())
    assert checked["elements"] == circuit.element_counts() == made["elements"]
    assert (checked["nodes"], checked["free_nodes"]) == (len(circuit.nodes), 5)
    res = runner.invoke(app, ["export", "--layers", "3,2", "-o", "-", "--json"])  # the deck, then the JSON line
    *deck_lines, last = res.stdout.strip().splitlines()
    assert json.loads(last)["output"] == "-" and parse_deck("\n".join(deck_lines) + "\n").free_nodes()


def test_train_json_and_torch_device(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_toml())
    res = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--epochs", "1",
                              "--torch-device", "cpu", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["epoch"] == 1 and len(out["history"]) == 1 and 0 <= out["test_error"] <= 1 and out["n"] == 300
    assert out["checkpoint"] == str(tmp_path / "run" / "checkpoint.pt") and out["tensorboard"] is None
    assert out["best"] == dict(checkpoint=str(tmp_path / "run" / "checkpoint_best.pt"), epoch=1,
                               val_error=out["history"][0]["val_error"])
    assert "warning" not in res.stderr


@pytest.mark.parametrize("command, args", [
    ("train", ["--config", "none.toml"]), ("evaluate", ["--checkpoint", "none"]),
    ("sweep", ["--checkpoint", "none", "--vary", "levels=2"]), ("power", ["--checkpoint", "none"]),
])
def test_device_is_a_deprecated_alias_of_torch_device(command, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    group = typer.main.get_command(app)
    assert {"--torch-device", "--device"} <= {o for p in group.commands[command].params for o in p.opts}
    new = runner.invoke(app, [command, *args, "--torch-device", "cpu"])
    assert new.exit_code == 2 and len(new.stderr.splitlines()) == 1  # on to the missing file
    old = runner.invoke(app, [command, *args, "--device", "cpu"])
    assert old.exit_code == 2 and old.stderr.splitlines() == [
        "warning: --device is deprecated; use --torch-device", new.stderr.strip()]
    bad = runner.invoke(app, [command, *args, "--device", "abacus"])
    assert bad.exit_code == 2 and bad.stderr.splitlines()[1] == (
        "error: --device: 'abacus' is not a torch device (cpu, cuda, cuda:N)")
    both = runner.invoke(app, [command, *args, "--torch-device", "cpu", "--device", "cpu"])
    assert both.exit_code == 2 and both.stderr.strip() == (
        "error: give --torch-device only (--device is its deprecated alias)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_one_line():
    res = runner.invoke(app, ["evaluate", "--checkpoint", "none", "--torch-device", "cuda"])
    assert res.exit_code == 2 and res.stderr.strip().startswith("error: --torch-device cuda: CUDA is not available")

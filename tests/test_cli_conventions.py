"""Command-line conventions: --version, '-o -' for standard output, commands grouped by use."""
import tomllib

import typer
from typer.testing import CliRunner

import analog_ep
from analog_ep.cli import app
from analog_ep.spice import parse_deck

from .conftest import ROOT

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
    res = runner.invoke(app, ["export", "--layers", "3,2", "--pyspice", "-o", "-"])
    assert res.exit_code == 0, res.output
    assert len(parse_deck(res.stdout).free_nodes()) == 2


def test_help_groups_every_command_by_use():
    group = typer.main.get_command(app)
    assert {name: cmd.rich_help_panel for name, cmd in group.commands.items()} == PANELS
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert all(panel in res.stdout for panel in set(PANELS.values()))

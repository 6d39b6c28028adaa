"""Progress on long commands: tqdm bars on a terminal, nothing in a log or a pipe; and the
hooks that drive them leave the results as they were."""
import io
import sys

import pytest
from typer.testing import CliRunner

from analog_ep.circuit import layered
from analog_ep.cli import app
from analog_ep.data import load_dataset
from analog_ep.devices import DeviceModel
from analog_ep.spice.ngspice import run_op_many
from analog_ep.studies.evaluate import evaluate_checkpoint
from analog_ep.studies.gdu import run as gdu_run
from analog_ep.studies.sweep import deployed_errors, run_sweep
from analog_ep.train import Trainer, load_checkpoint
from analog_ep.train.progress import progress_bar

from .test_train import tiny_config

DIGITS = load_dataset("digits")


class Terminal(io.StringIO):
    """A standard error that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(params=[True, False], ids=["terminal", "log"])
def stderr(request, monkeypatch):
    """A fresh standard error, a terminal or a log, made the process's by ``start()`` (pytest's
    own capture puts its stream back between a fixture's setup and the test)."""
    stream = Terminal() if request.param else io.StringIO()
    stream.start = lambda: monkeypatch.setattr(sys, "stderr", stream)
    return stream


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Trainer(tiny_config(epochs=1), data=DIGITS, out=out).fit(progress=False)
    return out


def test_progress_bar_draws_on_a_terminal_only(stderr):
    stderr.start()
    assert list(progress_bar(range(3), "counting")) == [0, 1, 2]
    with progress_bar(None, "by hand", total=4) as bar:
        bar.update(4)
    assert ("counting" in stderr.getvalue() and "by hand" in stderr.getvalue()) == stderr.isatty()
    assert stderr.isatty() or stderr.getvalue() == ""
    list(progress_bar(range(3), "hidden", show=False))
    assert "hidden" not in stderr.getvalue()


def test_evaluate_progress(checkpoint, stderr):
    stderr.start()
    with_bar = evaluate_checkpoint(checkpoint, progress=True)
    assert ("digits test images" in stderr.getvalue()) == stderr.isatty()
    assert with_bar["test_error"] == evaluate_checkpoint(checkpoint)["test_error"]


def test_evaluate_command_in_a_log_has_no_bar(checkpoint):
    res = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(checkpoint)])
    assert res.exit_code == 0 and res.stderr == "", res.output


@pytest.mark.spice
def test_evaluate_spice_progress(checkpoint, stderr):
    stderr.start()
    result = evaluate_checkpoint(checkpoint, spice=3, progress=True)
    assert result["spice_n"] == 3 and ("ngspice" in stderr.getvalue()) == stderr.isatty()


@pytest.mark.spice
def test_run_op_many_reports_each_operating_point():
    circuits = [layered("3,2", seed=s) for s in range(3)]
    seen = []
    ops = run_op_many(circuits, jobs=2, on_done=seen.append)
    assert sorted(map(id, seen)) == sorted(map(id, ops)) and len(ops) == 3
    assert [op.node_voltages for op in ops] == [op.node_voltages for op in run_op_many(circuits, jobs=2)]


def test_sweep_progress(checkpoint, stderr):
    stderr.start()
    rows = run_sweep(checkpoint, {"write_noise": [0.02]}, realisations=2, loop_epochs=0, test_subset=60, progress=True)
    assert [r.mode for r in rows] == ["deploy-only"] and len(rows[0].errors) == 2
    assert ("deploy-only 2/2" in stderr.getvalue()) == stderr.isatty()


def test_deployed_realisations_each_program_the_trained_conductances(checkpoint):
    """Realisation r is the trained conductances programmed with seed + r, whatever came before
    it (programming writes the parameters; the next realisation must not program those)."""
    tr = load_checkpoint(checkpoint, data=DIGITS)
    noisy = DeviceModel.build("ideal", write_noise=0.05)
    x, y = DIGITS.x_test[:100], DIGITS.y_test[:100]
    trained = {k: p.detach().clone() for k, p in tr.params.items()}
    both = deployed_errors(tr, noisy, x, y, 2, seed=3)
    assert both == deployed_errors(tr, noisy, x, y, 1, seed=3) + deployed_errors(tr, noisy, x, y, 1, seed=4)
    assert all(bool((tr.params[k] == v).all()) for k, v in trained.items()) and tr.model.devices is None


def test_gdu_progress(stderr):
    stderr.start()
    result, _ = gdu_run("toy", batch=2, T=60, K=5, beta=0.02, progress=True)
    assert ("GDU toy" in stderr.getvalue()) == stderr.isatty()
    assert result["rel_mse"] == gdu_run("toy", batch=2, T=60, K=5, beta=0.02)[0]["rel_mse"]

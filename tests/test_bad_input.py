"""Every command on bad input: exit status 2, exactly one line on stderr starting with
``error:``, no traceback, and no output file left behind (table-driven); a run directory used
by two training runs at once; atomic writes."""
import copy
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from analog_ep.cli import app
from analog_ep.data import load_dataset
from analog_ep.data.datasets import DataError
from analog_ep.emulator.settle import ConvergenceError
from analog_ep.spice import read_deck
from analog_ep.spice.ngspice import SpiceError
from analog_ep.train import Trainer, TrainingError, load_checkpoint
from analog_ep.train.files import LOCK, RunDirectoryBusy, atomic_write, run_lock

from .conftest import NETLISTS, ROOT, tiny_toml
from .test_train import tiny_config

runner = CliRunner()
DIGITS = load_dataset("digits")
DECK = str(NETLISTS[0])


def _config(**replace: str) -> str:
    """The tiny digits config with some lines replaced ({old line: new line})."""
    text = tiny_toml()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


CONFIGS = {
    "lr_text": _config(**{"lr = [2e-6]": 'lr = "f"'}),
    "lr_negative": _config(**{"lr = [2e-6]": "lr = -2e-7"}),
    "epochs_text": _config(**{"epochs = 2": 'epochs = "two"'}),
    "epochs_fraction": _config(**{"epochs = 2": "epochs = 1.5"}),
    "batch_fraction": _config(**{"batch_size = 32": "batch_size = 1.5"}),
    "max_iters_zero": _config(**{"lr = [2e-6]": "lr = [2e-6]\nmax_iters = 0"}),
    "not_for_circuits": _config(**{"[train]": "[model]\neps = 0.2\n[train]"}),
    "not_toml": "epochs = = 2\n",
    "ok": tiny_toml(),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs of the probes: a tiny (untrained) checkpoint and broken copies of it, and configs."""
    d = tmp_path_factory.mktemp("inputs")
    ckpt = Trainer(tiny_config(epochs=0), data=DIGITS, out=d / "run").save()
    state = torch.load(ckpt, weights_only=True)

    def variant(name, change):
        s = copy.deepcopy(state)
        change(s)
        torch.save(s, d / name)

    variant("nan.pt", lambda s: s["params"]["g:w1p"].fill_(float("nan")))
    variant("shape.pt", lambda s: s["params"].__setitem__("g:w1p", s["params"]["g:w1p"][:, :16].clone()))
    variant("missing.pt", lambda s: s["params"].pop("g:b2n"))
    variant("layers.pt", lambda s: s["config"]["circuit"].__setitem__("layers", "64,16,10"))
    variant("no_params.pt", lambda s: s.pop("params"))
    variant("config_type.pt", lambda s: s["config"]["train"].__setitem__("lr", "f"))
    torch.save([1, 2, 3], d / "list.pt")
    (d / "empty.pt").write_bytes(b"")
    (d / "truncated.pt").write_bytes(ckpt.read_bytes()[:2000])
    for name, text in CONFIGS.items():
        (d / f"{name}.toml").write_text(text)
    return d


# (probe, expected text of the error line); {d} is the inputs directory, {run} its checkpoint
PROBES = [
    # checkpoints that are not, or do not fit their config
    (["evaluate", "--checkpoint", "{root}/README.md"], "README.md is not a readable checkpoint (UnpicklingError"),
    (["evaluate", "--checkpoint", "{d}/empty.pt"], "empty.pt is empty, not a checkpoint"),
    (["evaluate", "--checkpoint", "{d}/truncated.pt"], "truncated.pt is not a readable checkpoint (RuntimeError: "
                                                       "PytorchStreamReader failed reading zip archive"),
    (["evaluate", "--checkpoint", "{d}/list.pt"], "list.pt is not a checkpoint: it holds a list"),
    (["evaluate", "--checkpoint", "{d}/no_params.pt"], "no_params.pt is not a checkpoint: no params"),
    (["evaluate", "--checkpoint", "{d}/nan.pt"], "nan.pt: parameter g:w1p has non-finite values (NaN or inf)"),
    (["evaluate", "--checkpoint", "{d}/shape.pt"], "shape.pt: parameter g:w1p has shape (64, 16); the model's is (64, 32)"),
    (["evaluate", "--checkpoint", "{d}/layers.pt"], "layers.pt: parameter g:w1p has shape (64, 32); the model's is (64, 16)"),
    (["evaluate", "--checkpoint", "{d}/missing.pt"], "missing.pt: the parameters do not fit the model: missing g:b2n"),
    (["evaluate", "--checkpoint", "{d}/config_type.pt"], "config_type.pt: [train] lr: expected a list of finite numbers"),
    (["evaluate", "--checkpoint", "{d}/nowhere"], "no checkpoint at"),
    (["export", "--checkpoint", "{d}/truncated.pt", "-o", "x.cir"], "truncated.pt is not a readable checkpoint"),
    (["pack", "--checkpoint", "{d}/empty.pt", "-o", "p.pt"], "empty.pt is empty, not a checkpoint"),
    (["sweep", "--checkpoint", "{d}/nan.pt", "--vary", "read_noise=0,0.1", "--out", "sw"], "non-finite values"),
    # settings
    (["evaluate", "--checkpoint", "{run}", "--device-model", "ideal", "--device-set", "read_noise=nan"],
     "device model: read_noise must be finite"),
    (["evaluate", "--checkpoint", "{run}", "--device-set", "read_noise=inf"], "read_noise must be finite"),
    (["evaluate", "--checkpoint", "{run}", "--device-set", "levels=1.5"], "[device] levels: expected an integer, got 1.5"),
    (["evaluate", "--checkpoint", "{run}", "--spice", "-1"], "spice: expected a number of test images >= 0, got -1"),
    (["evaluate", "--checkpoint", "{run}", "--realisations", "0"], "realisations: expected an integer >= 1, got 0"),
    (["export", "--checkpoint", "{run}", "--inputs", "1,2", "-o", "x.cir"], "the circuit has 64 inputs; got 2 values"),
    (["export", "--layers", "100000000000,3,2", "-o", "x.cir"], "building the circuit needs about 89,600.0 GB"),
    (["spice", DECK, "--timeout", "-1"], "--timeout: expected a number of seconds > 0, got -1"),
    (["spice", DECK, "--timeout", "nan"], "--timeout: expected a number of seconds > 0, got nan"),
    (["compare", DECK, "--timeout", "0"], "--timeout: expected a number of seconds > 0, got 0"),
    (["compare", DECK, "--batch-inputs", "nowhere.csv"], "no such file: nowhere.csv"),
    (["check", "{root}/README.md"], "README.md:"),
    (["sweep", "--checkpoint", "{run}", "--vary", "read_noise=x", "--out", "sw"], "levels must be numbers"),
    (["gdu", "--model", "nope"], "unknown GDU model 'nope'"),
    (["gdu", "--batch", "0"], "batch must be >= 1, not 0"),
    # training configs (each a one-line error naming the key)
    (["train", "--config", "{d}/lr_text.toml"], "[train] lr: expected a list of finite numbers (or one finite number), got 'f'"),
    (["train", "--config", "{d}/lr_negative.toml"], "[train] lr: expected values > 0, got [-2e-07]"),
    (["train", "--config", "{d}/epochs_text.toml"], "[train] epochs: expected an integer, got 'two'"),
    (["train", "--config", "{d}/epochs_fraction.toml"], "[train] epochs: expected an integer, got 1.5"),
    (["train", "--config", "{d}/batch_fraction.toml"], "[data] batch_size: expected an integer, got 1.5"),
    (["train", "--config", "{d}/max_iters_zero.toml"], "[train] max_iters: expected an integer >= 1, got 0"),
    (["train", "--config", "{d}/not_for_circuits.toml"], "[model] eps does not apply to model kind 'circuit'"),
    (["train", "--config", "{d}/not_toml.toml"], "not_toml.toml: invalid TOML"),
    (["train", "--config", "{d}/nowhere.toml"], "no such config"),
    (["train", "--config", "{d}/ok.toml", "--epochs", "-1"], "[train] epochs: expected an integer >= 0, got -1"),
    (["train", "--config", "{d}/ok.toml", "--device-set", "read_noise=nan"], "read_noise must be finite"),
    (["train", "--config", "{d}/ok.toml", "--resume"], "no checkpoint at runs/tiny/checkpoint.pt to --resume"),
    # usage errors
    (["evaluate"], "evaluate: Missing option '--checkpoint'"),
    (["evaluate", "--checkpoint", "{run}", "--spice", "abc"], "Invalid value for '--spice'"),
    (["train", "--config", "{d}/ok.toml", "--epochs", "two"], "Invalid value for '--epochs'"),
    (["frobnicate"], "No such command 'frobnicate'"),
]


def _files(path):
    return sorted(p.relative_to(path) for p in path.rglob("*"))


@pytest.mark.parametrize("args, message", PROBES, ids=lambda v: " ".join(v)[-50:] if isinstance(v, list) else None)
def test_bad_input_is_one_error_line_exit_2_and_no_output(args, message, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.format(d=files, run=files / "run", root=ROOT) for a in args]
    inputs = _files(files)
    res = runner.invoke(app, args)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert "Traceback" not in res.output
    assert _files(tmp_path) == [] and _files(files) == inputs  # nothing written, half or whole


@pytest.mark.parametrize("error", [
    ConvergenceError("settle: 200 sweeps\nmore", None), DataError("MNIST not found"), SpiceError("ngspice timed out"),
    TrainingError("loss diverged"),
    TypeError("unsupported operand"), pickle.UnpicklingError("invalid load key"), IndexError("list index out of range"),
    EOFError(), KeyError("params"), ValueError("two\nlines"), FileNotFoundError("no such file: x"),
], ids=lambda e: type(e).__name__)
def test_library_errors_reaching_the_cli_are_one_line(error, files, monkeypatch):
    import analog_ep.studies.evaluate as evaluate

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", fail)
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(files / "run")])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    expect = {EOFError: "EOFError", KeyError: "missing key 'params'"}.get(type(error)) or str(error).splitlines()[0]
    assert lines[0] == f"error: {expect}"


def test_an_empty_checkpoint_in_a_real_process(files, tmp_path):
    """Through ``python -m analog_ep`` (the entry point, not the test runner): one line, no
    'Aborted.' (click's answer to an EOFError)."""
    res = subprocess.run([sys.executable, "-m", "analog_ep", "evaluate", "--checkpoint", str(files / "empty.pt")],
                         capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 2 and res.stderr.strip() == f"error: {files / 'empty.pt'} is empty, not a checkpoint"


def test_evaluate_caps_spice_at_the_test_set_with_a_note(files, monkeypatch):
    import analog_ep.studies.evaluate as evaluate
    from analog_ep.studies.verify import SpiceCheck

    checked = []
    monkeypatch.setattr(evaluate, "spice_check", lambda circuit, x, labels, **kw: checked.append(len(x)) or
                        SpiceCheck(len(x), len(x), 0.0, 0.0, 0))
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(files / "run"), "--spice", "100000"])
    assert res.exit_code == 0, res.output
    assert checked == [300] and "on 300/300 digits" in res.stdout
    assert res.stderr.strip() == ("note: asked for 100000 SPICE checks; the digits test set has 300 images: "
                                  "checking all 300")


def test_two_training_runs_on_one_directory(tmp_path):
    """Two `analog-ep train` processes on one --out: the second is refused (exit 2, naming the
    first's PID); the first's files are complete and load."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(_config(**{"epochs = 2": "epochs = 4"}))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "analog_ep", "train", "--config", str(cfg), "--out", str(out), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
             for _ in range(2)]
    done = [(p.pid, *p.communicate(timeout=600), p.returncode) for p in procs]
    (winner,), (loser,) = [r for r in done if r[3] == 0], [r for r in done if r[3] != 0]
    lines = loser[2].strip().splitlines()
    assert loser[3] == 2 and len(lines) == 1, loser
    assert lines[0] == (f"error: {out} is in use by another training run (PID {winner[0]}); wait for it to finish "
                        "or choose another --out")
    assert load_checkpoint(out, data=DIGITS).epoch == 4
    assert len(json.loads((out / "metrics.json").read_text())) == 4
    assert json.loads((out / "test.json").read_text())["n"] == 300
    assert len(read_deck(out / "trained.cir").free_nodes()) > 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [LOCK]  # no temporary file left


def test_run_lock_names_the_holder_and_is_released(tmp_path):
    with run_lock(tmp_path / "run"):
        with pytest.raises(RunDirectoryBusy, match=f"PID {os.getpid()}"):
            with run_lock(tmp_path / "run"):
                pass
    with run_lock(tmp_path / "run"):  # released when the holder is done
        pass


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = atomic_write(tmp_path / "a.json", lambda tmp: tmp.write_text("old"))

    def half(tmp):
        tmp.write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half)
    assert path.read_text() == "old" and _files(tmp_path) == [path.relative_to(tmp_path)]
    assert (path.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

"""Per-epoch training logs: the [log] table, the trainer's logger hook, TensorBoard event files
read back, the model statistics they carry, and the error when tensorboard is missing."""
import sys

import pytest
import torch
from typer.testing import CliRunner

from analog_ep.cli import app
from analog_ep.data import load_dataset
from analog_ep.devices import DeviceModel
from analog_ep.train import Config, Trainer, load_checkpoint
from analog_ep.train.logs import MissingDependency, TensorBoardLogger, tag

from .conftest import tiny_toml
from .test_train import tiny_config

DIGITS = load_dataset("digits")


def events(log_dir):
    """The scalars and histograms of the TensorBoard event files in ``log_dir``."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(log_dir), size_guidance={accumulator.SCALARS: 0, accumulator.HISTOGRAMS: 0})
    acc.Reload()
    return acc


class Recorder:
    """An epoch logger that keeps what the trainer gives it."""

    def __init__(self):
        self.epochs, self.closed = [], False

    def log_epoch(self, metrics, params, scalars):
        self.epochs.append((metrics, sorted(params), dict(scalars)))

    def close(self):
        self.closed = True


def test_log_table_is_checked_and_may_change_on_resume():
    cfg = Config.from_dict(dict(log=dict(tensorboard=True, tensorboard_dir="tb")))
    assert cfg.log.tensorboard and cfg.log.tensorboard_dir == "tb" and Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"\[log\] tensorboard: expected true or false, got 'yes'"):
        Config.from_dict(dict(log=dict(tensorboard="yes")))
    with pytest.raises(ValueError, match=r"\[log\] colour: unknown setting"):
        Config.from_dict(dict(log=dict(colour=1)))
    logged = tiny_config().updated(log=dict(tensorboard=True))
    assert tiny_config().resumable_with(logged).log.tensorboard
    assert not logged.resumable_with(tiny_config()).log.tensorboard


def test_trainer_calls_the_logger_hook_each_epoch_and_closes_it():
    tr = Trainer(tiny_config(epochs=2), data=DIGITS)
    rec = Recorder()
    tr.fit(progress=False, loggers=[rec])
    assert rec.closed and [m for m, _, _ in rec.epochs] == tr.history
    _, keys, scalars = rec.epochs[-1]
    assert keys == sorted(tr.keys)
    assert scalars["ep/beta"] == 2e-5 and scalars["lr/g:w1p"] == 2e-6
    assert {"model/at_g_min", "model/at_g_max", "model/g_mean_S"} <= set(scalars)


def test_tensorboard_event_file_of_a_digits_run(tmp_path):
    pytest.importorskip("tensorboard")
    tr = Trainer(tiny_config(epochs=2).updated(log=dict(tensorboard=True)), data=DIGITS, out=tmp_path)
    tr.fit(progress=False)
    acc = events(tmp_path / "tensorboard")
    tags = acc.Tags()
    val = acc.Scalars("val/error")
    assert [e.step for e in val] == [1, 2]
    assert [e.value for e in val] == pytest.approx([m.val_error for m in tr.history])
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([m.train_loss for m in tr.history])
    assert [e.value for e in acc.Scalars("ep/beta")] == pytest.approx([2e-5, 2e-5])
    assert {"train/error", "ep/mean_settle_sweeps", "ep/measurement_time_s", "time/epoch_s", "model/at_g_max",
            "lr/g/w1p"} <= set(tags["scalars"])
    assert set(tags["histograms"]) == {f"params/{tag(k)}" for k in tr.keys}
    hist = acc.Histograms("params/g/w2n")[-1].histogram_value
    g = tr.params["g:w2n"].detach()
    assert hist.num == g.numel() and hist.max == pytest.approx(float(g.max()))


def test_cli_train_tensorboard_option(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_toml())
    res = CliRunner().invoke(app, ["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--epochs", "1",
                                   "--tensorboard", str(tmp_path / "tb"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert [e.step for e in events(tmp_path / "tb").Scalars("val/error")] == [1]
    assert not (tmp_path / "run" / "tensorboard").exists()
    assert load_checkpoint(tmp_path / "run", data=DIGITS).cfg.log.tensorboard_dir == str(tmp_path / "tb")


def test_missing_tensorboard_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(MissingDependency, match=r"^TensorBoard logging needs the tensorboard package: "
                                                r"pip install 'analog-ep\[tensorboard\]'$"):
        TensorBoardLogger(tmp_path)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_toml())
    res = CliRunner().invoke(app, ["train", "--config", str(cfg), "--out", str(tmp_path / "run"),
                                   "--tensorboard", str(tmp_path / "tb")])
    assert res.exit_code == 2 and res.stderr.strip().splitlines() == [
        "error: TensorBoard logging needs the tensorboard package: pip install 'analog-ep[tensorboard]'"]
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_tensorboard_needs_a_directory():
    tr = Trainer(tiny_config(epochs=1).updated(log=dict(tensorboard=True)), data=DIGITS)
    with pytest.raises(ValueError, match="tensorboard_dir"):
        tr.config_loggers()


def test_circuit_statistics_bounds_and_devices():
    tr = Trainer(tiny_config(), data=DIGITS)
    m = tr.model
    with torch.no_grad():
        m.trainable()["g:w1p"].fill_(m.g_max)
        m.trainable()["g:w1n"].fill_(m.g_min)
    n = {k: p.numel() for k, p in m.trainable().items()}
    total = sum(n.values())
    stats = m.statistics()
    assert stats["at_g_max"] == pytest.approx(n["g:w1p"] / total)
    assert stats["at_g_min"] == pytest.approx(n["g:w1n"] / total)
    assert "devices_faulty" not in stats
    m.attach_devices(DeviceModel.build("ideal", stuck_max=0.1, on_off=10.0), seed=0)
    stats = m.statistics()
    assert stats["devices_faulty"] == pytest.approx(0.1, abs=0.02)
    assert stats["at_g_max"] >= n["g:w1p"] / total and stats["devices_clock_s"] == 0.0
    assert stats["at_g_min"] > 0.5  # the devices' g_min (g_max / 10) is the initial range's top: most sit there

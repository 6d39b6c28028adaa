"""Data-parallel training: 2 gloo ranks on CPU must make the same updates as one process on
the same global batches (torchrun launched as a subprocess; loopback only)."""
import subprocess
import sys

import torch

from analog_ep.data import load_dataset
from analog_ep.train import Config, Trainer, load_checkpoint
from tests.conftest import tiny_toml

TOML = tiny_toml(batch_size=50, layers="64,24,10", extra_data="train_subset = 250",
                 extra_train='nudging = "random"\ndtype = "float64"\nrtol = 1e-11\nmax_iters = 5000')


def test_distributed_two_gloo_ranks_equal_one_process(tmp_path):
    cfg_path = tmp_path / "ddp.toml"
    cfg_path.write_text(TOML)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "analog_ep", "train", "--config", str(cfg_path), "--out", str(out), "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 ranks" in res.stderr and res.stdout.count("epoch 2:") == 1  # rank 0 alone reports

    single = Trainer(Config.load(cfg_path), data=load_dataset("digits"))
    single.fit(progress=False)
    ddp = load_checkpoint(out, data=load_dataset("digits"))
    assert ddp.epoch == 2
    for k in single.keys:  # float64, settles to 1e-11: only the summation order differs
        torch.testing.assert_close(ddp.params[k], single.params[k], rtol=1e-7, atol=1e-14)
        assert not torch.equal(single.params[k], Trainer(Config.load(cfg_path)).params[k])  # it trained
    assert [m.val_error for m in ddp.history] == [m.val_error for m in single.history]
    for a, b in zip(ddp.history, single.history):
        assert abs(a.train_loss - b.train_loss) <= 1e-9 * b.train_loss

"""Fused kernels (analog_ep.emulator.fusion): compiled settles agree with eager ones, training
can ask for them, and a machine without a working compiler falls back to eager."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from analog_ep.circuit import DiodeModel, layered
from analog_ep.emulator import compile_circuit, settle
from analog_ep.models import AnalogCircuit
from analog_ep.train import Config, Trainer

# the 1H training circuit's components (examples/mnist_1h.toml), scaled down: gain-4 amplifiers,
# Shockley clamps at 0 and 1 V, 16 V inputs
KW = dict(amplifier_gain=4.0, diode=DiodeModel(2.52e-9, 1.752), clamp=(0.0, 1.0), seed=3)


def batch(n_in: int, b: int = 16) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (b, n_in)) * 16.0


@pytest.mark.parametrize("dtype, bound", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_fused_settle_matches_eager(dtype, bound):
    """Both converge to the same tolerance; their states differ by at most ``bound`` (V): in
    float64 rounding alone (the tolerance is 1e-10 relative), in float32 a few times the
    stopping tolerance (rtol 1e-5 of 16 V = 1.6e-4 V, per node: the two runs stop at different
    points within it)."""
    cc = compile_circuit(layered("48,32,10", inputs=np.zeros(48), **KW), dtype=dtype)
    u = cc.inputs_to_sources(torch.as_tensor(batch(48), dtype=dtype))
    eager = settle(cc, u)
    fused = settle(cc, u, fused=True)
    assert eager.converged and fused.converged
    assert eager.iterations == fused.iterations
    assert float((fused.s - eager.s).abs().max()) <= bound


def test_fused_ep_step_matches_eager():
    """EP's gradient through fused settles: within 1e-6 relative of the eager one (float64)."""
    grads = []
    for fused in (False, True):
        m = AnalogCircuit("48,32,10", input_voltage=16.0, rtol=1e-10, dtype="float64", fused=fused,
                          **{k: v for k, v in KW.items()})
        m.ep_step(batch(48) / 16.0, torch.arange(16) % 10)
        grads.append({k: p.grad.clone() for k, p in m.trainable().items()})
    for k in grads[0]:
        scale = float(grads[0][k].abs().max())
        assert float((grads[1][k] - grads[0][k]).abs().max()) <= 1e-6 * scale, k


def test_training_config_turns_fusion_on(tmp_path):
    cfg = Config.from_dict({"circuit": {"layers": "16,8,4"}, "train": {"fused": True, "epochs": 1}})
    assert Trainer(cfg, out=tmp_path).model.fused
    assert not Trainer(Config.from_dict({"circuit": {"layers": "16,8,4"}}), out=tmp_path).model.fused


def test_fusion_falls_back_to_eager_without_a_compiler(tmp_path):
    """With the C++ compiler pointed at a missing program (and an empty kernel cache), a fused
    settle warns (once per kernel: a second settle does not) and gives exactly the eager result."""
    script = textwrap.dedent("""
        import warnings, numpy as np, torch
        from analog_ep.circuit import DiodeModel, layered
        from analog_ep.emulator import compile_circuit, settle
        cc = compile_circuit(layered("12,6,3", inputs=np.zeros(12), amplifier_gain=4.0,
                                     diode=DiodeModel(2.52e-9, 1.752), clamp=(0.0, 1.0)), dtype=torch.float32)
        u = cc.inputs_to_sources(torch.linspace(0, 16, 24).reshape(2, 12))
        def run():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = settle(cc, u, fused=True)
            return res, sum("torch.compile failed" in str(w.message) for w in caught)
        (fused, first), (again, second) = run(), run()
        eager = settle(cc, u)
        print(first > 0, second, bool(torch.equal(fused.s, eager.s)), bool(torch.equal(again.s, eager.s)))
    """)
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "0", "True", "True"], out.stdout + out.stderr[-2000:]


def test_fused_kernel_reads_strided_inputs_in_place():
    """A colour's columns of the batch's voltages (a strided view) and a conductance broadcast
    over the batch are read as they are: one compiled copy per layout, none per batch size, and
    results equal to eager ones."""
    from analog_ep.emulator.fusion import Fusable

    kernel = Fusable(lambda x, d: d * x + x * x)
    g = torch.Generator().manual_seed(0)
    for b in (4, 6, 9):
        s = torch.randn(b, 12, generator=g, dtype=torch.float64)
        x = s[:, 2:7]  # a colour's columns: not contiguous
        d = torch.rand(1, 5, generator=g, dtype=torch.float64).expand(b, -1)  # broadcast: stride 0
        for args in ((x, d), (x.contiguous(), d.contiguous())):
            torch.testing.assert_close(kernel(*args, fused=True), kernel.eager(*args), rtol=1e-15, atol=0)
    if kernel.broken is not None:  # no working C++ compiler: the eager fallback (tested above) ran
        pytest.skip(f"torch.compile unavailable here: {kernel.broken}")
    assert kernel.variants == 2  # two layouts, three batch sizes
    # each copy is its own code to torch.compile (a name of its own): what one copy's calls
    # teach it (a batch size that varies, so a symbolic one) does not reach another's widths
    names = {c._torchdynamo_orig_callable.__name__ for c in kernel._compiled.values()}
    assert len(names) == kernel.variants

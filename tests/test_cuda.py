"""CPU and CUDA give the same results (float64): a settle, an EP step of a circuit, the trainer's
step, a circuit on devices, and a seed model's step. Runs where CUDA is available; skips
otherwise (CI here has no GPU)."""
import pytest
import torch

from analog_ep import AnalogCircuit
from analog_ep.circuit import DiodeModel, layered
from analog_ep.data import load_dataset
from analog_ep.devices import DeviceModel
from analog_ep.emulator import compile_circuit, settle
from analog_ep.emulator.ep import ep_gradient
from analog_ep.train import Config, Trainer

from .test_train import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available())")

GPU = "cuda"
DIGITS = load_dataset("digits")
X, LABELS = torch.as_tensor(DIGITS.x_train[:32]), torch.as_tensor(DIGITS.y_train[:32])


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    torch.testing.assert_close(a.cpu(), b.cpu(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("method", ["bcd", "newton"])
def test_settle_on_cpu_and_cuda(method):
    circuit = layered("16,8,4", seed=0, amplifier_gain=2.0, diode=DiodeModel())
    x = torch.rand(8, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    free = {}
    for device in ("cpu", GPU):
        cc = compile_circuit(circuit, dtype=torch.float64, device=device)
        free[device] = settle(cc, cc.inputs_to_sources(x), method=method, rtol=1e-12)
        assert free[device].converged and free[device].s.device.type == torch.device(device).type
    close(free["cpu"].V, free[GPU].V)


def test_ep_gradient_on_cpu_and_cuda():
    circuit = layered("16,8,4", seed=0, amplifier_gain=2.0, diode=DiodeModel())
    x = torch.rand(8, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.full((8, 4), 0.1, dtype=torch.float64)
    grads = {}
    for device in ("cpu", GPU):
        cc = compile_circuit(circuit, dtype=torch.float64, device=device)
        grads[device] = ep_gradient(cc, cc.inputs_to_sources(x), y.to(device), 1e-6, mode="centered", rtol=1e-12).grads
    for k in grads["cpu"]:
        close(grads["cpu"][k], grads[GPU][k], rtol=1e-7, atol=1e-15)


def test_circuit_ep_step_on_cpu_and_cuda():
    kw = dict(layers="64,32,10", amplifier_gain=4.0, clamp=(0.6, 0.4), g_init=(1e-6, 1e-5), target=(0.0, 0.2),
              beta=2e-5, dtype=torch.float64, rtol=1e-10)
    cpu, gpu = AnalogCircuit(**kw), AnalogCircuit(**kw, device=GPU)
    close(cpu(X), gpu(X))
    a, b = cpu.ep_step(X, LABELS), gpu.ep_step(X, LABELS)
    close(a.loss, b.loss)
    for k, p in cpu.trainable().items():
        close(p.grad, gpu.trainable()[k].grad, rtol=1e-7, atol=1e-18)


def test_trainer_step_on_cpu_and_cuda():
    """The EP gradient a Trainer.step applies (left in .grad), and its loss and error; compared
    before the optimiser, whose Adam normalisation would magnify rounding in near-zero entries."""
    grads, measured = {}, {}
    for device in ("cpu", GPU):
        tr = Trainer(tiny_config(rtol=1e-10), data=DIGITS, device=device)
        measured[device] = tr.step(X, LABELS)
        grads[device] = {k: p.grad for k, p in tr.params.items()}
    assert measured["cpu"][1] == measured[GPU][1]  # error rate
    assert measured["cpu"][0] == pytest.approx(measured[GPU][0], rel=1e-9)
    for k, g in grads["cpu"].items():
        close(g, grads[GPU][k], rtol=1e-6, atol=1e-9 * float(g.abs().max()))


def test_circuit_on_devices_on_cpu_and_cuda():
    """A device realisation draws from a CPU generator whatever the circuit's device, so the same
    seed gives the same devices (levels, write noise, faults) on both."""
    model = DeviceModel.build("ideal", levels=64, write_noise=0.01, stuck_min=0.05, on_off=100.0)
    kw = dict(layers="64,32,10", amplifier_gain=4.0, clamp=(0.6, 0.4), g_init=(1e-6, 1e-5), target=(0.0, 0.2),
              beta=2e-5, dtype=torch.float64, rtol=1e-10)
    cpu, gpu = AnalogCircuit(**kw), AnalogCircuit(**kw, device=GPU)
    for m in (cpu, gpu):
        m.attach_devices(model, seed=3)
    for k, p in cpu.trainable().items():
        close(p.detach(), gpu.trainable()[k].detach(), rtol=1e-12, atol=0)
    close(cpu(X), gpu(X))
    assert cpu.statistics() == pytest.approx(gpu.statistics())


def test_seed_model_step_on_cpu_and_cuda():
    raw = dict(data=dict(dataset="digits", batch_size=32), model=dict(kind="p", layers="64,40,10", free_steps=15,
                                                                      nudged_steps=5), train=dict(lr=[0.05], dtype="float64"))
    grads = {}
    for device in ("cpu", GPU):
        tr = Trainer(Config.from_dict(raw), data=DIGITS, device=device)
        tr.step(X, LABELS)
        grads[device] = {k: p.grad for k, p in tr.params.items()}
    for k, g in grads["cpu"].items():
        close(g, grads[GPU][k], rtol=1e-7, atol=1e-10 * float(g.abs().max()))


def test_fused_settle_on_cuda_matches_the_cpu():
    """The fused kernels compiled for CUDA (Triton) settle to the CPU's eager state (float64)."""
    circuit = layered("16,8,4", seed=0, amplifier_gain=4.0, diode=DiodeModel(2.52e-9, 1.752), clamp=(0.0, 1.0))
    x = torch.rand(8, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 16
    res = {}
    for device, fused in (("cpu", False), (GPU, True)):
        cc = compile_circuit(circuit, dtype=torch.float64, device=device)
        res[device] = settle(cc, cc.inputs_to_sources(x), rtol=1e-12, fused=fused)
        assert res[device].converged
    close(res["cpu"].V, res[GPU].V, rtol=1e-8, atol=1e-10)

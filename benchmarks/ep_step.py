"""Full EP training step (free phase + two centred nudged phases + gradient + Adam update) per
circuit size, batch size, dtype and device, with achieved FLOP/s and memory.

    .venv/bin/python benchmarks/ep_step.py [--circuits xs,1h,2h] [--batches 1,32,128] \
        [--dtypes float32,float64] [--devices cpu,cuda] [--repeats 5] [--out benchmarks/results/ep_step.json]

Circuits use the training configs' components (examples/mnist_1h.toml: gain-4 amplifiers,
Shockley clamp diodes, 16 V pixels): xs 2x784-100-10, 1h 2x784-1024-10, 2h 2x784-1024-1024-10,
xl 2x784-30000-10. Inputs are MNIST training images when the dataset is cached, else uniform
random pixels (the JSON says which). Each step is a real Trainer.step, so conductances change
and the parameter-only operators are rebuilt every step, as in training. Timing: median of
--repeats steps after two warm-up steps. FLOPs: 2·m·k·n of the dense matrix products of one step
(the dominant work; sparse products left out); "peak" is the rate of one large (4096²) matmul
on the same device and dtype (the achievable dense rate): the median of five products timed
just before the steps and five just after, so that a drift of the shared machine's speed
(tens of per cent within a minute) weighs on the peak as it does on the steps (a product
between steps would flush the caches the steps run from); the fraction of peak is the step's
rate over it. TF32 (CUDA only) is float32 storage with TF32 matmuls.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from analog_ep.train import Config, Trainer
from analog_ep.train.files import atomic_write
from torch_devices import add_devices_option, parse_devices, sync

CIRCUITS = {"xs": "784,100,10", "1h": "784,1024,10", "2h": "784,1024,1024,10", "xl": "784,30000,10"}


def inputs(n: int):
    """MNIST training images (cached by `make data`), else uniform random pixels."""
    try:
        from analog_ep.data.datasets import load_dataset

        d = load_dataset("mnist")
        return torch.as_tensor(d.x_train[:n]), torch.as_tensor(d.y_train[:n]), "mnist"
    except Exception:  # no cached MNIST (e.g. an offline GPU machine)
        g = torch.Generator().manual_seed(0)
        return torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g), "random"


class MatmulRate:
    """The FLOP/s of a large square matmul (n × n), timed on demand: the achievable dense rate."""

    def __init__(self, device: str, dtype: torch.dtype, n: int = 4096):
        self.device, self.n = device, n
        self.a = torch.randn(n, n, device=device, dtype=dtype)
        self.b = torch.randn(n, n, device=device, dtype=dtype)
        self.a @ self.b  # warm-up

    def measure(self) -> float:
        """One product's rate, FLOP/s."""
        sync(self.device)
        t0 = time.perf_counter()
        self.a @ self.b
        sync(self.device)
        return 2 * self.n ** 3 / (time.perf_counter() - t0)


def matmul_peak(device: str, dtype: torch.dtype, n: int = 4096) -> float:
    """FLOP/s of one large square matmul (median of 5): the achievable dense rate."""
    rate = MatmulRate(device, dtype, n)
    return statistics.median(rate.measure() for _ in range(5))


class DenseMatmulFlops(TorchDispatchMode):
    """2·m·k·n of every dense matrix product (mm/addmm/addmm_/bmm/baddbmm) dispatched while active.
    Sparse operands are left out: profilers count a CSR product as if it were dense."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "addmm_", "bmm", "baddbmm"):
            a, b = args[-2:] if name in ("mm", "bmm") else args[1:3]
            if all(isinstance(t, torch.Tensor) and t.layout == torch.strided for t in (a, b)):
                self.flops += 2 * a.numel() * b.shape[-1]
        return out


def step_flops(tr: Trainer, x, y) -> float:
    """The dense FLOPs of one step, counted on an eager step: a compiled kernel run under a
    dispatch mode leaves later compiled calls in the process several times slower (torch 2.13),
    and the fused kernels hold no matrix products anyway."""
    fused, tr.model.fused = tr.model.fused, False
    try:
        with DenseMatmulFlops() as counter:
            tr.step(x, y)
    finally:
        tr.model.fused = fused
    return float(counter.flops)


def timed_steps(tr: Trainer, batches, device: str) -> tuple[list[float], list[int]]:
    """The wall time (s) and the free-phase sweeps of one ``Trainer.step`` per ``(x, y)`` batch,
    each timed between device synchronisations."""
    times, sweeps = [], []
    for x, y in batches:
        sync(device)
        t0 = time.perf_counter()
        _, _, it = tr.step(x, y)
        sync(device)
        times.append(time.perf_counter() - t0)
        sweeps.append(it)
    return times, sweeps


def step_config(config_cls: type, layers: str, dtype: str, eager: bool):
    """``examples/mnist_1h.toml`` with the given layers, dtype (tf32: float32 storage) and one
    learning rate, fused as the config says unless ``eager``; ``config_cls`` is the Config of the
    analog_ep package to build (``ab_step.py`` builds two versions')."""
    cfg = config_cls.load(Path(__file__).resolve().parents[1] / "examples" / "mnist_1h.toml")
    cfg.circuit.layers = layers
    cfg.train.dtype = "float64" if dtype == "float64" else "float32"
    cfg.train.lr = cfg.train.lr[:1]
    cfg.train.fused = cfg.train.fused and not eager
    return cfg


def bench(name: str, device: str, dtype: str, batch: int, repeats: int, data, eager: bool) -> dict:
    cfg = step_config(Config, CIRCUITS[name], dtype, eager)
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    tr = Trainer(cfg, device=device)
    xs, ys, source = data
    batches = [(xs[i * batch:(i + 1) * batch], ys[i * batch:(i + 1) * batch]) for i in range(repeats + 2)]
    for x, y in batches[:2]:
        tr.step(x, y)
    rate = MatmulRate(device, torch.float64 if dtype == "float64" else torch.float32)
    peaks = [rate.measure() for _ in range(5)]
    times, sweeps = timed_steps(tr, batches[2:], device)
    peaks += [rate.measure() for _ in range(5)]
    sec, peak = statistics.median(times), statistics.median(peaks)
    flops = step_flops(tr, *batches[0])
    row = dict(circuit=name, layers=CIRCUITS[name], device=device, dtype=dtype, batch=batch, inputs=source,
               fused=cfg.train.fused,
               step_seconds=sec, step_seconds_all=times, per_sample_seconds=sec / batch,
               free_sweeps=float(np.mean(sweeps)), matmul_flops=flops, achieved_flops_per_s=flops / sec,
               matmul_peak_flops_per_s=peak, matmul_peak_flops_per_s_all=peaks, fraction_of_peak=flops / sec / peak)
    if device.startswith("cuda"):
        row["max_memory_bytes"] = torch.cuda.max_memory_allocated()
    else:
        row["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.backends.cuda.matmul.allow_tf32 = False
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--circuits", default="xs,1h,2h")
    ap.add_argument("--batches", default="1,32,128")
    ap.add_argument("--dtypes", default="float32,float64")
    add_devices_option(ap, loops=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--eager", action="store_true", help="settle eagerly (the config's fused = true turned off)")
    ap.add_argument("--out", default="benchmarks/results/ep_step.json")
    args = ap.parse_args()
    devices = parse_devices(ap, args.devices, loops=True)
    batches = [int(b) for b in args.batches.split(",")]
    data = inputs((args.repeats + 2) * max(batches))
    rows = []
    for name in args.circuits.split(","):
        for device in devices:
            for dtype in args.dtypes.split(","):
                if dtype == "tf32" and not device.startswith("cuda"):
                    continue
                for batch in batches:
                    row = bench(name, device, dtype, batch, args.repeats, data, args.eager)
                    rows.append(row)
                    print(f"{name:>3s} {device:>5s} {dtype:>7s} batch {batch:>4d}: step {row['step_seconds'] * 1e3:9.2f} ms "
                          f"({row['per_sample_seconds'] * 1e6:9.1f} us/sample), {row['free_sweeps']:.1f} free sweeps, "
                          f"{row['achieved_flops_per_s'] / 1e9:8.2f} GFLOP/s = {100 * row['fraction_of_peak']:.1f} % "
                          f"of a large matmul ({row['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s)", flush=True)
                    write_results(args.out, steps=rows)  # after every row: a run stopped early keeps what it measured


def write_results(path: str, **fields) -> None:
    """Write ``fields`` as JSON to ``path`` (atomically: a reader never sees half a file), with the
    machine, GPU, torch version and threads."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out = dict(machine=platform.processor() or platform.machine(), gpu=gpu, torch=torch.__version__,
               threads=torch.get_num_threads(), **fields)
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(out, indent=1)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""P-conv (seed 003 appendix D, 28×28 → conv 32 → pool → conv 64 → pool → 10) on one torch device
(CPU by default): the step with and without the memoised input term, and how the initial weight
scale changes the start of training.

    .venv/bin/python benchmarks/pconv.py [--out benchmarks/results/pconv.json] [--images 4000] [--skip-init] [--devices cpu]

* floor: the step on all threads (median of 5 runs of 40 steps), the GFLOP/s of its two
  convolutions (the work a step cannot skip), the large-matmul rate measured in the same run, and
  the epoch time of the seed's schedule at each rate: the least an epoch can take on the device.
* step: median ms per free-phase step (batch 20, float32, one CPU thread), the memo switched off
  and on in interleaved runs of 60 steps in one process, so the ratio is measured in one run.
* init: two trainings from the same draw, Glorot bound × 1.0 and × 0.5, with
  examples/seed_pconv.toml's other settings, on the same --images MNIST training images; the
  validation error on the first 2,000 validation images at the end (needs the MNIST cache).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from analog_ep.models.discrete import ConvPrototypical
from analog_ep.train import Config
from analog_ep.train import Trainer
from ep_step import matmul_peak
from torch_devices import add_devices_option, parse_devices, sync


def step_times(device: str, repeats: int = 5, steps: int = 60) -> dict:
    m = ConvPrototypical((1, 28, 28), [32, 64], [10], dtype=torch.float32, device=device)
    x = torch.rand(20, 784, generator=torch.Generator().manual_seed(0)).to(device)
    s = m.relax(x, m.zeros(20), 5)
    times = {"memo_off": [], "memo_on": []}
    for _ in range(repeats):
        for name in times:
            m.memo = name == "memo_on"
            sync(device)
            t = time.perf_counter()
            m.relax(x, s, steps)
            sync(device)
            times[name].append((time.perf_counter() - t) / steps * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(ms_per_step=med, speedup=med["memo_off"] / med["memo_on"], batch=20, dtype="float32", device=device)


def conv_flops(m: ConvPrototypical, batch: int) -> float:
    """FLOPs (2 per multiply-add) of the convolutions one step computes afresh: each conv
    coupling between two state layers, forward (its pooled term) and transposed (the unpooled
    term it sends back); the clamped input's convolution is memoised and left out."""
    flops = 0.0
    for i in range(m.n_fc, len(m.shapes) - 1):  # couplings (i, i + 1) between two state layers
        c_out, c_in, k, _ = m.params[f"W{i}_{i + 1}"].shape
        _, h, w = m.shapes[i + 1]
        flops += 2 * (2 * batch * c_out * (h - k + 1) * (w - k + 1) * c_in * k * k)
    return flops


def floor(device: str, repeats: int = 5, steps: int = 40) -> dict:
    """The step on all threads, the rate its convolutions reach, and what an epoch of the
    seed's schedule (50,000 images in minibatches of 20, T + K = 210 steps each) costs at that
    rate and at the large-matmul rate measured in the same run."""
    m = ConvPrototypical((1, 28, 28), [32, 64], [10], dtype=torch.float32, device=device)
    x = torch.rand(20, 784, generator=torch.Generator().manual_seed(0)).to(device)
    s = m.relax(x, m.zeros(20), 5)
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        s = m.relax(x, s, steps)
        sync(device)
        times.append((time.perf_counter() - t) / steps)
    sec, flops = statistics.median(times), conv_flops(m, 20)
    peak = matmul_peak(device, torch.float32)
    per_epoch = 50_000 // 20 * (200 + 10)
    return dict(threads=torch.get_num_threads(), ms_per_step=sec * 1e3, conv_gflop_per_step=flops / 1e9,
                conv_gflops=flops / sec / 1e9, matmul_peak_gflops=peak / 1e9, fraction_of_peak=flops / sec / peak,
                steps_per_epoch=per_epoch, epoch_s_at_this_rate=per_epoch * sec,
                epoch_s_at_matmul_peak=per_epoch * flops / peak)


def init_scale_start(images: int, device: str) -> dict:
    base = Config.load(Path(__file__).parents[1] / "examples" / "seed_pconv.toml")
    out = {}
    for scale in (1.0, 0.5):
        cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, init_scale=scale))
        tr = Trainer(cfg, device=device)
        d = tr.data
        idx = torch.randperm(len(d.y_train), generator=torch.Generator().manual_seed(0))[:images]
        for i in range(0, images, cfg.data.batch_size):
            b = idx[i:i + cfg.data.batch_size]
            tr.step(torch.as_tensor(d.x_train[b.numpy()]), torch.as_tensor(d.y_train[b.numpy()]), b)
        out[str(scale)] = tr.error(d.x_val[:2000], d.y_val[:2000])
        print(f"init_scale {scale}: validation error {100 * out[str(scale)]:.1f} % after {images} images", flush=True)
    return dict(images=images, val_images=2000, val_error=out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/pconv.json"))
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--skip-init", action="store_true", help="time the floor and the step only (keeps an existing --out file's init entry)")
    add_devices_option(ap, loops=False)
    args = ap.parse_args()
    device = parse_devices(ap, args.devices, loops=False)[0]
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    result = dict(floor=floor(device))
    f = result["floor"]
    print(f"floor ({f['threads']} threads): {f['ms_per_step']:.2f} ms per step, convolutions at "
          f"{f['conv_gflops']:.0f} GFLOP/s = {100 * f['fraction_of_peak']:.0f} % of a large matmul "
          f"({f['matmul_peak_gflops']:.0f} GFLOP/s); an epoch of {f['steps_per_epoch']:,} steps: "
          f"{f['epoch_s_at_this_rate']:.0f} s at this rate, {f['epoch_s_at_matmul_peak']:.0f} s at the matmul rate",
          flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result["step"] = step_times(device)
    print(f"step: {result['step']['ms_per_step']['memo_off']:.2f} ms without the memo, "
          f"{result['step']['ms_per_step']['memo_on']:.2f} ms with it ({result['step']['speedup']:.2f}x)", flush=True)
    torch.set_num_threads(threads)
    if not args.skip_init:
        result["init"] = init_scale_start(args.images, device)
    elif "init" in old:  # kept from the last full run
        result["init"] = old["init"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

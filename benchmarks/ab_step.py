"""Two versions of analog_ep timed against each other in one process: the EP training step of
another checkout's package (``--base PATH``, a directory holding an ``analog_ep`` package, e.g. a
``git worktree``) and of this one, alternating step by step on the same batches.

    .venv/bin/python benchmarks/ab_step.py --base /tmp/wt [--layers 784,1024,10] [--batch 128] \
        [--steps 30] [--dtype float32] [--eager] [--devices cpu] [--out benchmarks/results/ab_step.json]

This machine's speed swings by up to 40 % within minutes, so two versions timed in separate runs
cannot be told apart below that; steps of the two alternating in one process see the same
machine. The base package is copied beside this one under the name ``analog_ep_base`` (its
imports are relative), each version builds its own ``Trainer`` from ``examples/mnist_1h.toml``
with the given layers, batch, dtype and ``fused`` setting, both take three warm-up steps, then
``--steps`` steps each on the same MNIST batches (random pixels without the cached dataset),
the order of the two swapped every step. Reported: each version's median step, and the median
and range of the per-step ratios base/current (above 1: the current version is faster); also
the largest difference of their parameters after the identical steps (0 where no change rounds
differently).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


from ep_step import inputs, step_config, write_results
from torch_devices import add_devices_option, parse_devices, sync


def trainer(package: str, layers: str, dtype: str, eager: bool, device: str):
    """A Trainer of ``package`` (analog_ep or analog_ep_base) on the 1H config's components."""
    train = __import__(f"{package}.train", fromlist=["Config", "Trainer"])
    return train.Trainer(step_config(train.Config, layers, dtype, eager), device=device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="a directory holding the other version's analog_ep package")
    ap.add_argument("--layers", default="784,1024,10")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--eager", action="store_true", help="settle eagerly (fused = false)")
    add_devices_option(ap, loops=False)
    ap.add_argument("--out", default="benchmarks/results/ab_step.json")
    args = ap.parse_args()
    device = parse_devices(ap, args.devices, loops=False)[0]
    if args.base is None or not (Path(args.base) / "analog_ep" / "__init__.py").is_file():
        ap.error(f"--base: expected a directory holding an analog_ep package, got {args.base!r}")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(Path(args.base) / "analog_ep", Path(tmp) / "analog_ep_base")
        sys.path.insert(0, tmp)
        versions = {name: trainer(name, args.layers, args.dtype, args.eager, device)
                    for name in ("analog_ep_base", "analog_ep")}
        xs, ys, source = inputs(args.batch * (args.steps + 3))
        batches = [(xs[i * args.batch:(i + 1) * args.batch], ys[i * args.batch:(i + 1) * args.batch])
                   for i in range(args.steps + 3)]
        for tr in versions.values():
            for x, y in batches[:3]:
                tr.step(x, y)
        times: dict[str, list[float]] = {name: [] for name in versions}
        for i, (x, y) in enumerate(batches[3:]):
            for name in (list(versions) if i % 2 else list(versions)[::-1]):
                sync(device)
                t0 = time.perf_counter()
                versions[name].step(x, y)
                sync(device)
                times[name].append(time.perf_counter() - t0)
        base, cur = versions["analog_ep_base"].params, versions["analog_ep"].params
        diff = max(float((base[k].detach() - cur[k].detach()).abs().max()) for k in cur)
    ratios = [b / c for b, c in zip(times["analog_ep_base"], times["analog_ep"])]
    row = dict(base=str(Path(args.base).resolve()), layers=args.layers, batch=args.batch, dtype=args.dtype,
               fused=not args.eager, device=device, inputs=source, steps=args.steps,
               base_seconds=statistics.median(times["analog_ep_base"]),
               current_seconds=statistics.median(times["analog_ep"]),
               base_seconds_all=times["analog_ep_base"], current_seconds_all=times["analog_ep"],
               speedup_median=statistics.median(ratios), speedup_min=min(ratios), speedup_max=max(ratios),
               max_param_difference=diff)
    print(f"{args.layers} batch {args.batch} {args.dtype} {'eager' if args.eager else 'fused'} on {device}: "
          f"base {row['base_seconds'] * 1e3:.2f} ms, current {row['current_seconds'] * 1e3:.2f} ms per step; "
          f"speed-up {row['speedup_median']:.3f} (median of {args.steps} pairs, {min(ratios):.2f}-{max(ratios):.2f}); "
          f"largest parameter difference after the same steps {diff:.3g}")
    write_results(args.out, comparison=row)


if __name__ == "__main__":
    main()

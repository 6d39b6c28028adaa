"""Where an EP training step's time goes: ``torch.profiler`` over real ``Trainer.step`` calls,
the step's top-level operations grouped by kind.

    .venv/bin/python benchmarks/step_profile.py [--circuit 1h] [--batch 128] [--dtype float32] \
        [--steps 8] [--warmup 6] [--eager] [--devices cpu] [--out benchmarks/results/step_profile.json]

The circuit and its components are ``benchmarks/ep_step.py``'s (``examples/mnist_1h.toml``'s
components, ``fused`` as that config says unless ``--eager``), on MNIST training images when
the dataset is cached. After ``--warmup`` steps (they compile the fused kernels), ``--steps``
steps are timed without the profiler (median) and then ``--steps`` more under it. Each
operation the profiler records is counted once, at its outermost level (an operation called
inside another, such as the product inside ``matmul``, belongs to its caller), in one of:

* dense products: ``addmm``, ``mm``, ``matmul``, ``bmm``, ``baddbmm``, ``linear``, ``addmv``, ``mv``;
* compiled kernels: the graphs ``torch.compile`` built (the settle's fused Newton steps and
  residuals);
* optimizer: the fused Adam update;
* other tensor operations, each named with its time;
* the rest of the step's wall time: Python, operator dispatch, compiled-code guards.

Milliseconds per step. The profiler adds a little to every operation, most to the smallest,
so its step is slower than the unprofiled median printed beside it. On CUDA the figures are
host time (what the CPU spends issuing the step), with a synchronisation after each step.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from typing import Iterable

from torch.profiler import ProfilerActivity, profile

from analog_ep.train import Config, Trainer
from ep_step import CIRCUITS, inputs, step_config, timed_steps, write_results
from torch_devices import add_devices_option, parse_devices, sync

DENSE = {"aten::addmm", "aten::addmm_", "aten::mm", "aten::matmul", "aten::bmm", "aten::baddbmm", "aten::linear",
         "aten::addmv", "aten::mv"}
OPTIMIZER = {"aten::_fused_adam_", "aten::_fused_adamw_"}


def _is_compiled(name: str) -> bool:
    """Whether a profiler event is a call of a graph ``torch.compile`` built."""
    return "CompiledFxGraph" in name


def categorise(events: Iterable, steps: int) -> dict[str, float]:
    """Milliseconds per step of each kind of outermost operation (module docstring) in the
    profiler ``events`` of ``steps`` steps: "dense products", "compiled kernels",
    "optimizer", and "other: <op>" per other tensor operation."""
    kinds: Counter[str] = Counter()
    for e in events:
        name = e.name
        if not (name.startswith("aten::") or _is_compiled(name)):
            continue
        parent = e.cpu_parent
        while parent is not None and not (parent.name.startswith("aten::") or _is_compiled(parent.name)):
            parent = parent.cpu_parent
        if parent is not None:  # inside another operation: counted with it
            continue
        if _is_compiled(name):
            kind = "compiled kernels"
        elif name in DENSE:
            kind = "dense products"
        elif name in OPTIMIZER:
            kind = "optimizer"
        else:
            kind = "other: " + name.removeprefix("aten::")
        kinds[kind] += e.cpu_time_total / 1e3 / steps  # µs in total → ms per step
    return dict(kinds)


def run(circuit: str, batch: int, dtype: str, steps: int, warmup: int, eager: bool, device: str) -> dict:
    """Profile ``steps`` training steps (after ``warmup``) of a circuit of ``benchmarks/ep_step.py``;
    returns the JSON row (times in ms per step)."""
    tr = Trainer(step_config(Config, CIRCUITS[circuit], dtype, eager), device=device)
    xs, ys, source = inputs((warmup + 2 * steps) * batch)
    batches = [(xs[i * batch:(i + 1) * batch], ys[i * batch:(i + 1) * batch]) for i in range(warmup + 2 * steps)]
    for x, y in batches[:warmup]:
        tr.step(x, y)
    plain = [t * 1e3 for t in timed_steps(tr, batches[warmup:warmup + steps], device)[0]]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for x, y in batches[warmup + steps:]:
            tr.step(x, y)
            sync(device)
        profiled = (time.perf_counter() - t0) * 1e3 / steps
    kinds = categorise(prof.events(), steps)
    main = {k: kinds.pop(k, 0.0) for k in ("dense products", "compiled kernels", "optimizer")}
    other = dict(sorted(kinds.items(), key=lambda kv: -kv[1]))
    rest = profiled - sum(main.values()) - sum(other.values())
    return dict(circuit=circuit, layers=CIRCUITS[circuit], device=device, dtype=dtype, batch=batch, inputs=source,
                fused=tr.cfg.train.fused, steps=steps, step_ms_unprofiled=statistics.median(plain),
                step_ms_unprofiled_all=plain, step_ms_profiled=profiled, **{k.replace(" ", "_") + "_ms": v
                                                                             for k, v in main.items()},
                other_operations_ms=sum(other.values()), other_operations=other,
                python_dispatch_guards_ms=rest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--circuit", default="1h", choices=sorted(CIRCUITS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--eager", action="store_true", help="settle eagerly (the config's fused = true turned off)")
    add_devices_option(ap, loops=False)
    ap.add_argument("--out", default="benchmarks/results/step_profile.json")
    args = ap.parse_args()
    device = parse_devices(ap, args.devices, loops=False)[0]
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        ap.error("--steps and --batch must be at least 1, --warmup at least 0")
    row = run(args.circuit, args.batch, args.dtype, args.steps, args.warmup, args.eager, device)
    print(f"{args.circuit} {device} {args.dtype} batch {args.batch}: step {row['step_ms_unprofiled']:.2f} ms "
          f"unprofiled (median of {args.steps}), {row['step_ms_profiled']:.2f} ms profiled")
    parts = [("dense products", row["dense_products_ms"]), ("compiled kernels", row["compiled_kernels_ms"]),
             ("optimizer", row["optimizer_ms"]), ("other tensor operations", row["other_operations_ms"]),
             ("python, dispatch, guards", row["python_dispatch_guards_ms"])]
    for name, ms in parts:
        print(f"  {ms:7.2f} ms  {name}")
    for name, ms in list(row["other_operations"].items())[:8]:
        print(f"           {ms:7.2f} ms  {name.removeprefix('other: ')}")
    write_results(args.out, profile=row)


if __name__ == "__main__":
    main()

"""Free-phase settle time of the layered 2x784-100-10 and 2x784-1024-10 circuits, next to
ngspice's operating point of the 2x784-100-10 deck measured in the same run.

    .venv/bin/python benchmarks/settle.py [--out benchmarks/results/settle_cpu.json] [--repeats 5] [--devices cpu,cuda]

Inputs are uniform random in [0, 1] (a stand-in for pixels); conductances are the builder's
defaults (seed 0). The emulator is timed after a warm-up, median of --repeats runs, with its
parameter-only operators cached; "cold" is one settle that builds them first. ngspice: median of
--spice-repeats runs (its time varies several-fold on this shared machine).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from analog_ep.circuit import layered
from analog_ep.circuit.transforms import fold_sources
from analog_ep.emulator import compile_circuit, settle
from analog_ep.spice.ngspice import run_op
from torch_devices import add_devices_option, parse_devices, sync

RTOL = {torch.float64: 1e-6, torch.float32: 1e-5}


def time_settle(cc, u, rtol, repeats):
    """Median settle time with the operators cached, and the time of a cold settle that
    first builds them (what a one-off operating point of a new circuit costs)."""
    settle(cc, u, method="bcd", rtol=rtol)
    cc.cache.clear()
    sync(cc.device)
    t0 = time.perf_counter()
    settle(cc, u, method="bcd", rtol=rtol)
    sync(cc.device)
    cold = time.perf_counter() - t0
    times, res = [], None
    for _ in range(repeats):
        sync(cc.device)
        t0 = time.perf_counter()
        res = settle(cc, u, method="bcd", rtol=rtol)
        sync(cc.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), cold, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/settle_cpu.json")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--spice-repeats", type=int, default=3, help="ngspice runs per deck (median reported)")
    ap.add_argument("--no-spice", action="store_true", help="skip ngspice (e.g. on a machine without it)")
    add_devices_option(ap, loops=True)
    args = ap.parse_args()
    devices = parse_devices(ap, args.devices, loops=True)
    rows = []
    spice, spice_runs = {}, {}
    if not args.no_spice:
        c = layered("784,100,10", seed=0)
        for name, circuit in (("full", c), ("norton", fold_sources(c))):
            runs = [run_op(circuit).seconds for _ in range(args.spice_repeats)]
            spice[name], spice_runs[name] = statistics.median(runs), runs
            print(f"ngspice 2x784-100-10 ({name} deck): median {spice[name]:.3f} s of "
                  + ", ".join(f"{t:.2f}" for t in runs))
    for spec in ("784,100,10", "784,1024,10"):
        circuit = layered(spec, seed=0)
        for device in devices:
            for dtype in (torch.float32, torch.float64):
                cc = compile_circuit(circuit, dtype=dtype, device=device)
                for batch in (1, 128):
                    g = torch.Generator().manual_seed(batch)
                    u = cc.inputs_to_sources(torch.rand(batch, 784, generator=g, dtype=torch.float64).to(dtype))
                    sec, cold, res = time_settle(cc, u, RTOL[dtype], args.repeats)
                    row = dict(circuit=f"2x{spec}", device=device, dtype=str(dtype).split(".")[-1], batch=batch,
                               seconds=sec, cold_seconds=cold, seconds_per_sample=sec / batch, sweeps=res.iterations,
                               rel_residual=res.rel_residual, rtol=RTOL[dtype], converged=res.converged)
                    if spec == "784,100,10" and "full" in spice:
                        row["speedup_vs_ngspice_full_per_sample"] = spice["full"] / (sec / batch)
                    rows.append(row)
                    print(f"{row['circuit']:>14s} {device:>4s} {row['dtype']:>7s} batch {batch:>3d}: "
                          f"{sec * 1e3:8.2f} ms ({sec / batch * 1e6:9.1f} us/sample; cold {cold * 1e3:.1f} ms), "
                          f"{res.iterations} sweeps, "
                          f"rel. residual {res.rel_residual:.1e}"
                          + (f", {row['speedup_vs_ngspice_full_per_sample']:,.0f}x ngspice per sample"
                             if "speedup_vs_ngspice_full_per_sample" in row else ""))
    out = dict(machine=platform.processor() or platform.machine(), torch=torch.__version__,
               threads=torch.get_num_threads(), ngspice_seconds=spice, ngspice_runs=spice_runs, settles=rows,
               note="ngspice: options reltol=1e-9 abstol=1e-15 vntol=1e-12 gmin=1e-15 itl1=1000; "
                    "emulator: bcd, relative residual tolerance rtol per dtype")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

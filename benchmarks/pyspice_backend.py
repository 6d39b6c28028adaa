"""The two ngspice backends on many small decks: ``run_op`` (``ngspice -b`` in a subprocess, one
process per deck) against ``run_op_pyspice`` (ngspice's shared library in this process).

    .venv/bin/python benchmarks/pyspice_backend.py [--decks 200] [--layers 4,3,2 16,8,4]
                                                   [--out benchmarks/results/pyspice_backend.json]
                                                   [--devices cpu]

For each layer spec, --decks circuits (Shockley clamps, gain-2 amplifiers, seeds 0, 1, ...) are
run through both backends, alternating which goes first from deck to deck, in one process. Times
are wall-clock seconds of the whole call (deck text, ngspice, reading the result back), so they
include the subprocess runner's process start and rawfile, and the shared runner's load and
clean-up. Printed and written: median and total seconds per backend, the ratio of the medians,
the worst |ΔV| between the backends over every node of every deck, and the process's resident
memory before and after the shared-library runs. Both backends are ngspice, which runs on the
CPU only: ``--devices`` (the option every benchmark takes) accepts ``cpu`` alone.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from analog_ep.circuit import DiodeModel, layered
from analog_ep.spice import DEFAULT_OPTIONS, run_op
from analog_ep.spice.pyspice import run_op_pyspice
from torch_devices import add_devices_option, parse_devices


def rss_mib() -> float | None:
    """Resident memory of this process in MiB (Linux), else None."""
    statm = Path("/proc/self/statm")
    return int(statm.read_text().split()[1]) * 4096 / 2**20 if statm.exists() else None


def bench(layers: str, decks: int) -> dict:
    """Both backends on ``decks`` circuits of one layer spec; times in seconds, ΔV in volts."""
    times = {"subprocess": [], "pyspice": []}
    backends = {"subprocess": run_op, "pyspice": run_op_pyspice}
    worst = 0.0
    run_op_pyspice(layered(layers, seed=0, amplifier_gain=2.0, diode=DiodeModel()))  # loads the library
    rss_before = rss_mib()
    for seed in range(decks):
        c = layered(layers, seed=seed, amplifier_gain=2.0, diode=DiodeModel())
        order = ["subprocess", "pyspice"] if seed % 2 == 0 else ["pyspice", "subprocess"]
        ops = {}
        for name in order:
            t = time.perf_counter()
            ops[name] = backends[name](c)
            times[name].append(time.perf_counter() - t)
        worst = max(worst, max(abs(ops["subprocess"].node_voltages[n] - ops["pyspice"].node_voltages[n])
                               for n in c.nodes))
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(layers=layers, decks=decks, nodes=len(c.nodes), median_seconds=med,
                total_seconds={k: sum(v) for k, v in times.items()},
                ratio_subprocess_over_pyspice=med["subprocess"] / med["pyspice"], max_abs_dv_volts=worst,
                rss_mib_before=rss_before, rss_mib_after=rss_mib())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decks", type=int, default=200, help="circuits per layer spec")
    ap.add_argument("--layers", nargs="+", default=["4,3,2", "16,8,4"], help="layer specs")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/pyspice_backend.json"))
    add_devices_option(ap, loops=False)
    args = ap.parse_args()
    if parse_devices(ap, args.devices, loops=False) != ["cpu"]:
        ap.error("--devices: ngspice runs on the CPU only; this benchmark has no torch work to put on a GPU")
    rows = []
    for layers in args.layers:
        r = bench(layers, args.decks)
        rows.append(r)
        m = r["median_seconds"]
        print(f"{layers} ({r['nodes']} nodes), {r['decks']} decks: subprocess {1e3 * m['subprocess']:.2f} ms, "
              f"pyspice {1e3 * m['pyspice']:.2f} ms per deck (medians) -> {r['ratio_subprocess_over_pyspice']:.1f}x; "
              f"max |dV| {r['max_abs_dv_volts']:.1e} V; RSS {r['rss_mib_before']:.0f} -> {r['rss_mib_after']:.0f} MiB",
              flush=True)
    result = dict(rows=rows, options=DEFAULT_OPTIONS, python=platform.python_version(), machine=platform.machine(),
                  command="benchmarks/pyspice_backend.py " + " ".join(f"--{k} {v}" for k, v in
                                                                      (("decks", args.decks),
                                                                       ("layers", " ".join(args.layers)))))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

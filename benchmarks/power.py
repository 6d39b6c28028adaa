"""Energy, power and latency per inference and per EP training step against circuit size (the
README's "Energy and latency" table and figure).

    .venv/bin/python benchmarks/power.py [--n 100] [--n-2h 10] [--spice 0] [--devices cpu] \
        [--out benchmarks/results/power.json] [--plot benchmarks/results/power.png]

XS (2x784-100-10) and 1H (2x784-1024-10): the pretrained checkpoints in examples/pretrained/, on
the first --n MNIST test digits. 2H (2x784-1024-1024-10): untrained — random conductances drawn
as examples/mnist_1h.toml draws them (seed 0, g in [0.1, 10] µS, gain-4 amplifiers, Shockley
clamps, 16 V pixels) — on the first --n-2h test digits (its dense Hessians, 2058 free nodes, are
the slow part). Default energy model (analog_ep.studies.power.EnergyModel); --spice N also
checks the XS powers on N digits in ngspice (full decks, ~20 s each). The figure: XS's energy
per inference by element group, and energy against the number of conductances.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from matplotlib.figure import Figure

from analog_ep.studies.plots import energy_breakdown_plot, energy_vs_size_plot, save
from analog_ep.studies.power import checkpoint_energy, circuit_energy
from analog_ep.train import Config, Trainer
from analog_ep.train.files import write_text
from torch_devices import add_devices_option, parse_devices

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = {"XS": ROOT / "examples/pretrained/mnist_xs/checkpoint.pt",
               "1H": ROOT / "examples/pretrained/mnist_1h/checkpoint_fp16.pt"}


def untrained_2h(n: int, device: str) -> dict:
    """The energy report of a 2x784-1024-1024-10 circuit with mnist_1h.toml's components and
    random conductances, on the first n MNIST test digits (emulated on torch ``device``)."""
    cfg = Config.load(ROOT / "examples/mnist_1h.toml")
    cfg = cfg.updated(circuit=dict(layers="784,1024,1024,10"), train=dict(lr=[cfg.train.lr[0]]))
    trainer = Trainer(cfg, device=device)
    report = circuit_energy(trainer.model, trainer.data, n=n, batch_size=cfg.data.batch_size)
    report["checkpoint"] = "untrained: examples/mnist_1h.toml with layers 784,1024,1024,10 (random conductances)"
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="test digits for XS and 1H")
    ap.add_argument("--n-2h", type=int, default=10, help="test digits for 2H")
    ap.add_argument("--spice", type=int, default=0, help="XS digits also run through ngspice")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/power.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "benchmarks/results/power.png")
    add_devices_option(ap, loops=False)
    args = ap.parse_args()
    device = parse_devices(ap, args.devices, loops=False)[0]
    rows = []
    for name, path in CHECKPOINTS.items():
        t0 = time.perf_counter()
        report = checkpoint_energy(path, n=args.n, spice=args.spice if name == "XS" else 0, device=device)
        rows.append(dict(report, name=name, seconds=time.perf_counter() - t0))
        print(f"{name}: {report['energy_per_inference_J']:.3g} J per inference, {report['power_W']:.3g} W, settle "
              f"{report['settle_time_s']:.3g} s; {report['energy_per_training_step_J']:.3g} J per training step",
              flush=True)
    t0 = time.perf_counter()
    rows.append(dict(untrained_2h(args.n_2h, device), name="2H (random g)", seconds=time.perf_counter() - t0))
    print(f"2H: {rows[-1]['energy_per_inference_J']:.3g} J per inference", flush=True)
    fig = Figure(figsize=(12, 4.8))
    energy_breakdown_plot(rows[0], ax=fig.add_subplot(1, 2, 1))
    energy_vs_size_plot(rows, ax=fig.add_subplot(1, 2, 2))
    save(fig, args.plot)
    write_text(args.out, json.dumps(dict(rows=rows, command="benchmarks/power.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "plot"))), indent=1))
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()

"""Our centred EP step next to the reference deep-resistive-network code's (Scellier 2024, "A fast
algorithm to simulate nonlinear resistive networks"), alternating in one process.

    .venv/bin/python benchmarks/drn_side_by_side.py PATH [--repeats 20] [--batch 128] [--devices cpu] \
        [--out benchmarks/results/drn_side_by_side.json]

PATH is a checkout of the reference repository, rain-neuromorphics/energy-based-learning on
GitHub; this script never fetches it. If PATH is missing, or lacks the modules and classes named
in REQUIRED, it says what it needs and exits 0. Nothing of the reference code is copied here:
its classes are imported from PATH and called.

* ours: one ``analog_ep.train.Trainer.step`` of examples/mnist_1h.toml's circuit (2x784-1024-10,
  Shockley clamps, gain-4 amplifiers, float32): free phase, two centred nudged phases (±β), the
  EP gradient and an Adam update.
* theirs: one step of their ``drn-1h`` setting (papers/fast-drn/drn.py): a DeepResistiveEnergy
  with layer shapes (2, 28, 28), (1024,), (10,), weight gains 1, input gain 480; squared-error
  cost; QuadraticMinimizer in "asynchronous" mode with 4 iterations for inference and for
  training; centred EquilibriumProp with nudging 1; SGD at 0.006 on every parameter — the body
  of their training loop: set the input, free phase, set the target, EP gradient, SGD step,
  clamp.

Both take the same MNIST training batches. After 2 warm-up steps each, the two alternate
--repeats times (which goes first swaps every repeat); wall-clock seconds per step, medians,
and their ratio are printed and written to --out, with the reference checkout's commit when
PATH is a git repository (else the one --commit names).
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from analog_ep.data import load_dataset
from analog_ep.train import Config, Trainer
from torch_devices import add_devices_option, parse_devices, sync

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "rain-neuromorphics/energy-based-learning"
# module file (relative to the checkout) -> the classes this harness uses from it
REQUIRED = {
    "model/resistive/network.py": ("DeepResistiveEnergy",),
    "model/function/network.py": ("Network",),
    "model/function/cost.py": ("SquaredError",),
    "model/resistive/minimizer.py": ("QuadraticMinimizer",),
    "training/sgd.py": ("AugmentedFunction", "EquilibriumProp"),
}
DRN_1H = dict(layer_shapes=[(2, 28, 28), (1024,), (10,)], weight_gains=[1.0, 1.0], input_gain=480.0, iterations=4,
              nudging=1.0, lr=0.006)  # papers/fast-drn/drn.py, model 'drn-1h'

Step = Callable[[torch.Tensor, torch.Tensor], object]


def missing(path: Path) -> list[str]:
    """What the checkout at ``path`` lacks of REQUIRED (empty if nothing)."""
    if not path.is_dir():
        return [f"{path}: no such directory"]
    gaps = []
    for name, classes in REQUIRED.items():
        file = path / name
        if not file.is_file():
            gaps.append(f"{name}: no such file")
            continue
        text = file.read_text(errors="replace")
        gaps += [f"{name}: no class {c}" for c in classes if f"class {c}" not in text]
    return gaps


def load_reference(path: Path) -> dict[str, type]:
    """The REQUIRED classes, imported from the checkout at ``path``."""
    sys.path.insert(0, str(path))
    return {c: getattr(importlib.import_module(name[:-3].replace("/", ".")), c)
            for name, classes in REQUIRED.items() for c in classes}


class Reference:
    """The reference code's drn-1h network, cost, minimisers, EP estimator and SGD, on ``device``."""

    def __init__(self, classes: dict[str, type], device: str):
        s = DRN_1H
        self.energy = classes["DeepResistiveEnergy"](s["layer_shapes"], s["weight_gains"], s["input_gain"])
        self.energy.set_device(device)
        self.cost = classes["SquaredError"](self.energy.layers()[-1])
        self.network = classes["Network"](self.energy)
        augmented = classes["AugmentedFunction"](self.energy, self.cost)
        free = self.network.free_layers()
        self.inference = classes["QuadraticMinimizer"](self.energy, free)
        training = classes["QuadraticMinimizer"](augmented, free)
        for minimizer in (self.inference, training):
            minimizer.num_iterations, minimizer.mode = s["iterations"], "asynchronous"
        self.estimator = classes["EquilibriumProp"](self.energy.params(), self.energy.layers(), augmented, self.cost,
                                                    training)
        self.estimator.nudging, self.estimator.variant = s["nudging"], "centered"
        self.params = self.energy.params() + self.cost.params()
        self.optimizer = torch.optim.SGD([{"params": p.state, "lr": s["lr"]} for p in self.params], lr=s["lr"])

    def step(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """One training step on images ``x`` (B, 784) in [0, 1] and their class labels."""
        self.network.set_input(x.reshape(-1, 1, 28, 28), reset=False)
        self.inference.compute_equilibrium()
        self.cost.set_target(labels)
        for p, g in zip(self.params, self.estimator.compute_gradient()):
            p.state.grad = g
        self.optimizer.step()
        for p in self.params:
            p.clamp_()


def ours(device: str, batch: int) -> Trainer:
    """The trainer of examples/mnist_1h.toml with minibatches of ``batch``."""
    cfg = Config.load(ROOT / "examples" / "mnist_1h.toml").updated(data=dict(batch_size=batch))
    return Trainer(cfg, device=device)


def alternate(steps: dict[str, Step], batches: list[tuple[torch.Tensor, torch.Tensor]], repeats: int,
              device: str, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per step of each of ``steps``: ``warmup`` untimed steps each, then ``repeats``
    rounds in which every step runs once on the round's batch, the order reversed every other
    round."""
    names = list(steps)
    for i in range(warmup):
        for name in names:
            steps[name](*batches[i % len(batches)])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        x, y = batches[(warmup + r) % len(batches)]
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            t0 = time.perf_counter()
            steps[name](x, y)
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def commit_of(path: Path) -> str | None:
    """The checked-out commit of a git repository at ``path`` (None if it is not one)."""
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path, help=f"a checkout of {REPOSITORY}")
    ap.add_argument("--repeats", type=int, default=20, help="timed steps of each (after 2 warm-ups)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/drn_side_by_side.json")
    ap.add_argument("--commit", help="the reference code's commit, recorded when PATH is not a git checkout "
                                     "(e.g. an exported tree)")
    add_devices_option(ap, loops=True)
    args = ap.parse_args()
    devices = parse_devices(ap, args.devices, loops=True)
    gaps = missing(args.path)
    if gaps:
        print(f"drn_side_by_side needs a checkout of {REPOSITORY} (this script does not fetch it), with:")
        for name, classes in REQUIRED.items():
            print(f"  {name}: {', '.join(classes)}")
        print(f"{args.path} lacks: " + "; ".join(gaps))
        print("nothing was timed")
        return
    classes = load_reference(args.path)
    d = load_dataset("mnist")
    n = args.batch * (args.repeats + 2)
    x, y = torch.as_tensor(d.x_train[:n]), torch.as_tensor(d.y_train[:n]).long()
    batches = [(x[i:i + args.batch], y[i:i + args.batch]) for i in range(0, n, args.batch)]
    rows = []
    for device in devices:
        trainer, reference = ours(device, args.batch), Reference(classes, device)
        times = alternate({"ours": trainer.step, "theirs": reference.step}, batches, args.repeats, device)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(dict(device=device, median_seconds=med, seconds=times, ratio_theirs_over_ours=med["theirs"] / med["ours"]))
        print(f"{device}: ours {1e3 * med['ours']:.1f} ms, theirs {1e3 * med['theirs']:.1f} ms per step (medians of "
              f"{args.repeats}, batch {args.batch}) -> {med['theirs'] / med['ours']:.1f}x", flush=True)
    result = dict(reference=dict(repository=REPOSITORY, commit=commit_of(args.path) or args.commit, setting="drn-1h", **DRN_1H),
                  ours=dict(config="examples/mnist_1h.toml", step="analog_ep.train.Trainer.step"), batch=args.batch,
                  repeats=args.repeats, rows=rows, torch=torch.__version__, threads=torch.get_num_threads(),
                  machine=platform.processor() or platform.machine(),
                  gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

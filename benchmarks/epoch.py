"""Wall-clock time of whole training epochs of a config on one torch device: what a user waits
for, where ep_step.py times single steps.

    .venv/bin/python benchmarks/epoch.py [--config examples/mnist_1h.toml] [--epochs 2] \
        [--devices cuda] [--train-subset N] [--out benchmarks/results/epoch_<config>_<device>.json]

Trains ``--epochs`` epochs from the config's seeded start with Trainer.fit (no run directory,
nothing saved) and reports each epoch's seconds as fit measures them (training steps plus the
validation pass). The first epoch includes compiling the fused kernels; later epochs are the
steady state. The validation pass is then timed on its own, so that the JSON also gives the
time per training step.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from analog_ep.train import Config, Trainer
from ep_step import write_results
from torch_devices import add_devices_option, parse_devices, sync

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "mnist_1h.toml")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-subset", type=int, default=None, help="train on the first N images only (quick runs)")
    add_devices_option(ap, loops=False)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = parse_devices(ap, args.devices, loops=False)[0]
    cfg = Config.load(args.config)
    if args.train_subset is not None:
        cfg = cfg.updated(data=dict(train_subset=args.train_subset))
    tr = Trainer(cfg, device=device)
    loader = tr.train_loader()
    history = tr.fit(args.epochs, progress=False, train=loader, loggers=())
    sync(device)
    t0 = time.perf_counter()
    tr.error(tr.data.x_val, tr.data.y_val)
    sync(device)
    eval_s = time.perf_counter() - t0
    images, steps = len(loader.y), len(loader)
    epochs = [dict(epoch=m.epoch, seconds=m.seconds, train_error=m.train_error, val_error=m.val_error,
                   mean_sweeps=m.mean_sweeps) for m in history]
    last = history[-1].seconds
    for m in history:
        print(f"epoch {m.epoch}: {m.seconds:.1f} s (train error {100 * m.train_error:.2f} %, "
              f"validation error {100 * m.val_error:.2f} %)")
    print(f"validation pass ({len(tr.data.y_val):,} images): {eval_s:.2f} s; last epoch's training step: "
          f"{(last - eval_s) / steps * 1e3:.2f} ms ({steps} steps of batch {cfg.data.batch_size})")
    out = args.out or ROOT / "benchmarks" / "results" / f"epoch_{cfg.name}_{device.replace(':', '')}.json"
    config = args.config.resolve()
    write_results(str(out), config=str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
                  device=device, dtype=cfg.train.dtype, batch=cfg.data.batch_size, train_images=images,
                  steps_per_epoch=steps, epochs=epochs, validation_seconds=eval_s,
                  validation_images=len(tr.data.y_val), step_seconds_last_epoch=(last - eval_s) / steps)


if __name__ == "__main__":
    main()

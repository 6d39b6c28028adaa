"""Robustness study: test error of a trained circuit against the level of each non-ideality,
deployed as trained (train ideal, deploy noisy) and after training in the loop on the devices.

In-the-loop here is hardware-aware fine-tuning: the trained conductances are programmed into
the devices and EP goes on for a few epochs with every settle read through them and every
update written through them (``analog-ep train --device-model`` trains in the loop from the
start). Monte-Carlo realisations are evaluated one after another, each on the whole test set in
batches; a realisation is a different circuit, so they cannot share one batched settle.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..devices import DeviceModel
from ..models import AnalogCircuit
from ..train import Trainer, load_checkpoint
from ..train.files import atomic_write, write_text
from .plots import save, sweep_plot


@dataclass
class SweepRow:
    field: str
    level: float
    mode: str  # deploy-only | in-the-loop
    error_mean: float
    error_std: float
    errors: list[float]


def deployed_errors(trainer: Trainer, model: DeviceModel, x, y, realisations: int = 5, seed: int = 0) -> list[float]:
    """Error on (x, y) of a trained circuit's conductances programmed into ``realisations``
    fresh realisations of ``model`` (train ideal, deploy on devices); the circuit is left as it
    was (its conductances and its own devices)."""
    circuit = trainer.model
    if not isinstance(circuit, AnalogCircuit):
        raise ValueError("device models apply to circuits only (model.kind = 'circuit')")
    trained = {k: p.detach().clone() for k, p in circuit.trainable().items()}
    own = circuit.devices
    try:
        errors = []
        for r in range(realisations):
            circuit.attach_devices(model, seed + r)
            errors.append(trainer.error(x, y))
        return errors
    finally:
        circuit.load_trainable(trained)
        circuit.devices = own


def parse_vary(items: list[str]) -> dict[str, list[float]]:
    """``["read_noise=0,0.01,0.03", ...]`` -> {"read_noise": [0, 0.01, 0.03], ...}."""
    out = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values.strip():
            raise ValueError(f"--vary wants FIELD=v1,v2,..., not {item!r}")
        try:
            out[key.strip()] = [float(v) for v in values.split(",")]
        except ValueError:
            raise ValueError(f"--vary {item!r}: levels must be numbers") from None
    return out


def _as_field(model: DeviceModel, field: str, level: float):
    """A level as the field's type (levels and bits are integers)."""
    return int(level) if isinstance(getattr(model, field), int) and not isinstance(getattr(model, field), bool) else level


def run_sweep(checkpoint: str | Path, vary: dict[str, list[float]], *, preset: str = "ideal", realisations: int = 5,
              loop_epochs: int = 1, loop_realisations: int | None = None, train_subset: int | None = None, test_subset: int | None = None,
              seed: int = 0, progress=None, device: str = "cpu") -> list[SweepRow]:
    """One row per (field, level, mode). ``preset`` is the base the varied field replaces;
    ``loop_epochs=0`` skips in-the-loop training, which uses ``loop_realisations`` devices
    (default: ``realisations``)."""
    base = DeviceModel.build(preset)
    models = {(f, lv): DeviceModel.build(preset, **{f: _as_field(base, f, lv)}) for f, levels in vary.items()
              for lv in levels}  # validate everything before spending time
    ref = load_checkpoint(checkpoint, device=device)
    ref.out = None
    d = ref.data
    n = len(d.y_test) if test_subset is None else min(test_subset, len(d.y_test))
    x, y = d.x_test[:n], d.y_test[:n]
    rows = []
    for (field, level), model in models.items():
        errors = deployed_errors(ref, model, x, y, realisations, seed=seed)
        rows.append(SweepRow(field, level, "deploy-only", float(np.mean(errors)), float(np.std(errors)), errors))
        if progress:
            progress(rows[-1])
        if loop_epochs <= 0:
            continue
        errors = []
        for r in range(realisations if loop_realisations is None else loop_realisations):
            tuned = load_checkpoint(checkpoint, device=device, data=d)
            tuned.out = None
            tuned.cfg.data.train_subset = train_subset
            tuned.model.attach_devices(model, seed + r)
            tuned.fit(epochs=tuned.epoch + loop_epochs, progress=False)
            errors.append(tuned.error(x, y))
        rows.append(SweepRow(field, level, "in-the-loop", float(np.mean(errors)), float(np.std(errors)), errors))
        if progress:
            progress(rows[-1])
    return rows


def write_sweep(rows: list[SweepRow], out: Path, meta: dict) -> dict[str, Path]:
    """sweep.csv, sweep.json, sweep.md (a table) and sweep.png (error vs level per field), each
    written atomically."""
    paths = {k: out / f"sweep.{k}" for k in ("csv", "json", "md", "png")}

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["field", "level", "mode", "error_mean", "error_std", "n_realisations"])
            for r in rows:
                w.writerow([r.field, r.level, r.mode, f"{r.error_mean:.5f}", f"{r.error_std:.5f}", len(r.errors)])

    atomic_write(paths["csv"], write_csv)
    write_text(paths["json"], json.dumps(dict(meta=meta, rows=[r.__dict__ for r in rows]), indent=1))
    lines = ["| non-ideality | level | deploy-only error (%) | in-the-loop error (%) |", "|---|---|---|---|"]
    for field, level in dict.fromkeys((r.field, r.level) for r in rows):
        cell = {r.mode: f"{100 * r.error_mean:.2f} ± {100 * r.error_std:.2f}" for r in rows
                if (r.field, r.level) == (field, level)}
        lines.append(f"| {field} | {level:g} | {cell.get('deploy-only', '—')} | {cell.get('in-the-loop', '—')} |")
    write_text(paths["md"], "\n".join(lines) + "\n")
    save(sweep_plot(rows), paths["png"])
    return paths

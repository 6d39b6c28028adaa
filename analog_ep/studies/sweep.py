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
from typing import Callable

import numpy as np

from ..devices import DeviceModel
from ..models import AnalogCircuit
from ..train import Config, Trainer, load_checkpoint, read_checkpoint
from ..train.files import atomic_write, write_text
from ..train.progress import progress_bar
from .plots import save, sweep_plot


@dataclass
class SweepRow:
    field: str
    level: float
    mode: str  # deploy-only | in-the-loop
    error_mean: float
    error_std: float
    errors: list[float]


def circuit_of(trainer: Trainer) -> AnalogCircuit:
    """The trained model as a circuit; ValueError for a seed model, which has no netlist, SPICE
    check or device model."""
    if not isinstance(trainer.model, AnalogCircuit):
        raise ValueError(f"a {trainer.cfg.model.kind!r} model is not a circuit: it has no netlist, SPICE check "
                         "or device model")
    return trainer.model


def deployed_errors(trainer: Trainer, model: DeviceModel, x, y, realisations: int = 5, seed: int = 0,
                    on_batch: Callable[[int], None] | None = None) -> list[float]:
    """Error on (x, y) of a trained circuit's conductances programmed into ``realisations``
    fresh realisations of ``model`` (seeds ``seed``, ``seed + 1``, ...; train ideal, deploy on
    devices), each programmed from the trained values; the circuit is left as it was (its
    conductances and its own devices). ``on_batch``: as in :meth:`Trainer.error`."""
    circuit = circuit_of(trainer)
    trained = {k: p.detach().clone() for k, p in circuit.trainable().items()}
    own = circuit.devices
    try:
        errors = []
        for r in range(realisations):
            circuit.load_trainable(trained)  # programming writes the parameters: start each from the trained values
            circuit.attach_devices(model, seed + r)
            errors.append(trainer.error(x, y, on_batch=on_batch))
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


def fine_tune(checkpoint: str | Path, *, preset: str = "ideal", settings: dict | None = None, seed: int = 0,
              epochs: int = 1, train_subset: int | None = None, train: dict | None = None, data=None,
              device: str = "cpu") -> Trainer:
    """In-the-loop fine-tuning: a new run of the checkpoint's config starting from its
    conductances (``[train] init_from``), programmed into a realisation (``seed``) of the
    device ``preset`` with ``settings`` replacing its fields, trained ``epochs`` epochs on the
    first ``train_subset`` training images; ``train`` replaces ``[train]`` settings (e.g. the
    estimator and β), checked as a config file's; the device table replaces the checkpoint's.
    Returns the trainer, writing nothing."""
    raw = Config.from_stored(read_checkpoint(checkpoint)[1]["config"]).to_dict()
    raw["device"] = dict(preset=preset, in_the_loop=True, seed=seed, **(settings or {}))
    cfg = Config.from_dict(raw).updated(data=dict(train_subset=train_subset),
                                        train=dict(epochs=epochs, init_from=str(checkpoint), **(train or {})))
    trainer = Trainer(cfg, device=device, data=data)
    trainer.fit(progress=False, loggers=())
    return trainer


def run_sweep(checkpoint: str | Path, vary: dict[str, list[float]], *, preset: str = "ideal", realisations: int = 5,
              loop_epochs: int = 1, loop_realisations: int | None = None, train_subset: int | None = None,
              test_subset: int | None = None, seed: int = 0, settings: dict | None = None, train: dict | None = None,
              on_row: Callable[[SweepRow], None] | None = None, progress: bool = False,
              device: str = "cpu") -> list[SweepRow]:
    """One row per (field, level, mode). ``preset`` with ``settings`` (DeviceModel fields) is
    the base the varied field replaces; ``loop_epochs=0`` skips in-the-loop training
    (:func:`fine_tune`, with ``train`` replacing the checkpoint's ``[train]`` settings), which
    uses ``loop_realisations`` devices (default: ``realisations``). ``on_row`` is called with
    each row as it is done; ``progress``: a bar over the realisations (each evaluated, or
    fine-tuned and evaluated) on a terminal."""
    settings = dict(settings or {})
    base = DeviceModel.build(preset, **settings)
    fields = {(f, lv): {**settings, f: _as_field(base, f, lv)} for f, levels in vary.items() for lv in levels}
    models = {key: DeviceModel.build(preset, **kw) for key, kw in fields.items()}  # validate everything before spending time
    ref = load_checkpoint(checkpoint, device=device)
    ref.out = None
    d = ref.data
    n = len(d.y_test) if test_subset is None else min(test_subset, len(d.y_test))
    x, y = d.x_test[:n], d.y_test[:n]
    n_loop = (realisations if loop_realisations is None else loop_realisations) if loop_epochs > 0 else 0
    if n_loop:
        ref.cfg.updated(train=dict(train or {}))  # a bad [train] setting fails here, before any work
    rows = []

    def add(row: SweepRow) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    with progress_bar(None, "sweep", total=len(models) * (realisations + n_loop), show=progress) as bar:
        for (field, level), model in models.items():
            errors = []
            for r in range(realisations):
                bar.set_postfix_str(f"{field}={level:g} deploy-only {r + 1}/{realisations}")
                errors += deployed_errors(ref, model, x, y, 1, seed=seed + r)
                bar.update(1)
            add(SweepRow(field, level, "deploy-only", float(np.mean(errors)), float(np.std(errors)), errors))
            if n_loop == 0:
                continue
            errors = []
            for r in range(n_loop):
                bar.set_postfix_str(f"{field}={level:g} in-the-loop {r + 1}/{n_loop}")
                tuned = fine_tune(checkpoint, preset=preset, settings=fields[field, level], seed=seed + r,
                                  epochs=loop_epochs, train_subset=train_subset, train=train, data=d, device=device)
                errors.append(tuned.error(x, y))
                bar.update(1)
            add(SweepRow(field, level, "in-the-loop", float(np.mean(errors)), float(np.std(errors)), errors))
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

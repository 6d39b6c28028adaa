"""Evaluating a trained checkpoint: test error in the emulator (on its own devices when trained
in the loop, or deployed on a device model), and the same digits through ngspice."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import load_dataset
from ..models import AnalogCircuit
from ..train import load_checkpoint
from ..train.config import DeviceConfig
from ..train.progress import progress_bar
from .sweep import circuit_of, deployed_errors
from .verify import spice_check


def evaluate_checkpoint(checkpoint: str | Path, *, dataset: str | None = None, spice: int = 0, device: str = "cpu",
                        deploy_preset: str | None = None, deploy_settings: dict | None = None,
                        realisations: int = 5, progress: bool = False) -> dict:
    """Test error of a checkpoint, as a JSON-ready dict. ``deploy_preset``/``deploy_settings``:
    program the trained conductances into ``realisations`` realisations of that device model
    (the checkpoint's ``[device]`` preset, settings and seed, replaced by those given; mean and
    spread);
    a circuit trained in the loop with noisy reads is evaluated ``realisations`` times on its
    own devices. ``spice``: run the first N test digits through ngspice (Norton-folded decks;
    all of them if N exceeds the test set, with a line in ``notes``). ``progress``: bars over
    the test images and the ngspice runs, on a terminal."""
    if realisations < 1:
        raise ValueError(f"realisations: expected an integer >= 1, got {realisations}")
    if spice < 0:
        raise ValueError(f"spice: expected a number of test images >= 0, got {spice}")
    trainer = load_checkpoint(checkpoint, device=device, data=None if dataset is None else load_dataset(dataset))
    d, model = trainer.data, trainer.model
    dev = trainer.cfg.device
    deploy = None
    if deploy_preset is not None or deploy_settings:
        preset, settings = deploy_preset or dev.preset, {**dev.settings, **(deploy_settings or {})}
        deploy = DeviceConfig(preset=preset, settings=settings).model()
    if deploy is not None or spice:
        circuit_of(trainer)  # refuses a seed model: it has no netlist or device model
    circuit = model if isinstance(model, AnalogCircuit) else None
    notes = []
    repeats = realisations if deploy is not None or (
        circuit is not None and circuit.devices is not None and circuit.devices.noisy_reads) else 1
    with progress_bar(None, f"{d.name} test images", total=repeats * len(d.y_test), show=progress) as bar:
        if deploy is not None:
            errors = deployed_errors(trainer, deploy, d.x_test, d.y_test, realisations, seed=dev.seed, on_batch=bar.update)
        else:
            errors = [trainer.error(d.x_test, d.y_test, on_batch=bar.update) for _ in range(repeats)]
    result = dict(checkpoint=str(checkpoint), dataset=d.name, test_error=float(np.mean(errors)), n=len(d.y_test),
                  epoch=trainer.epoch, notes=notes)
    if deploy is not None or (circuit is not None and circuit.devices is not None):
        result.update(test_error_std=float(np.std(errors)), test_errors=errors,
                      device_model=(deploy or circuit.devices.model).changed(),
                      device_preset=preset if deploy is not None else dev.preset,
                      device_settings=settings if deploy is not None else dev.settings,
                      deployment="deploy-only" if deploy is not None else "in-the-loop")
    if spice > 0:
        n = min(spice, len(d.y_test))
        if n < spice:
            notes.append(f"asked for {spice} SPICE checks; the {d.name} test set has {n} images: checking all {n}")
        with progress_bar(None, "ngspice", total=n, show=progress) as bar:
            chk = spice_check(circuit.to_circuit(), circuit.volts(d.x_test[:n]).double().cpu().numpy(), d.y_test[:n],
                              on_done=lambda op: bar.update(1))
        result.update(spice_n=chk.n, spice_agree=chk.agree, max_abs_dv=chk.max_abs_dv,
                      spice_seconds=chk.spice_seconds, spice_errors=chk.spice_errors)
    return result

"""What a finished training run leaves in its directory besides the checkpoint and metrics:
the test error (``test.json``), the learning curve, and for circuits the conductance histogram
and the trained netlist (``trained.cir``), each written atomically."""
from __future__ import annotations

import json
from pathlib import Path

from ..models import AnalogCircuit
from ..spice.netlist import save_deck
from ..train import Trainer
from ..train.files import atomic_write, write_text
from .plots import conductance_histogram, learning_curve, save


def finish_run(trainer: Trainer, out: Path) -> dict:
    """Evaluate on the test set and write the run's artefacts into ``out``; returns
    ``{"test_error": ..., "n": ..., "wrote": [paths]}``. (Every rank of a distributed run must
    call it, as the test error is computed on shards; only rank 0 writes.)"""
    d = trainer.data
    test_error = trainer.error(d.x_test, d.y_test)
    result = dict(test_error=test_error, n=len(d.y_test), wrote=[])
    if not trainer.dist.is_main:
        return result
    wrote = [write_text(out / "test.json", json.dumps(dict(test_error=test_error, n=len(d.y_test))))]
    if trainer.history:
        wrote.append(save(learning_curve(trainer.history), out / "learning_curve.png"))
    if isinstance(trainer.model, AnalogCircuit):
        wrote.append(save(conductance_histogram(trainer.model.trainable(), trainer.model.g_max),
                          out / "conductances.png"))
        circuit = trainer.model.to_circuit()
        wrote.append(atomic_write(out / "trained.cir", lambda tmp: save_deck(circuit, tmp)))
    result["wrote"] = [str(p) for p in wrote]
    return result

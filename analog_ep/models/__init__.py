"""Trainable EP models behind one interface (:class:`EPModel`): the analog circuit as a
``torch.nn.Module`` (:class:`AnalogCircuit`) and adapters for the seed papers' abstract models
(continuous Hopfield EP, discrete-time EB/P/P-conv/VF, C-EP), with the GDU and EP≡RBP checks.

May import: ``circuit``, ``emulator``, ``devices`` (and torch). Never ``train``, ``studies`` or
``cli``.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .base import EPModel, EPStep
from .circuit import AnalogCircuit
from .seed import DiscreteEP, HopfieldEP, SeedModel, seed_model_from_config


def model_from_config(raw: Mapping, device: str | torch.device = "cpu") -> EPModel:
    """The model a training config describes (a plain dict of its tables, as a checkpoint
    stores it): the circuit (``model.kind = "circuit"``, the default) or a seed model."""
    if raw.get("model", {}).get("kind", "circuit") == "circuit":
        return AnalogCircuit.from_config(raw, device=device)
    return seed_model_from_config(raw, device=device)


__all__ = ["EPModel", "EPStep", "AnalogCircuit", "SeedModel", "HopfieldEP", "DiscreteEP", "model_from_config"]

"""The one interface every trainable EP model implements, so that one trainer (and a user's own
PyTorch loop) can train any of them: the analog circuit (:class:`~analog_ep.models.circuit.AnalogCircuit`)
and the seed papers' abstract models (:mod:`analog_ep.models.seed`).

A model owns its parameters (a dict of tensors by key), its free phase and its EP estimate
(through :func:`analog_ep.emulator.nudging.ep_estimate`, the single statement of EP's formula),
its prediction, and what happens after an optimiser proposes new values (projection to bounds,
device writes).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch


@dataclass
class EPStep:
    """What one EP step on a batch measured (its gradients are in the parameters' ``.grad``)."""

    loss: torch.Tensor  # (B,) cost ½‖output − target‖² of each sample at the free state (V² for circuits)
    outputs: torch.Tensor  # (B, n_out) free-phase outputs (volts for circuits)
    iterations: int  # free-phase iterations (solver sweeps, or time steps)
    measurement_time: float = 0.0  # s the step takes on the hardware's clock (settles, reads), 0 if not modelled


class EPModel(ABC):
    """What the trainer needs of a model. Subclasses set ``n_in``, ``n_out``, ``dtype``,
    ``device``, ``target`` (the output targets (wrong class, right class)) and ``beta``/``mode``
    (the default nudge: strength and "positive" | "centered" | "random")."""

    n_in: int
    n_out: int
    dtype: torch.dtype
    device: torch.device
    target: tuple[float, float]
    beta: float
    mode: str
    continual: bool = False  # moves its weights during the nudged phase (C-EP): not data-parallel

    @abstractmethod
    def trainable(self) -> dict[str, torch.Tensor]:
        """The trainable tensors by key, in a fixed order (the optimiser's parameter groups)."""

    @abstractmethod
    def layer_of(self, key: str) -> int:
        """Weight layer of a trainable key, 1-based from the input side (per-layer learning rates)."""

    @abstractmethod
    def ep_step(self, x, y, *, beta: float | None = None, mode: str | None = None, sign: torch.Tensor | None = None,
                idx: torch.Tensor | None = None, generator: torch.Generator | None = None,
                optimizer: torch.optim.Optimizer | None = None) -> EPStep:
        """Free phase, nudged phase(s) and EP's estimate of d(mean cost)/dθ, accumulated into
        each trainable tensor's ``.grad``. ``y``: class labels (B,) or targets (B, n_out);
        ``sign``: the per-sample ±1 of random nudging; ``idx``: the samples' indices in the
        training set (persistent particles); ``generator``: for any random draw of the step;
        ``optimizer``: only for models that move their weights during the nudged phase (C-EP)."""

    @abstractmethod
    def predict(self, x) -> torch.Tensor:
        """Free-phase outputs (B, n_out) for a batch of inputs, as inference sees them."""

    def project(self) -> None:
        """Bring the parameters back into their allowed range after an update (default: none)."""

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Step the optimiser on the gradients ``ep_step`` left, then project: what one update
        does (models with devices override it: the optimiser proposes, the devices dispose)."""
        optimizer.step()
        self.project()

    def load_trainable(self, params: Mapping[str, torch.Tensor]) -> None:
        """Copy trained values into the trainable tensors by key (any floating dtype: a
        float16-packed checkpoint is cast up), after checking that ``params`` has exactly this
        model's keys, each a finite tensor of its shape; ValueError naming the first misfit."""
        mine = self.trainable()
        if not isinstance(params, Mapping):
            raise ValueError(f"parameters: expected a table of tensors, got {type(params).__name__}")
        missing, extra = [k for k in mine if k not in params], [k for k in params if k not in mine]
        if missing or extra:
            raise ValueError("the parameters do not fit the model: " + "; ".join(
                f"{what} {', '.join(map(str, keys))}" for what, keys in (("missing", missing), ("unexpected", extra))
                if keys))
        for k, p in mine.items():
            v = params[k]
            if not torch.is_tensor(v) or not v.is_floating_point():
                raise ValueError(f"parameter {k}: expected a floating-point tensor, got {type(v).__name__}")
            if v.shape != p.shape:
                raise ValueError(f"parameter {k} has shape {tuple(v.shape)}; the model's is {tuple(p.shape)}")
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"parameter {k} has non-finite values (NaN or inf)")
        with torch.no_grad():
            for k, p in mine.items():
                p.copy_(params[k].to(p.device, p.dtype))

    def start_from(self, params: Mapping[str, torch.Tensor]) -> None:
        """Begin a new run from trained values (fine-tuning): :meth:`load_trainable`, which
        models with hardware extend to write the values into it."""
        self.load_trainable(params)

    def extra_state(self) -> dict:
        """State beyond the parameters that exact resume needs (e.g. device RNG)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore :meth:`extra_state`."""

    def summary(self) -> str:
        """One line describing the model."""
        return type(self).__name__

    def statistics(self) -> dict[str, float]:
        """Scalars describing the model's present state by name, for training logs (e.g.
        TensorBoard, once per epoch); names and units are the model's (default: none)."""
        return {}

    # ------------------------------------------------------------------ shared helpers
    def as_input(self, x) -> torch.Tensor:
        """A batch of inputs (numpy or torch, any trailing shape, e.g. (B, 1, 28, 28) images) as
        (B, n_in) rows on the model's device and dtype."""
        x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
        x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
        if x.shape[1] != self.n_in:
            raise ValueError(f"the model has {self.n_in} inputs; got rows of {x.shape[1]}")
        return x.to(self.device, self.dtype)

    def targets(self, y) -> torch.Tensor:
        """Targets (B, n_out): class labels (B,) become ``target[1]`` for the right class and
        ``target[0]`` elsewhere; a (B, n_out) array is taken as the targets themselves."""
        y = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y)
        if y.ndim == 2:
            if y.shape[1] != self.n_out:
                raise ValueError(f"targets need {self.n_out} columns, got {y.shape[1]}")
            return y.to(self.device, self.dtype)
        low, high = self.target
        t = torch.full((y.shape[0], self.n_out), low, dtype=self.dtype)
        t[torch.arange(y.shape[0]), y.long()] = high
        return t.to(self.device)

    def accumulate(self, grads: dict[str, torch.Tensor]) -> None:
        """Add gradients to the trainable tensors' ``.grad`` (as autograd's backward would)."""
        params = self.trainable()
        for k, g in grads.items():
            p = params[k]
            p.grad = g if p.grad is None else p.grad + g

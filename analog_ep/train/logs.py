"""What a training run records per epoch: its :class:`Metrics`, the hook the trainer calls after
every epoch (:class:`EpochLogger`) and that hook's TensorBoard implementation
(:class:`TensorBoardLogger`, which needs the ``[tensorboard]`` extra)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol

import torch

EXTRA_HINT = "pip install 'analog-ep[tensorboard]'"


@dataclass
class Metrics:
    epoch: int
    train_loss: float  # mean cost ½‖output − target‖² over the epoch's batches (V² for circuits)
    train_error: float  # fraction of training examples misclassified during the epoch
    val_error: float  # fraction of validation examples misclassified after the epoch
    seconds: float  # wall-clock time of the epoch, s
    mean_sweeps: float  # free-phase iterations per step (solver sweeps, or time steps)
    measurement_time: float = 0.0  # s per EP step on the hardware's clock (devices' settles and reads)


class EpochLogger(Protocol):
    """What :meth:`~analog_ep.train.Trainer.fit` calls: ``log_epoch`` once per finished epoch
    (on the main rank), ``close`` when fit returns or stops."""

    def log_epoch(self, metrics: Metrics, params: Mapping[str, torch.Tensor], scalars: Mapping[str, float]) -> None:
        """Record one epoch: its metrics, the model's trainable tensors by key (``model.trainable()``)
        and further scalars by tag (β, learning rates, the model's own statistics)."""

    def close(self) -> None:
        """Write out what is buffered and release the files."""


class MissingDependency(ImportError):
    """An optional feature's package is not installed (the message says which extra brings it)."""


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, imported on first use; MissingDependency (one
    line naming the ``[tensorboard]`` extra) if the tensorboard package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's module imports the tensorboard package
        raise MissingDependency(f"TensorBoard logging needs the tensorboard package: {EXTRA_HINT}") from None
    return SummaryWriter


def tag(key: str) -> str:
    """A parameter key as a TensorBoard tag: ``"g:w1p"`` -> ``"g/w1p"`` (``:`` nests, any other
    character TensorBoard refuses becomes ``_``)."""
    return re.sub(r"[^-/\w.]", "_", key.replace(":", "/"))


class TensorBoardLogger:
    """TensorBoard event files in ``log_dir``, one record per epoch (step = the 1-based epoch):

    * scalars ``train/loss`` (mean cost, V² for circuits), ``train/error`` and ``val/error``
      (fractions), ``time/epoch_s`` (wall clock, s), ``ep/mean_settle_sweeps`` (free-phase
      iterations per step), ``ep/measurement_time_s`` (s per EP step on the hardware's clock),
      and every scalar the trainer passes (``ep/beta``, ``lr/<key>``, ``model/<statistic>``);
    * a histogram ``params/<key>`` of each trainable tensor (conductances in S for circuits).

    Each epoch is flushed to disk as it is logged."""

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)
        self.writer = summary_writer_class()(log_dir=str(self.log_dir))

    def log_epoch(self, metrics: Metrics, params: Mapping[str, torch.Tensor], scalars: Mapping[str, float]) -> None:
        step = metrics.epoch
        for name, value in (("train/loss", metrics.train_loss), ("train/error", metrics.train_error),
                            ("val/error", metrics.val_error), ("time/epoch_s", metrics.seconds),
                            ("ep/mean_settle_sweeps", metrics.mean_sweeps),
                            ("ep/measurement_time_s", metrics.measurement_time), *scalars.items()):
            self.writer.add_scalar(tag(name), float(value), step)
        for key, p in params.items():
            self.writer.add_histogram(f"params/{tag(key)}", p.detach().double().cpu(), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

"""EP training of any :class:`~analog_ep.models.EPModel`: TOML configs, the trainer (optimiser,
schedule, loop, metrics, checkpoints that resume exactly), data-parallel ranks, and the run
directory's files (atomic writes, one run at a time).

May import: ``circuit``, ``data``, ``emulator``, ``devices``, ``models``. Never ``studies`` or ``cli``.
"""
from .config import Config
from .trainer import CheckpointError, Trainer, TrainingError, load_checkpoint, read_checkpoint

__all__ = ["Config", "Trainer", "TrainingError", "CheckpointError", "load_checkpoint", "read_checkpoint"]

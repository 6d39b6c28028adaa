"""EP training of any :class:`~analog_ep.models.EPModel`: TOML configs, the trainer (optimiser,
schedule, loop, metrics, checkpoints that resume exactly), data-parallel ranks and plots.

May import: ``circuit``, ``data``, ``emulator``, ``devices``, ``models``. Never ``studies`` or ``cli``.
"""
from .config import Config
from .trainer import Trainer, TrainingError, load_checkpoint

__all__ = ["Config", "Trainer", "TrainingError", "load_checkpoint"]

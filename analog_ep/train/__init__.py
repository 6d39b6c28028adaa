"""EP training of analog circuits in the emulator: configs, the trainer, checkpoints, plots,
and verification of trained circuits in ngspice."""
from .config import Config
from .trainer import Trainer, TrainingError, build_circuit, load_checkpoint

__all__ = ["Config", "Trainer", "TrainingError", "build_circuit", "load_checkpoint"]

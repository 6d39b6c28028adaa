"""Device non-idealities for the emulator: a model (presets from published statistics) and its
realisations on a circuit (programming, in-the-loop updates, noisy reads, measurement).

May import: ``circuit``, ``emulator``.
"""
from .array import DeviceArray
from .model import IDEAL, PRESETS, DeviceModel

__all__ = ["DeviceArray", "DeviceModel", "IDEAL", "PRESETS"]

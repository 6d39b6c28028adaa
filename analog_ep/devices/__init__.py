"""Device non-idealities for the emulator: a model (presets from published statistics) and its
realisations on a circuit (programming, in-the-loop updates, noisy reads, measurement), read
noise as a process in time (noise.py) and the read-out with the EP step's time axis (readout.py).

May import: ``circuit``, ``emulator``.
"""
from .array import DeviceArray
from .model import IDEAL, PRESETS, DeviceModel
from .noise import NoiseProcess, NoiseSpec
from .readout import Phase, Readout, StepTimeline, ep_timeline, quantise, rc_settle_time

__all__ = ["DeviceArray", "DeviceModel", "IDEAL", "PRESETS", "NoiseProcess", "NoiseSpec", "Phase", "Readout",
           "StepTimeline", "ep_timeline", "quantise", "rc_settle_time"]

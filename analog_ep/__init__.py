"""analog-ep: symmetric neural networks as analog circuits, trained with Equilibrium Propagation.

The Circuit IR (:mod:`analog_ep.circuit`) is the single source of truth read by the SPICE
backend (:mod:`analog_ep.spice`) and the PyTorch emulator (:mod:`analog_ep.emulator`);
:class:`AnalogCircuit` (:mod:`analog_ep.models`) is a circuit as a ``torch.nn.Module``.

Layers, each importing only the ones above it in this list: ``circuit`` (no torch), ``spice``,
``data``, ``emulator``, ``devices``, ``models``, ``train``, ``studies``, ``cli``.
"""
from .circuit import Circuit, CircuitError, DiodeModel, Role, from_graph, layered

__version__ = "0.1.0"
__all__ = ["AnalogCircuit", "Circuit", "CircuitError", "DiodeModel", "Role", "from_graph", "layered", "__version__"]


def __getattr__(name: str):
    """``analog_ep.AnalogCircuit`` imports torch on first use only (the SPICE side does not need it)."""
    if name == "AnalogCircuit":
        from .models import AnalogCircuit

        return AnalogCircuit
    raise AttributeError(f"module 'analog_ep' has no attribute {name!r}")

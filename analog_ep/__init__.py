"""analog-ep: symmetric neural networks as analog circuits, trained with Equilibrium Propagation.

The Circuit IR (:mod:`analog_ep.circuit`) is the single source of truth read by the SPICE
backend (:mod:`analog_ep.spice`) and the PyTorch emulator (:mod:`analog_ep.emulator`).
"""
from .circuit import Circuit, CircuitError, DiodeModel, Role, from_graph, layered

__version__ = "0.1.0"
__all__ = ["Circuit", "CircuitError", "DiodeModel", "Role", "from_graph", "layered", "__version__"]

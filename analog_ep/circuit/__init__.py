"""The Circuit IR (nodes, element groups, roles; immutable, numpy only), the builders that make
Circuits from layer specs and networkx graphs, rewrites (series resistance, Norton folding),
physical constants and SI numbers with scale suffixes (``units``).

May import: numpy, networkx. No other analog_ep package and no torch.
"""
from .builder import DiodeModel, from_graph, layered, parse_layers
from .ir import (GROUND, Amplifiers, Circuit, CircuitError, Conductances, CurrentSources, Diodes, Nudges, Role,
                 VoltageSources, is_ground_name)

__all__ = ["DiodeModel", "from_graph", "layered", "parse_layers", "GROUND", "Amplifiers", "Circuit", "CircuitError",
           "Conductances", "CurrentSources", "Diodes", "Nudges", "Role", "VoltageSources", "is_ground_name"]

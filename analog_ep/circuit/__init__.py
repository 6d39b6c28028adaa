"""The Circuit IR and the builders that make Circuits from layer specs and graphs."""
from .builder import DiodeModel, from_graph, layered, parse_layers
from .ir import (GROUND, Amplifiers, Circuit, CircuitError, Conductances, CurrentSources, Diodes, Nudges, Role,
                 VoltageSources)

__all__ = ["DiodeModel", "from_graph", "layered", "parse_layers", "GROUND", "Amplifiers", "Circuit", "CircuitError",
           "Conductances", "CurrentSources", "Diodes", "Nudges", "Role", "VoltageSources"]

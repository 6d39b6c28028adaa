"""SPICE numbers, re-exported from :mod:`analog_ep.circuit.units` (which the circuit layer needs
for diode specs and may not import from here)."""
from ..circuit.units import format_value, parse_value

__all__ = ["format_value", "parse_value"]

"""SPICE side: deck export, validated deck import, the ngspice runner (``ngspice -b`` in a
subprocess) and the PySpice bridge (SI numbers: ``circuit.units``, re-exported as ``units``).

May import: ``circuit``. Never torch-based layers.
"""
from .netlist import DEFAULT_OPTIONS, save_deck, write_deck
from .parser import NetlistError, deck_notes, parse_deck, read_deck
from .ngspice import OperatingPoint, SpiceError, run_op

__all__ = ["DEFAULT_OPTIONS", "save_deck", "write_deck", "NetlistError", "deck_notes", "parse_deck", "read_deck",
           "OperatingPoint", "SpiceError", "run_op"]

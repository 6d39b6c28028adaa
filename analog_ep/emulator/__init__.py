"""The PyTorch emulator: compiled circuits (tensors of a Circuit), their energy (co-content),
operators, steady-state solvers (a registry) with their elementwise kernels compiled on request
(``fusion``), the settle driver, EP's estimate and the exact equilibrium gradient.

May import: ``circuit``. Never ``spice`` (the emulator runs without PySpice/ngspice).
"""
from .compiled import Compiled, compile_circuit
from .energy import cost, energy
from .settle import ConvergenceError, SettleResult, settle

__all__ = ["Compiled", "compile_circuit", "cost", "energy", "ConvergenceError", "SettleResult", "settle"]

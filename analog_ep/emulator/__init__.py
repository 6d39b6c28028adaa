"""The PyTorch emulator: compiled circuits, their energy, steady-state solvers and EP."""
from .compiled import Compiled, compile_circuit
from .energy import cost, energy
from .settle import ConvergenceError, SettleResult, settle

__all__ = ["Compiled", "compile_circuit", "cost", "energy", "ConvergenceError", "SettleResult", "settle"]

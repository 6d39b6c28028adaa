"""Fused kernels: the settle's elementwise hot spots run through ``torch.compile``, with an eager
fallback.

A diode clamp's scalar Newton step (:mod:`~analog_ep.emulator.solvers`) is some forty
elementwise tensor operations over (batch, diodes per node, nodes); run eagerly, each is a pass
over memory, and for a 1024-node layer at batch 128 these passes, not arithmetic, set the
time. Compiled (inductor: a C++/OpenMP kernel on a CPU, Triton on a GPU), the step is a few
loops over the data, each doing what a dozen operations did. The functions stay plain PyTorch: :class:`Fusable` keeps the eager function
and compiles it the first time a settle asks for ``fused=True``. Where compiling fails (no C++
compiler, an unsupported platform), it warns once and runs eagerly from then on, with the same
results. Fused and eager agree to rounding (float32: a few ulps; the tests bound it), not bit
for bit: the compiled exponential and the fused multiply-adds round differently.

Each kernel is compiled once per dtype, device type and layer shape (the batch size becomes
symbolic once a second one is seen: a training run's last batch and its evaluation batch reuse
the kernel) and memory layout of its inputs (a strided view, such as a colour's columns of the
batch's voltages, is read in place rather than copied).
Compiling costs seconds (inductor caches kernels on disk, so a later process reuses them),
which repays itself over a training run but not over one settle: settles are eager unless
``fused=True`` is asked for (``AnalogCircuit(fused=True)``, ``fused = true`` in a training
config).
"""
from __future__ import annotations

import types
import warnings
from typing import Callable, Generic, ParamSpec, TypeVar

import torch

P = ParamSpec("P")
R = TypeVar("R")


class Fusable(Generic[P, R]):
    """A function of tensors that runs eagerly, or compiled when called with ``fused=True``."""

    def __init__(self, fn: Callable[P, R]):
        self.eager = fn
        self.__doc__ = fn.__doc__
        self._compiled: dict[tuple, Callable[P, R]] = {}  # by the inputs' dtype, device type and shapes
        self.broken: str | None = None  # why compiling failed, once it has

    @property
    def variants(self) -> int:
        """How many compiled copies exist: one per dtype, device type, layer shape and layout."""
        return len(self._compiled)

    def __call__(self, *args: P.args, fused: bool = False) -> R:
        if not fused or self.broken is not None:
            return self.eager(*args)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        key = (tensors[0].dtype, tensors[0].device.type, tuple((t.shape[1:], t.stride()) for t in tensors))
        if key not in self._compiled:
            # a copy of the function's code per dtype, device, layer shape and memory layout,
            # each compiled for its own sizes with the batch left free: torch.compile keeps at
            # most recompile_limit (8) variants per code object, and a kernel compiled for
            # symbolic layer widths takes its loop schedule from the first width it saw (a
            # 10-node output layer's made the 1024-node hidden layer's step 1.6x slower). Each
            # copy has a name of its own: torch.compile remembers which sizes varied by file,
            # line and name, so copies of one name would share it (the hidden layer's copy was
            # compiled for a symbolic width once the output layer's had been seen). The
            # layouts (a colour's columns of a batch, a conductance broadcast over it) are read
            # as they are: their strides do not depend on the batch size
            fn = self.eager
            name = f"{fn.__name__}_{len(self._compiled)}"
            code = types.FunctionType(fn.__code__.replace(co_name=name, co_qualname=name), fn.__globals__,
                                      name, fn.__defaults__, fn.__closure__)
            self._compiled[key] = torch.compile(code)
        try:
            return self._compiled[key](*args)
        except torch._dynamo.exc.BackendCompilerFailed as e:  # e.g. no C++ compiler (InductorError)
            self.broken = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            warnings.warn(f"fused kernel {self.eager.__name__}: torch.compile failed ({self.broken}); "
                          "running it eagerly", RuntimeWarning, stacklevel=2)
            return self.eager(*args)


def fusable(fn: Callable[P, R]) -> Fusable[P, R]:
    """Decorator: ``fn`` as a :class:`Fusable`."""
    return Fusable(fn)

"""``AnalogCircuit``: a resistive circuit as a ``torch.nn.Module`` trained with EP.

    m = AnalogCircuit(layers="784,100,10", amplifier_gain=4.0, input_voltage=16.0)
    opt = torch.optim.Adam(m.parameters(), lr=2e-7)
    out = m(x)                       # free-phase settle: output node voltages (B, 10), volts
    m.ep_step(x, labels)             # nudged phases; EP's gradient lands in .grad
    opt.step(); m.project()          # conductances back into [g_min, g_max]

The trainable conductances (siemens) are ``nn.Parameter`` s named by their parameter key
(``"g:w1p"``, ...), so ``state_dict()``, optimisers, ``.to()`` and DataLoaders work as with any
module. The compiled circuit (:mod:`analog_ep.emulator`) holds the very same tensors, so
settles always see the present values. Device non-idealities attach as an object
(:meth:`AnalogCircuit.attach_devices`), as aihwkit attaches an RPU config to a layer: from then
on every settle reads through the devices and :meth:`optimizer_step` writes through them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..circuit import Circuit, DiodeModel, layered, parse_layers
from ..circuit.builder import input_pairs
from ..devices import DeviceArray, DeviceModel
from ..devices.array import OK
from ..emulator import Compiled, compile_circuit, settle
from .base import EPModel, EPStep
from .estimators import Estimator, estimate, output_voltages, per_settle_reads

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def diode_from_spec(spec: str | DiodeModel | None) -> DiodeModel | None:
    """A clamp diode from a config string ('IS,N', 'IS,N,RS', 'ideal' or 'none')."""
    if spec is None or isinstance(spec, DiodeModel):
        return spec
    return None if spec.strip().lower() == "none" else DiodeModel.parse(spec)


class AnalogCircuit(nn.Module, EPModel):
    """A circuit of resistors, diodes, sources and amplifiers trained by EP in the emulator.

    Built from a layer spec (``layers="784,100,10"`` with the keywords of
    :func:`analog_ep.circuit.layered`), from a ``circuit`` (any Circuit IR, e.g. from
    :func:`analog_ep.circuit.from_graph` or a parsed deck), or from a checkpoint
    (:meth:`from_checkpoint`).

    Inputs ``x`` of :meth:`forward`/:meth:`ep_step` are data values: each is multiplied by
    ``input_voltage`` (volts per unit; a pixel of 1 → ``input_voltage`` V) and applied as the
    source pair x{i}p = +v, x{i}n = −v. ``beta`` is the nudge conductance (S) from each output to
    its target voltage, ``mode`` the nudging ("positive", "centered", "random"); ``target`` the
    output voltages (wrong class, right class) that class labels map to; conductances are kept in
    [``g_min``, ``g_max``] siemens. ``rtol``/``max_iters`` are the settle tolerance (relative
    voltage error) and sweep limit; ``estimator`` how an EP step reads the devices
    (:mod:`analog_ep.models.estimators`: per-settle EP, CDS, lock-in); ``fused`` runs the settles'
    diode kernels compiled (:mod:`analog_ep.emulator.fusion`: faster over a training run, seconds
    to compile at the first settle of each shape)."""

    def __init__(self, layers: str | Sequence[int] | None = None, *, circuit: Circuit | None = None, seed: int = 0,
                 amplifier_gain: float | None = None, diode: str | DiodeModel | None = DiodeModel(),
                 clamp: tuple[float, float] = (0.0, 1.0), g_init: tuple[float, float] = (1e-7, 1e-5),
                 bias: bool = True, input_voltage: float = 1.0, g_min: float = 0.0, g_max: float = 1e-4,
                 target: tuple[float, float] = (0.0, 1.0), beta: float = 1e-4, mode: str = "centered",
                 rtol: float | None = None, max_iters: int = 200, dtype: torch.dtype | str = torch.float32,
                 device: str | torch.device = "cpu", estimator: Estimator = Estimator(), fused: bool = False):
        super().__init__()
        if (layers is None) == (circuit is None):
            raise ValueError("give exactly one of layers= or circuit=")
        if circuit is None:
            n_in = parse_layers(layers)[0]
            circuit = layered(layers, seed=seed, amplifier_gain=amplifier_gain, diode=diode_from_spec(diode),
                              clamp=tuple(clamp), g_init=tuple(g_init), bias=bias, inputs=np.zeros(n_in))
        if not 0 <= g_min < g_max:
            raise ValueError(f"need 0 <= g_min < g_max, got {g_min}, {g_max}")
        self.circuit = circuit
        self.input_voltage, self.g_min, self.g_max = float(input_voltage), float(g_min), float(g_max)
        self.target, self.beta, self.mode = tuple(target), float(beta), mode
        self.rtol, self.max_iters, self.fused = rtol, int(max_iters), bool(fused)
        self.estimator = estimator
        self.devices: DeviceArray | None = None
        self._compile(DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype, torch.device(device))
        for k in self.cc.trainable:
            self.register_parameter(k, nn.Parameter(self.cc.params[k]))
        self._share_parameters()
        self.n_in = len(self._input_names())
        self.n_out = len(self.cc.outputs)

    # ------------------------------------------------------------------ construction
    def _compile(self, dtype: torch.dtype, device: torch.device) -> None:
        self.cc: Compiled = compile_circuit(self.circuit, dtype=dtype, device=device)
        self.dtype, self.device = dtype, device

    def _share_parameters(self) -> None:
        """Make the compiled circuit read the module's parameters themselves."""
        for k in self.cc.trainable:
            self.cc.params[k] = self._parameters[k]

    def _input_names(self) -> list[str]:
        """Input source nodes: the x{i}p of a layered circuit's x{i}p/x{i}n pairs, i = 0, 1, ..."""
        names = {self.circuit.nodes[n] for n in self.cc.sources}
        plus, minus = input_pairs(len(names))
        n = next((i for i, pq in enumerate(zip(plus, minus)) if not set(pq) <= names), len(plus))
        return plus[:n]

    @classmethod
    def from_config(cls, raw: Mapping, device: str | torch.device = "cpu") -> "AnalogCircuit":
        """The circuit a training config describes (a plain dict with the ``circuit``, ``train``
        and ``device`` tables, as in a checkpoint); devices in the loop are attached."""
        c, t = raw["circuit"], raw["train"]
        m = cls(c["layers"], seed=c["seed"], amplifier_gain=c["amplifier_gain"], diode=c["diode"],
                clamp=tuple(c["clamp"]), g_init=tuple(c["g_init"]), bias=c["bias"], input_voltage=c["input_voltage"],
                g_min=t["g_min"], g_max=t["g_max"], target=tuple(t["target"]), beta=t["beta"], mode=t["nudging"],
                rtol=t["rtol"], max_iters=t["max_iters"], dtype=t["dtype"], device=device,
                estimator=Estimator(t.get("estimator", "ep"), t.get("lockin_periods", 4), t.get("lockin_points", 4),
                                    t.get("update_time", 0.0)), fused=t.get("fused", False))
        dev = raw.get("device", {})
        if dev.get("in_the_loop"):
            m.attach_devices(DeviceModel.build(dev.get("preset", "ideal"), **dev.get("settings", {})), dev.get("seed", 0))
        return m

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> "AnalogCircuit":
        """The trained circuit of a checkpoint file or run directory (loaded with
        ``weights_only=True``), on the devices it was trained on, if any."""
        path = Path(path)
        path = path / "checkpoint.pt" if path.is_dir() else path
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["config"].get("model", {}).get("kind", "circuit") != "circuit":
            raise ValueError(f"{path} holds a {state['config']['model']['kind']!r} model, not a circuit")
        m = cls.from_config(state["config"], device=device)
        m.load_trainable(state["params"])
        return m

    def _apply(self, fn, recurse: bool = True):
        """``.to(device, dtype)``: recompile the circuit's fixed tensors to match the parameters."""
        first = next(iter(self._parameters.values()), None)
        if self.devices is not None and first is not None:
            probe = fn(first.detach())
            if probe.dtype != self.dtype or probe.device != self.device:
                raise ValueError("detach_devices() before moving a circuit to another device or dtype")
        super()._apply(fn, recurse)
        now = next(iter(self._parameters.values()), None)
        if now is not None and (now.dtype != self.dtype or now.device != self.device):
            self._compile(now.dtype, now.device)
            self._share_parameters()
        return self

    # ------------------------------------------------------------------ EPModel
    def trainable(self) -> dict[str, nn.Parameter]:
        return {k: self._parameters[k] for k in self.cc.trainable}

    def layer_of(self, key: str) -> int:
        """Layer (1-based) of a layered circuit's trainable key such as 'g:w2p' or 'g:b1n'."""
        return int(key[3:-1])

    def volts(self, x) -> torch.Tensor:
        """Input voltages (B, n_in) for a batch of inputs: x × input_voltage volts (the one
        place data values become volts)."""
        return self.as_input(x) * self.input_voltage

    def sources(self, x) -> torch.Tensor:
        """Source voltages (B, n_src) for a batch of inputs: x{i}p = +volts, x{i}n = −volts."""
        return self.cc.inputs_to_sources(self.volts(x))

    def _settle_kw(self) -> dict:
        kw = dict(rtol=self.rtol, max_iters=self.max_iters, fused=self.fused)
        return kw if self.devices is None else {**kw, **self.devices.settle_kw()}

    def forward(self, x) -> torch.Tensor:
        """Free-phase settle: output node voltages (B, n_out) in volts, as the read-out measures them."""
        view, measure = per_settle_reads(self.cc, self.devices)
        with torch.no_grad():
            res = settle(view(), self.sources(x), **self._settle_kw())
            return output_voltages(res, measure(res.s))

    def predict(self, x) -> torch.Tensor:
        return self(x)

    def ep_step(self, x, y, *, beta: float | None = None, mode: str | None = None, sign: torch.Tensor | None = None,
                idx: torch.Tensor | None = None, generator: torch.Generator | None = None,
                optimizer: torch.optim.Optimizer | None = None) -> EPStep:
        """Free and nudged settles (through the devices, if attached) and EP's gradient of the
        mean cost, added to the conductances' ``.grad`` (S⁻¹·V², i.e. d(V²)/dS)."""
        u = self.sources(x)
        y = self.targets(y)
        est = estimate(self.cc, self.devices, u, y, self.beta if beta is None else beta, mode=mode or self.mode,
                       estimator=self.estimator, keys=list(self.cc.trainable), settle_kw=self._settle_kw(), sign=sign,
                       generator=generator)
        self.accumulate(est.grads)
        return EPStep(est.loss.detach(), est.outputs.detach(), est.free.iterations, est.measurement_time)

    def project(self) -> None:
        """Conductances back into [g_min, g_max] siemens, as devices keep them."""
        with torch.no_grad():
            for p in self.trainable().values():
                p.clamp_(self.g_min, self.g_max)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Without devices: step and project. With devices: the optimiser proposes each
        conductance change and the devices decide what they do with it (levels, noise,
        asymmetry, faults)."""
        if self.devices is None:
            return super().optimizer_step(optimizer)
        params = self.trainable()
        before = {k: p.detach().clone() for k, p in params.items()}
        optimizer.step()
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(self.devices.update(k, before[k], p))

    def extra_state(self) -> dict:
        """The devices' generator, clock and read-noise process (exact resume in the loop)."""
        return {} if self.devices is None else dict(devices=self.devices.state_dict())

    def load_extra_state(self, state: dict) -> None:
        if self.devices is None:
            return
        if "devices" in state:
            self.devices.load_state_dict(state["devices"])
        elif "device_rng" in state:  # checkpoints before the read-noise process saved the generator alone
            self.devices.load_state_dict(dict(gen=state["device_rng"], time=0.0, noise=None))

    def summary(self) -> str:
        return self.circuit.summary()

    def statistics(self) -> dict[str, float]:
        """The trainable conductances' state: fractions of them at the lower and upper bound
        (``at_g_min``, ``at_g_max``: the devices' bounds when devices are attached, else
        [g_min, g_max]; within 10⁻⁶ of the upper bound), and their mean (``g_mean_S``, S). With
        devices also the fraction of faulty devices (stuck or open, ``devices_faulty``) and the
        devices' clock (``devices_clock_s``, s)."""
        g = torch.cat([p.detach().reshape(-1) for p in self.trainable().values()])
        lo, hi = (self.g_min, self.g_max) if self.devices is None else self.devices.weight_range
        tol = 1e-6 * hi
        stats = dict(at_g_min=float((g <= lo + tol).double().mean()), at_g_max=float((g >= hi - tol).double().mean()),
                     g_mean_S=float(g.double().mean()))
        if self.devices is not None:
            faults = [f.reshape(-1) for f in self.devices.faults.values()]
            stats["devices_faulty"] = float((torch.cat(faults) != OK).double().mean()) if faults else 0.0
            stats["devices_clock_s"] = float(self.devices.time)
        return stats

    # ------------------------------------------------------------------ devices and export
    def attach_devices(self, model: DeviceModel, seed: int = 0) -> DeviceArray:
        """Program the present conductances into a fresh realisation of ``model`` (seeded);
        from then on every settle reads through it and every update writes through it."""
        self.devices = DeviceArray(model, self.cc, list(self.cc.trainable), self.g_max, seed=seed, pairs=self.pairs())
        self._program()
        return self.devices

    def pairs(self) -> dict[str, str]:
        """The conductance pairs whose difference is one signed weight: each ``g:…p`` block
        and its ``g:…n`` block of the same shape (a layered circuit's w{l}p/w{l}n and
        b{l}p/b{l}n: the same node joined to the + and − copy of one voltage)."""
        params = self.trainable()
        return {k: k[:-1] + "n" for k in params
                if k.endswith("p") and k[:-1] + "n" in params and params[k].shape == params[k[:-1] + "n"].shape}

    def _program(self) -> None:
        """Write the present conductances into the devices: they hold what programming gives."""
        with torch.no_grad():
            done = self.devices.program_all(self.trainable())
            for k, p in self.trainable().items():
                p.copy_(done[k])

    def start_from(self, params: Mapping[str, torch.Tensor]) -> None:
        """Load trained conductances and, with devices in the loop, program them into the
        devices (levels, write noise, faults), as deploying them would: in-the-loop
        fine-tuning starts from what the devices hold, not from the trained values."""
        self.load_trainable(params)
        if self.devices is not None:
            self._program()

    def detach_devices(self) -> None:
        """Back to ideal components (the conductances keep their present values)."""
        self.devices = None

    def to_circuit(self) -> Circuit:
        """The Circuit IR with the present conductances, for export (SPICE decks). With
        devices these are the weights (under ``floor_compensation``, conductance − α·g_min):
        the passive circuit the compensated one is equivalent to. A negative weight (an open
        device under compensation, −α·g_min; the partner in a pair trimmed around a stuck device,
        ``fault_aware``) is a conductance of its node alone, which no passive element is: a pair
        with one is exported with both weights raised by its magnitude, which keeps the pair's
        signed weight w+ − w− and adds twice that magnitude to the node's load (an unpaired
        negative weight is exported as 0)."""
        if self.devices is None:
            return self.cc.to_circuit()
        w = {k: p.detach() for k, p in self.trainable().items()}
        for a, b in self.devices.pairs.items():
            lift = torch.minimum(torch.minimum(w[a], w[b]), torch.zeros_like(w[a]))
            w[a], w[b] = w[a] - lift, w[b] - lift
        params = {**self.cc.params, **{k: v.clamp_min(0) for k, v in w.items()}}
        return dataclasses.replace(self.cc, params=params, cache={}).to_circuit()

    def with_inputs(self, x: Sequence[float]) -> Circuit:
        """The present circuit with its input sources set for one input row ``x`` (data
        values × ``input_voltage`` volts), e.g. to export the deck of one digit."""
        if len(x) != self.n_in:
            raise ValueError(f"the circuit has {self.n_in} inputs; got {len(x)} values")
        volts = self.volts(torch.as_tensor([list(x)], dtype=torch.float64))[0].tolist()
        plus, minus = input_pairs(len(volts))
        return self.to_circuit().with_sources({**dict(zip(plus, volts)), **dict(zip(minus, [-v for v in volts]))})

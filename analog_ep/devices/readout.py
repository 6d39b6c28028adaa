"""The read-out: how settled node voltages become the numbers the learning rule uses, what that
costs in time, and the time axis of an EP step.

A read integrates over a window of ``window`` seconds (the devices' read noise is averaged over
it: ``NoiseProcess.window_mean``), samples the result on a capacitor (Johnson noise
σ = √(kT/C), V, independent per sample) and converts it. Two conversions are modelled:

* absolute: an ADC of ``adc_bits`` over ±``adc_range`` V per read (the legacy read-out);
* correlated double sampling (``cds``): the reference read ``a`` (e.g. the free phase) is
  converted absolutely, and a later read ``b`` (the nudged phase) is converted as the difference
  b − a of the two held samples by a differential ADC of ``diff_bits`` over ±``diff_range`` V.
  Everything common to the two samples (a constant offset, the slow part of the devices'
  1/f noise) cancels in b − a, and the difference, a few mV in EP, can use a fine range of its
  own instead of the LSB of an absolute ADC. The reconstructed b is a_meas + (b − a)_meas.

``repeats`` reads per phase are averaged (each with its own window, sample and conversion).
Time cost (``Readout.phase_time``): each read takes its integration window plus one
conversion of ``conversion_time`` seconds (absolute and differential conversions alike). Stated
assumption: conversions are not pipelined with the next window or the next phase's settling,
so the figures are an upper bound for a read-out with sample-and-hold pipelining.

The EP step's time axis (``ep_timeline``): phases run back to back; each starts (inputs and
nudge applied), settles for ``settle`` seconds (``rc_settle_time`` gives one from node
capacitances and conductances), then holds its read windows, each followed by its
conversion. The estimators read ``Phase.windows`` to ask the devices for the conductances a
read sees (``DeviceArray.view(window=...)``) and report ``StepTimeline.duration`` and
``measurement_time`` as the step's cost.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..circuit.constants import BOLTZMANN

Randn = Callable[[torch.Size], torch.Tensor]  # standard normal draws of a shape (a seeded generator's)


def quantise(v: torch.Tensor, bits: int, full_scale: float) -> torch.Tensor:
    """A mid-tread ADC: round to LSB = 2·full_scale/2^bits and clip to ±full_scale (V); bits = 0
    is ideal."""
    if not bits:
        return v
    lsb = 2 * full_scale / 2 ** bits
    return (torch.round(v / lsb) * lsb).clamp(-full_scale, full_scale)


@dataclass(frozen=True)
class Readout:
    window: float = 1e-6  # s, integration window of one read
    repeats: int = 1  # reads averaged per phase
    cds: bool = False  # correlated double sampling: later reads converted as differences to the first
    adc_bits: int = 0  # absolute ADC resolution (0: ideal)
    adc_range: float = 2.0  # absolute ADC full scale ±V
    diff_bits: int = 0  # differential ADC resolution for b − a (0: ideal)
    diff_range: float = 0.1  # differential ADC full scale ±V
    conversion_time: float = 0.0  # s per ADC conversion (absolute or differential)
    johnson_capacitance: float = 0.0  # sampling capacitance, F: σ = √(kT/C) per sample (0: off)
    temperature: float = 300.15  # K

    def __post_init__(self) -> None:
        if self.window <= 0 or self.repeats < 1 or self.conversion_time < 0:
            raise ValueError("read-out: window > 0 s, repeats ≥ 1 and conversion_time ≥ 0 s")

    @property
    def johnson_sigma(self) -> float:
        """√(kT/C), V: the thermal noise frozen on a sampling capacitor C (0 without one)."""
        return math.sqrt(BOLTZMANN * self.temperature / self.johnson_capacitance) if self.johnson_capacitance else 0.0

    @property
    def read_time(self) -> float:
        """s per read: its window plus one conversion."""
        return self.window + self.conversion_time

    @property
    def phase_time(self) -> float:
        """s of read-out per phase: ``repeats`` reads."""
        return self.repeats * self.read_time

    def _sample(self, v: torch.Tensor, randn: Randn) -> torch.Tensor:
        return v + self.johnson_sigma * randn(v.shape) if self.johnson_capacitance else v

    def measure(self, v: torch.Tensor, randn: Randn) -> torch.Tensor:
        """Voltages (V) through absolute conversions: mean over ``repeats`` of
        quantise(v + √(kT/C)·z) (one read, as the legacy read-out, when repeats = 1)."""
        total = quantise(self._sample(v, randn), self.adc_bits, self.adc_range)
        for _ in range(self.repeats - 1):
            total = total + quantise(self._sample(v, randn), self.adc_bits, self.adc_range)
        return total / self.repeats if self.repeats > 1 else total

    def pair(self, a: torch.Tensor, b: torch.Tensor, randn: Randn) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) as measured, a read first (the reference, e.g. free-phase voltages) and b later
        (e.g. nudged). Without ``cds``: two absolute measurements. With ``cds``: each repeat
        samples a and b, converts a absolutely and b − a differentially; b is returned as
        a_meas + mean(b − a)_meas, so b_meas − a_meas is the differential read-out alone."""
        if not self.cds:
            return self.measure(a, randn), self.measure(b, randn)
        a_sum = d_sum = None
        for _ in range(self.repeats):
            sa, sb = self._sample(a, randn), self._sample(b, randn)
            qa, qd = quantise(sa, self.adc_bits, self.adc_range), quantise(sb - sa, self.diff_bits, self.diff_range)
            a_sum, d_sum = (qa, qd) if a_sum is None else (a_sum + qa, d_sum + qd)
        a_meas = a_sum / self.repeats
        return a_meas, a_meas + d_sum / self.repeats


@dataclass(frozen=True)
class Phase:
    name: str
    start: float  # s: the phase's inputs and nudge applied
    settled: float  # s: start + settle time
    windows: tuple[tuple[float, float], ...]  # s: read windows (t0, t1)
    end: float  # s: after the last conversion


@dataclass(frozen=True)
class StepTimeline:
    phases: tuple[Phase, ...]
    settle_time: float  # s spent settling, all phases
    integration_time: float  # s spent in read windows
    conversion_time: float  # s spent converting
    conversions: int  # ADC conversions

    @property
    def start(self) -> float:
        return self.phases[0].start

    @property
    def end(self) -> float:
        return self.phases[-1].end

    @property
    def duration(self) -> float:
        """s, first phase start to last conversion."""
        return self.end - self.start

    @property
    def measurement_time(self) -> float:
        """s spent reading: integration windows + conversions."""
        return self.integration_time + self.conversion_time

    def __getitem__(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)


def ep_timeline(phases: Sequence[str], readout: Readout, settle: float, start: float = 0.0) -> StepTimeline:
    """The time axis of an EP step: ``phases`` (names, e.g. ["free", "+β", "−β"]) back to back
    from ``start`` (s); each settles for ``settle`` s, then holds ``readout.repeats`` read windows
    of ``readout.window`` s, each followed by one conversion of ``readout.conversion_time`` s."""
    if settle < 0 or len(set(phases)) != len(phases):
        raise ValueError("ep_timeline: settle ≥ 0 s and distinct phase names")
    out, t = [], float(start)
    for name in phases:
        begin = t
        t = settled = t + settle
        windows = []
        for _ in range(readout.repeats):  # a running clock: each window starts at or after the last one's end
            windows.append((t, t + readout.window))
            t = t + readout.window + readout.conversion_time
        out.append(Phase(name, begin, settled, tuple(windows), t))
    n, r = len(out), readout.repeats
    return StepTimeline(tuple(out), n * settle, n * r * readout.window, n * r * readout.conversion_time, n * r)


def rc_settle_time(capacitance: float | torch.Tensor, conductance: torch.Tensor, tol: float = 1e-3) -> float:
    """Seconds for a linear(ised) RC network C dV/dt = −G V to settle to a relative error
    ``tol``: τ·ln(1/tol) with τ its slowest time constant.

    ``capacitance``: F, one value or one per node. ``conductance`` (S): a vector of each node's
    total conductance G_ii (τ = max C_i/G_ii: each node on its own, ignoring coupling — a lower
    bound on the slowest mode), or the symmetric nodal conductance matrix G (exact slowest mode:
    τ = 1/λ_min(C^(-1/2) G C^(-1/2)))."""
    if not 0 < tol < 1:
        raise ValueError("rc_settle_time: 0 < tol < 1")
    G = torch.as_tensor(conductance, dtype=torch.float64)
    C = torch.as_tensor(capacitance, dtype=torch.float64)
    if G.dim() == 1:
        tau = float((C / G).max())
    else:
        c = C.expand(G.shape[0]).rsqrt()
        tau = 1.0 / float(torch.linalg.eigvalsh(c[:, None] * G * c[None, :]).min())
    return tau * math.log(1 / tol)

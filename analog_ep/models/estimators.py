"""EP estimators as a chip would run them on noisy devices: the phases of a step laid out on the
devices' clock, each settled at the conductances its read windows see (read noise as a process
in time, :mod:`analog_ep.devices.noise`), the voltages read through the read-out
(:mod:`analog_ep.devices.readout`: integration window, repeats, correlated double sampling with
a differential ADC), and the measurement time each step costs.

* ``"ep"`` — the emulator's EP (:func:`analog_ep.emulator.ep.ep_gradient`) with one device view
  and one absolute read per settle: the model behind the earlier robustness sweep.
* ``"cds"`` — the free phase, then the nudged phase(s) of ``mode`` (positive, centered, random),
  back to back in time. The free voltages are read once (absolute ADC); every nudged phase is
  read as free + (nudged − free) through the differential read-out, so slow noise common to the
  phases and the absolute ADC's quantisation cancel in the EP difference.
* ``"lockin"`` — after the free phase, the nudge oscillates: β_j = β cos φ_j, φ_j = 2πj/N, at N
  points per period over K periods, each point settled (warm-started from the last) and read
  like a CDS nudged phase. The gradient is the first Fourier coefficient of ∂E/∂θ along the
  oscillation, (2/(K N β)) Σ_j cos φ_j ∂E/∂θ(s_j) / B — the real, frequency-domain form of
  holomorphic EP (Laborieux & Zenke, NeurIPS 2022). Σ_j cos φ_j = 0 over whole periods, so any
  drift slower than the modulation, and any common offset, drops out; its finite-β bias is
  O(β²) (for a continuous sinusoid (3/4)·a₃β² against centred EP's a₃β², with a₃ the cubic
  Taylor coefficient of ∂E/∂θ(s^β) in β), none of first order.

Units: β in siemens (conductance from each output to its target), times in seconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..devices import DeviceArray
from ..emulator import Compiled, SettleResult, settle
from ..emulator.ep import ep_gradient, weighted_param_grads
from ..emulator.nudging import check_nudging, ep_estimate

KINDS = ("ep", "cds", "lockin")


@dataclass(frozen=True)
class Estimator:
    """Which estimator an EP step uses: ``kind`` (ep | cds | lockin), the lock-in's ``periods`` (K)
    and ``points`` per period (N ≥ 2), and ``update_time`` (s between two steps on the clock,
    e.g. the programming pulses)."""

    kind: str = "ep"
    periods: int = 4
    points: int = 4
    update_time: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"estimator must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.periods < 1 or self.points < 2 or not self.update_time >= 0:
            raise ValueError("estimator: periods >= 1, points >= 2, update_time >= 0 s")

    def phases(self, mode: str) -> list[str]:
        """The names of a step's phases in time order (the free phase first)."""
        if self.kind == "lockin":
            return ["free"] + [f"lockin{k}.{j}" for k in range(self.periods) for j in range(self.points)]
        return ["free"] + (["+beta", "-beta"] if mode == "centered" else ["nudged"])


@dataclass
class Estimate:
    grads: dict[str, torch.Tensor]  # key -> d(mean cost)/dθ estimate
    free: SettleResult
    outputs: torch.Tensor  # (B, n_out) free-phase output voltages as read, V
    loss: torch.Tensor  # (B,) cost at the (unread) free state, V²
    measurement_time: float  # s of the step on the devices' clock (settles, reads, conversions, update)


def per_settle_reads(cc: Compiled, devices: DeviceArray | None) -> tuple[Callable[[], Compiled], Callable]:
    """(view, measure) of reads one settle at a time: the circuit a settle sees (a fresh device
    view, or ``cc`` itself) and what the read-out makes of settled voltages (identity without
    devices)."""
    if devices is None:
        return (lambda: cc), (lambda s: s)
    return devices.view, devices.measure


def output_voltages(res: SettleResult, s: torch.Tensor) -> torch.Tensor:
    """Output node voltages (B, n_out), V, of the circuit ``res`` settled on, at free voltages s
    (e.g. as read)."""
    return res.cc.node_voltages(s, res.u, res.cc.outputs)


def estimate(cc: Compiled, devices: DeviceArray | None, u: torch.Tensor, target: torch.Tensor, beta: float, *,
             mode: str, estimator: Estimator, keys: list[str], settle_kw: dict, sign: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> Estimate:
    """One EP step's gradient estimate by ``estimator`` on the circuit ``cc`` read through
    ``devices`` (None: ideal components, instantaneous reads)."""
    from ..emulator.energy import cost

    check_nudging(mode, beta)
    start = 0.0 if devices is None else devices.time
    if estimator.kind == "ep":
        view, measure = per_settle_reads(cc, devices)
        ep = ep_gradient(cc, u, target, beta, mode=mode, keys=keys, sign=sign, generator=generator, view=view,
                         measure=measure, **settle_kw)
        out = output_voltages(ep.free, measure(ep.free.s))
        grads, free, loss = ep.grads, ep.free, ep.loss
    else:
        names = estimator.phases(mode)
        if devices is None:
            view: Callable = lambda name: cc
            pair = lambda a, b: (a, b)
        else:
            timeline = devices.schedule(names)
            view = lambda name: devices.view(timeline[name].windows)
            pair = devices.read_pair
        B = u.shape[0]
        free = settle(view("free"), u, **settle_kw)
        phases, last, ref = iter(names[1:]), [free.s], []

        def nudge(b: torch.Tensor) -> tuple[torch.Tensor, Compiled]:
            """The next nudged phase, warm-started from the last, read as the free reference +
            (nudged − free) through the read-out; one reference read of the free state serves
            every difference."""
            res = settle(view(next(phases)), u, beta=b, target=target, s0=last[0], **settle_kw)
            a_meas, b_meas = pair(free.s, res.s)
            if not ref:
                ref.append(a_meas)
            last[0] = res.s
            return ref[0] + (b_meas - a_meas), res.cc

        if estimator.kind == "cds":
            free_read = lambda: (ref[0], free.cc)  # read during the first nudged phase's pair
            difference = lambda a, b, w: weighted_param_grads(
                cc, keys, [(w, *b), (-w, *(free_read() if a is free else a))], u)
            grads, _ = ep_estimate(free, nudge, difference, mode=mode, beta=beta, batch=B, sign=sign,
                                   generator=generator, dtype=cc.dtype, device=cc.device)
        else:
            phi = [2 * math.pi * j / estimator.points for _ in range(estimator.periods) for j in range(estimator.points)]
            reads = [nudge(torch.full((B,), beta * math.cos(p), dtype=cc.dtype, device=cc.device)) for p in phi]
            w = [2 * math.cos(p) / (estimator.periods * estimator.points * beta * B) for p in phi]
            grads = weighted_param_grads(cc, keys, [(wk, sk, ck) for wk, (sk, ck) in zip(w, reads)], u)
        out = output_voltages(free, ref[0])
        loss = cost(free.outputs, target)
    if devices is not None and estimator.update_time:
        devices.wait(estimator.update_time)
    return Estimate(grads, free, out, loss, (0.0 if devices is None else devices.time) - start)

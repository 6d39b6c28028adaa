"""Energy, power and latency of a circuit per inference and per EP training step, against the
same network run digitally.

The estimate, per sample (one digit at a time, as the circuit processes them):

* **Power at the operating point** (:func:`analog_ep.emulator.power.element_powers`, float64):
  what every element group dissipates, and what the circuit draws: the power each voltage or
  current source delivers (a source that absorbs power is assumed to burn it, not return it:
  only deliveries are drawn) plus the amplifiers' supply under :class:`EnergyModel`'s
  amplifier model — each bidirectional amplifier is ``opamps_per_amplifier`` op-amps (the
  deck's VCVS and CCCS) with a quiescent current ``quiescent_current`` between rails at
  ±``supply_voltage``, whose output stages draw each port's current |I| from the rail of its
  sign (class-AB): P = n·2·V_s·I_q + V_s·Σ(|I_in| + |I_out|).
* **Settling time** of each phase: the slowest mode of the circuit linearised at its
  operating point (the energy's Hessian, conductances and diode slopes, S) with each free
  node's capacitance (wires: ``wire_capacitance`` × ``cell_pitch`` per device on the node, plus
  ``node_capacitance``), τ = 1/λ_min(C^−½ H C^−½), settled to ``settle_tolerance``:
  τ·ln(1/tol) (:func:`analog_ep.devices.readout.rc_settle_time`). Amplifiers are ideal (no
  bandwidth limit), so this is the RC floor of the latency.
* **Energy per inference** = drawn power × (settling time + ``hold_time``) + one ADC
  conversion per output (Walden figure of merit: E = FOM·2^bits per conversion).
* **Energy per EP training step** (per sample) = Σ over the phases of the nudging mode (free,
  +β, and −β when centred) of drawn power × (settling time + ``hold_time``) + one conversion per
  free node per phase (the local rule needs every ΔV) + the device writes: ``pulses_per_update``
  programming pulses of ``write_energy`` per trainable device per step, shared by the
  ``batch_size`` samples of a minibatch.
* **Digital**: FLOPs of the same network as a multilayer perceptron (2·m·n + n per layer of m
  inputs and n outputs: signed weights and biases, activations not counted); a training step
  by backpropagation ≈ 3× the forward FLOPs; times the energy per FLOP of
  :data:`DIGITAL_PLATFORMS`.

Every assumption is a field of :class:`EnergyModel` with its source.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..circuit import Circuit, parse_layers
from ..circuit.ir import Conductances, Diodes, Nudges, VoltageSources
from ..circuit.transforms import expand_series_resistance
from ..circuit.units import parse_value
from ..devices.readout import rc_settle_time
from ..emulator import Compiled, SettleResult, compile_circuit, settle
from ..emulator.nudging import nudge_strengths
from ..emulator.operators import assemble, hessian
from ..emulator.power import AMPLIFIER_PORTS, PASSIVE, Powers, element_powers
from ..spice import DEFAULT_OPTIONS
from ..spice.netlist import element_names
from ..spice.ngspice import run_op_many
from ..spice.power import operating_point_powers
from ..data import Dataset
from ..models import AnalogCircuit
from ..train import load_checkpoint
from .evaluate import circuit_of


@dataclass(frozen=True)
class EnergyModel:
    """The assumptions of the energy estimate (SI units), each with its source; ``ours`` marks
    a choice of ours where no published figure applies."""

    wire_capacitance: float = 0.2e-9
    """F/m (0.2 fF/µm): the rule of thumb for on-chip wires, Weste & Harris, *CMOS VLSI Design*,
    4th ed. (2010), ch. 6."""
    cell_pitch: float = 90e-9
    """m of wire per device on a node: a 4F² cross-point cell (Wong et al., "Metal-oxide RRAM",
    Proc. IEEE 100, 1951 (2012)) at F = 45 nm, the node of the digital figures (Horowitz 2014)."""
    node_capacitance: float = 0.0
    """F per free node beyond its wire (amplifier input, sampling capacitor); 0: wires only (ours)."""
    settle_tolerance: float = 2.0 ** -9
    """Relative error a phase settles to: half an LSB of the ``adc_bits`` read-out."""
    quiescent_current: float = 17e-6
    """A per op-amp: TI OPA333/OPA2333 micropower CMOS op-amp datasheet (17 µA)."""
    opamps_per_amplifier: int = 2
    """One op-amp for the VCVS and one for the CCCS of each bidirectional amplifier (the deck's E + F)."""
    supply_voltage: float | None = None
    """V, rails at ±supply_voltage; None: the smallest rails that fit every amplifier port voltage
    of the evaluated samples in every phase (rail-to-rail output stages; the most favourable case)."""
    adc_bits: int = 8
    """Read-out resolution: the device presets' 8-bit read-out (``analog_ep/devices/model.py``)."""
    walden_fom: float = 6.8e-15
    """J per conversion step (Walden FOM, E = FOM·2^bits per conversion): a 10 MS/s SAR ADC,
    Verbruggen et al., as listed in B. E. Jonsson's ADC performance survey (2012)."""
    adc_rate: float = 10e6
    """Conversions per second of each ADC: the presets' 100 ns conversion (``devices/model.py``);
    one ADC per read node, in parallel."""
    hold_time: float = 0.0
    """s the circuit stays powered after settling; 0: the sample-and-hold tracks the node while it
    settles and holds at the end (ours)."""
    write_energy: float = 2e-12
    """J per programming pulse: full On/Off switching of an analog bilayer metal-oxide memristor at
    ~0.8 V, Hsieh et al., arXiv:1603.03979 (2016)."""
    pulses_per_update: float = 1.0
    """Programming pulses per trainable device per training step (one update pulse, ours)."""

    def __post_init__(self) -> None:
        positive = ("wire_capacitance", "cell_pitch", "quiescent_current", "walden_fom", "adc_rate", "write_energy")
        bad = [k for k in positive if not getattr(self, k) > 0]
        bad += [k for k in ("node_capacitance", "hold_time", "pulses_per_update") if not getattr(self, k) >= 0]
        if not 0 < self.settle_tolerance < 1:
            bad.append("settle_tolerance")
        if self.supply_voltage is not None and not self.supply_voltage > 0:
            bad.append("supply_voltage")
        if self.adc_bits < 1 or self.opamps_per_amplifier < 1:
            bad.append("adc_bits/opamps_per_amplifier")
        if bad:
            raise ValueError(f"energy model: out of range: {', '.join(bad)}")

    @property
    def conversion_energy(self) -> float:
        """J per ADC conversion: FOM·2^bits."""
        return self.walden_fom * 2.0 ** self.adc_bits

    def updated(self, changes: dict) -> "EnergyModel":
        """A copy with some fields changed (a ValueError names an unknown field)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"energy model: unknown field(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DigitalPlatform:
    """Digital hardware by its energy per floating-point operation (J/FLOP) and where that
    figure comes from."""

    name: str
    joules_per_flop: float
    source: str


DIGITAL_PLATFORMS = (
    DigitalPlatform("45 nm FP32 arithmetic only", (3.7e-12 + 0.9e-12) / 2,
                    "Horowitz, ISSCC 2014 (45 nm): FP32 multiply 3.7 pJ + add 0.9 pJ per multiply-add "
                    "(2 FLOPs), no data movement"),
    DigitalPlatform("CPU (Fujitsu A64FX)", 1 / 16.876e9,
                    "Green500 Nov 2019, Fugaku prototype: 16.876 GFLOPS/W on HPL (FP64; Fujitsu press "
                    "release 2019-11-18)"),
    DigitalPlatform("GPU (NVIDIA A100 SXM4)", 400 / 19.5e12,
                    "NVIDIA A100 datasheet: 19.5 TFLOPS FP32 peak at 400 W maximum power"),
)
"""Energy per FLOP of digital hardware: arithmetic alone, a CPU system and a GPU at their
published rates (a small network at batch 1 reaches a fraction of peak, so real energies are
higher)."""
BACKPROP_FLOP_FACTOR = 3.0
"""FLOPs of a backpropagation training step per forward FLOP: forward 2N + backward 4N per
parameter (Kaplan et al., "Scaling laws for neural language models", arXiv:2001.08361, §2.1)."""


def mlp_flops(sizes: Sequence[int]) -> int:
    """FLOPs of one forward pass of a perceptron of these layer sizes: 2·m·n + n per layer of m
    inputs and n outputs (multiply-adds of the signed weights and the bias); activations not
    counted."""
    return int(sum(2 * m * n + n for m, n in zip(sizes[:-1], sizes[1:])))


def node_capacitance(cc: Compiled, energy: EnergyModel) -> torch.Tensor:
    """Capacitance of every free node (n_free,), F: its wire, ``wire_capacitance`` ×
    ``cell_pitch`` per device (conductance, nudge, diode) attached to the node itself (an
    amplifier's copy of a node is its own wire, driven by the amplifier), plus
    ``node_capacitance``."""
    counts = np.zeros(len(cc.circuit.nodes))
    for g in cc.circuit.groups(Conductances):
        a, b, gv = g.edges()
        np.add.at(counts, a[gv > 0], 1)
        np.add.at(counts, b[gv > 0], 1)
    for g in cc.circuit.groups(Nudges):
        np.add.at(counts, g.node, 1)
    for g in cc.circuit.groups(Diodes):
        np.add.at(counts, g.anode, 1)
        np.add.at(counts, g.cathode, 1)
    cap = energy.node_capacitance + energy.wire_capacitance * energy.cell_pitch * counts[cc.free]
    if np.any(cap <= 0):
        raise ValueError("a free node has no capacitance (no device on it and node_capacitance = 0)")
    return torch.as_tensor(cap, dtype=torch.float64, device=cc.device)


def settle_times(result: SettleResult, capacitance: torch.Tensor, tol: float, *, beta: float | torch.Tensor = 0.0,
                 target: torch.Tensor | None = None, chunk: int = 8) -> np.ndarray:
    """Seconds (B,) for each sample's circuit, linearised at its settled state (the energy's
    Hessian, S: conductances, diode slopes and the EP nudge ``beta``/``target`` it was settled
    with), to settle to a relative error ``tol`` from node ``capacitance`` (n_free,), F:
    τ·ln(1/tol) with τ the slowest time constant. ``chunk`` samples' dense Hessians at a time."""
    cc = result.cc
    if any(d.ideal for d in cc.diodes):
        raise ValueError("settling time: ideal clamps have no linearisation; use Shockley diodes")
    B = result.s.shape[0]
    beta = torch.as_tensor(beta, dtype=cc.dtype, device=cc.device).expand(B)
    out = []
    with torch.no_grad():
        for lo in range(0, B, chunk):
            sl = slice(lo, lo + chunk)
            ops = assemble(cc, result.u[sl], beta[sl], None if target is None else target[sl])
            H = hessian(ops, result.s[sl], dtype=torch.float64)
            out += [rc_settle_time(capacitance, h, tol) for h in H]
    return np.array(out)


@dataclass
class Phase:
    """One settled phase of a batch: its settle, powers and settling times (B,), s."""

    name: str
    result: SettleResult
    powers: Powers
    settle_time: np.ndarray
    target: torch.Tensor | None = None  # (B, n_out), V: the nudge's targets (nudged phases)


def run_phases(cc: Compiled, u: torch.Tensor, energy: EnergyModel, *, target: torch.Tensor | None = None,
               beta: float = 0.0, mode: str = "centered", rtol: float = 1e-10) -> list[Phase]:
    """The free phase of a batch of sources u (B, n_src), V, in float64, and with ``target``
    (B, n_out), V, the nudged phases of ``mode`` at ``beta`` S (warm-started from the free
    state; random signs drawn from a generator seeded 0), each with its powers and settling
    time."""
    cap = node_capacitance(cc, energy)
    free = settle(cc, u, rtol=rtol)
    phases = [Phase("free", free, element_powers(free), settle_times(free, cap, energy.settle_tolerance))]
    if target is None:
        return phases
    signs = nudge_strengths(mode, beta, u.shape[0], generator=torch.Generator().manual_seed(0), dtype=cc.dtype)
    for k, b in enumerate(signs):
        res = settle(cc, u, rtol=rtol, beta=b, target=target, s0=free.s)
        name = "nudged" if len(signs) == 1 else ("+β", "−β")[k]
        phases.append(Phase(name, res, element_powers(res, beta=b, target=target),
                            settle_times(res, cap, energy.settle_tolerance, beta=b, target=target), target))
    return phases


def amplifier_peak(phases: list[Phase]) -> float:
    """The largest |V| (V) at any amplifier port of any sample in any phase (0 without amplifiers)."""
    return max((float(torch.stack([p.v_in.abs().amax(), p.v_out.abs().amax()]).amax())
                for ph in phases for p in ph.powers.amplifiers.values()), default=0.0)


def drawn_power(phase: Phase, rails: float, energy: EnergyModel) -> dict[str, np.ndarray]:
    """Where the power a phase draws (from sources and from the amplifiers' supply at rails
    ±``rails`` V) goes, W per sample (B,): every passive group (``g:``, ``d:``, ``gmin:``,
    ``nudge``), ``amplifiers`` (their supply power less the net power their ports deliver) and
    ``sinking sources`` (power absorbed by sources, burnt). The values sum to the drawn power
    up to the settle's KCL residual power."""
    pw, res = phase.powers, phase.result
    cc = res.cc
    delivered = [res.u * pw.source_current]
    if pw.target_current is not None:
        delivered.append(phase.target * pw.target_current)
    V = res.V
    delivered += [V[:, node] * cc.params[key] for node, key in cc.currents]
    per_source = torch.cat(delivered, 1)
    out = {k: v.cpu().numpy() for k, v in pw.absorbed.items() if pw.kind[k] in PASSIVE}
    ports = list(pw.amplifiers.values())
    n_amp = sum(p.i_out.shape[1] for p in ports)
    supply = 2 * rails * energy.quiescent_current * energy.opamps_per_amplifier * n_amp
    if ports:
        supply = supply + rails * sum((p.i_in.abs() + p.i_out.abs()).sum(1) for p in ports)
        net = -pw.total(AMPLIFIER_PORTS)
        out["amplifiers"] = (supply - net).cpu().numpy()
    out["sinking sources"] = (-per_source).clamp(min=0).sum(1).cpu().numpy()
    return out


def _stats(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=float)
    return dict(mean=float(x.mean()), std=float(x.std()), min=float(x.min()), max=float(x.max()))


def energy_report(cc: Compiled, u: torch.Tensor, energy: EnergyModel = EnergyModel(), *,
                  target: torch.Tensor | None = None, beta: float = 0.0, mode: str = "centered",
                  batch_size: int = 1, layers: Sequence[int] | None = None) -> dict:
    """Energy, power and latency per inference (free phase) and, with ``target``, per EP
    training step (``mode`` at ``beta``), for each sample of the sources u (B, n_src), V, as a
    JSON-ready dict: means at the top (``energy_per_inference_J``, ``power_W``,
    ``settle_time_s``, ...), spreads (mean, std, min, max over samples), the breakdown by
    element group (J per inference), and with ``layers`` the digital comparison."""
    phases = run_phases(cc, u, energy, target=target, beta=beta, mode=mode)
    peak = amplifier_peak(phases)
    rails = peak if energy.supply_voltage is None else energy.supply_voltage
    conv = energy.conversion_energy
    t_conv = 1.0 / energy.adc_rate
    on = lambda ph: ph.settle_time + energy.hold_time
    drawn = [drawn_power(ph, rails, energy) for ph in phases]
    free, free_drawn = phases[0], drawn[0]
    n_out = int(cc.outputs.numel())
    power = sum(free_drawn.values())
    breakdown = {k: v * on(free) for k, v in free_drawn.items()}
    breakdown["read-out (ADC)"] = np.full(len(power), n_out * conv)
    e_inf = sum(breakdown.values())
    notes = []
    if peak > rails:
        notes.append(f"amplifier rails ±{rails:g} V are below the largest port voltage {peak:.3g} V: "
                     "the circuit would clip")
    residual = max(float((ph.powers.residual.abs().cpu().numpy() / sum(d.values())).max())
                   for ph, d in zip(phases, drawn))  # the settles' KCL residual power / drawn power
    report = dict(
        energy_per_inference_J=float(e_inf.mean()), power_W=float(power.mean()),
        settle_time_s=float(free.settle_time.mean()), latency_per_inference_s=float((on(free) + t_conv).mean()),
        n_samples=int(len(power)), amplifier_rails_V=rails, conversion_energy_J=conv,
        spread=dict(energy_per_inference_J=_stats(e_inf), power_W=_stats(power),
                    settle_time_s=_stats(free.settle_time)),
        breakdown_J={k: float(v.mean()) for k, v in breakdown.items()},
        power_breakdown_W={k: float(v.mean()) for k, v in free_drawn.items()},
        tellegen_residual=residual, energy_model=dataclasses.asdict(energy), notes=notes)
    if target is not None:
        n_free = cc.n_free
        devices = sum(int(cc.params[k].numel()) for k in cc.trainable)
        writes = devices * energy.pulses_per_update * energy.write_energy / batch_size
        per_phase = {ph.name: sum(d.values()) * on(ph) + n_free * conv for ph, d in zip(phases, drawn)}
        e_step = sum(per_phase.values()) + writes
        t_step = sum(on(ph) + t_conv for ph in phases)
        report.update(
            energy_per_training_step_J=float(e_step.mean()), latency_per_training_step_s=float(t_step.mean()),
            training_step=dict(mode=mode, beta_S=beta, batch_size=batch_size, trainable_devices=devices,
                               write_energy_per_sample_J=writes, reads_per_phase=n_free,
                               phases_J={k: float(v.mean()) for k, v in per_phase.items()},
                               settle_time_s={ph.name: _stats(ph.settle_time) for ph in phases},
                               power_W={ph.name: float(sum(d.values()).mean()) for ph, d in zip(phases, drawn)}))
        report["spread"]["energy_per_training_step_J"] = _stats(e_step)
    if layers is not None:
        report["digital"] = digital_energy(layers, report)
    return report


def digital_energy(layers: Sequence[int], analog: dict) -> dict:
    """The same network as a digital perceptron: FLOPs per inference and per backprop training
    step, their energy on each of :data:`DIGITAL_PLATFORMS`, and the ratio to the analog figures
    of ``analog`` (an :func:`energy_report`)."""
    flops = mlp_flops(layers)
    out = dict(layers=list(layers), flops_per_inference=flops,
               flops_per_training_step=BACKPROP_FLOP_FACTOR * flops, platforms=[])
    for p in DIGITAL_PLATFORMS:
        row = dict(name=p.name, joules_per_flop=p.joules_per_flop, source=p.source,
                   energy_per_inference_J=flops * p.joules_per_flop,
                   energy_per_training_step_J=BACKPROP_FLOP_FACTOR * flops * p.joules_per_flop)
        row["inference_ratio_digital_over_analog"] = row["energy_per_inference_J"] / analog["energy_per_inference_J"]
        if "energy_per_training_step_J" in analog:
            row["training_ratio_digital_over_analog"] = (row["energy_per_training_step_J"]
                                                         / analog["energy_per_training_step_J"])
        out["platforms"].append(row)
    return out


def spice_powers(circuits: Sequence[Circuit], jobs: int | None = None) -> dict:
    """Each circuit's element-group powers and source currents from ngspice (full decks:
    every input source and resistor present, diode series resistances as explicit nodes;
    ``.options`` :data:`analog_ep.spice.DEFAULT_OPTIONS`) against the emulator's (float64, the
    decks' gmin modelled, rtol 1e-12): the largest |ΔP| of any group relative to the circuit's
    total |P|, the largest |ΔI| of any voltage source (A), and ngspice's time (s)."""
    expanded = [expand_series_resistance(c) for c in circuits]
    ops = run_op_many(expanded, jobs=jobs)
    gmin = parse_value(DEFAULT_OPTIONS["gmin"])
    rel_dp, d_i, dissipated = [], [], []
    for c, op in zip(expanded, ops):
        cc = compile_circuit(c, gmin=gmin)
        emu = element_powers(settle(cc, rtol=1e-12))
        ref = operating_point_powers(c, op)
        total = sum(abs(v) for v in ref.values())
        rel_dp.append(max(abs(ref[k] - float(emu.absorbed[k][0])) for k in ref) / total)
        branch = np.array([op.currents[n] for g in c.groups(VoltageSources) for n in element_names(g, c.nodes)])
        nodes = [cc.sources.index(int(n)) for g in c.groups(VoltageSources) for n in g.node]
        d_i.append(float(np.abs(-branch - emu.source_current[0, nodes].cpu().numpy()).max()))
        dissipated.append(sum(v for k, v in ref.items() if k.split(":")[0] in ("g", "d", "gmin")))
    return dict(n=len(circuits), max_rel_power_difference=max(rel_dp), max_abs_source_current_difference_A=max(d_i),
                spice_power_W=_stats(dissipated), spice_seconds=sum(op.seconds for op in ops),
                spice_options=ops[0].options if ops else dict(DEFAULT_OPTIONS))


def circuit_energy(model: AnalogCircuit, data: Dataset, *, n: int = 100, energy: EnergyModel = EnergyModel(),
                   batch_size: int = 1, spice: int = 0) -> dict:
    """:func:`energy_report` of a circuit model on the first ``n`` test images of ``data``
    (training steps with their labels and the model's β and nudging mode, writes shared by
    ``batch_size`` samples), with the digital comparison for a layered circuit; ``spice``: the
    first N of those digits also through ngspice (:func:`spice_powers`; full decks, ~20 s each
    for 2×784-100-10)."""
    if n < 1 or spice < 0:
        raise ValueError("n: expected a number of test images >= 1, and spice >= 0")
    x, labels = data.x_test[:n], data.y_test[:n]
    cc = compile_circuit(model.to_circuit(), dtype=torch.float64, device=model.device)
    u = cc.inputs_to_sources(model.volts(x).double())
    meta = model.circuit.meta
    layers = parse_layers(meta["layers"]) if meta.get("kind") == "layered" else None
    report = energy_report(cc, u, energy, target=model.targets(labels).double(), beta=model.beta, mode=model.mode,
                           batch_size=batch_size, layers=layers)
    report.update(dataset=data.name, circuit=model.summary(),
                  conductances=sum(int(cc.params[b.name].numel()) for b in cc.blocks))
    if spice:
        report["spice"] = spice_powers([model.with_inputs(np.asarray(row).reshape(-1).tolist()) for row in x[:spice]])
    return report


def checkpoint_energy(checkpoint: str | Path, *, n: int = 100, energy: EnergyModel = EnergyModel(), spice: int = 0,
                      device: str = "cpu") -> dict:
    """:func:`circuit_energy` of a trained circuit on its dataset's test images, writes shared by
    its training batch size."""
    trainer = load_checkpoint(checkpoint, device=device)
    report = circuit_energy(circuit_of(trainer), trainer.data, n=n, energy=energy,
                            batch_size=trainer.cfg.data.batch_size, spice=spice)
    report["checkpoint"] = str(checkpoint)
    return report

"""One realisation of a device model on a compiled circuit: what programming, updating and
reading the trainable conductances does, and what measuring node voltages does.

The fixed per-device draws (step-size spread, faults, drift exponents, diode and amplifier
spread) come first from a seeded generator, so a realisation is a function of its seed; the
per-write and per-read noise that follows comes from the same generator. Under the "process"
read-noise model the array also owns a ``NoiseProcess`` (seeded from the generator after the
fixed draws) and a clock ``time`` (s): the EP estimators reserve each step's time span with
``schedule(phases)`` (a ``StepTimeline``), ask for the circuit each phase's reads see with
``view(window=phase.windows)``, and read voltages through ``measure(s)`` or, for a free/nudged
pair, ``read_pair(s_free, s_nudged)`` (correlated double sampling when the model has ``cds``).
``state_dict()`` / ``load_state_dict()`` cover the generator, the clock, the process and the
mixed-precision accumulators, for exact resume.

Weights and conductances. The circuit's parameters (what settles, the optimiser, checkpoints
and exports see) are *weights* w: the conductance each device contributes to the circuit. A
device itself holds g in [g_min, g_max]. Without ``floor_compensation`` w = g. With it (α), each
free node carries a negative conductance −α·g_min per device attached, so in the node's
Kirchhoff equation a device at g counts as w = g − α·g_min: exactly so in the layered circuit,
where every device has a pair partner joined to the opposite copy (±x, ±A·V, ±bias) of the same
node, so that the compensation's share of the partners' currents, α·g_min·(V − v) and
α·g_min·(V + v), adds up to 2α·g_min·V, which is what the node's negative conductance removes.
With ``fault_aware`` the compensation of a node is also trimmed around each pair with a device
stuck at g_max, whose two devices then count as g − g_max (``_trimmed_offsets``).
:meth:`program`, :meth:`update` and :meth:`view` take and give weights; the device physics
(levels, bounds, faults, read noise relative to g) acts on g = w + offset.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch

from ..emulator.compiled import Compiled
from .model import DeviceModel
from .noise import NoiseProcess
from .readout import StepTimeline, ep_timeline

Window = tuple[float, float]  # a read window (t0, t1), s on the array's clock

OK, STUCK_MIN, STUCK_MAX, OPEN = 0, 1, 2, 3


class DeviceArray:
    def __init__(self, model: DeviceModel, cc: Compiled, keys: list[str], g_max: float, seed: int = 0,
                 pairs: Mapping[str, str] | None = None):
        """``pairs`` maps a key to its pair partner's (same shape; the signed weight is their
        difference), for ``fault_aware`` programming."""
        self.model, self.cc, self.keys = model.validate(), cc, list(keys)
        self.g_max = float(g_max)
        self.g_min = 0.0 if math.isinf(model.on_off) else self.g_max / model.on_off
        self.offset = model.floor_compensation * self.g_min  # S: a working device's weight w = g − offset
        self.pairs = dict(pairs or {})
        for a, b in self.pairs.items():
            if a not in self.keys or b not in self.keys or cc.params[a].shape != cc.params[b].shape:
                raise ValueError(f"device array: pair ({a}, {b}) needs two trainable keys of the same shape")
        self.step = (self.g_max - self.g_min) / (model.levels - 1) if model.levels else 0.0
        self.gen = torch.Generator().manual_seed(seed)
        m, shape = model, lambda k: cc.params[k].shape
        self.step_gain = {k: (1 + m.d2d * self.randn(shape(k))).clamp_min(0) for k in self.keys} if m.d2d else {}
        self.faults = {k: self._draw_faults(shape(k)) for k in self.keys} if m.stuck_min + m.stuck_max + m.open else {}
        # mixed precision: the change each device was asked for and has not been written yet, S
        self.accumulator = ({k: torch.zeros(shape(k), dtype=cc.dtype, device=cc.device) for k in self.keys}
                            if m.update_threshold else {})
        self.offsets = self._trimmed_offsets()
        # whether any weight differs from its conductance: reads skip the shift when none does
        self.shifted = any(isinstance(o, torch.Tensor) or o for o in self.offsets.values())
        self.nu = ({k: m.drift_nu + m.drift_nu_std * self.randn(shape(k)) for k in self.keys}
                   if m.drift_nu and m.drift_time > m.drift_t0 else {})
        static = {}
        for d in cc.diodes:
            if m.diode_is_spread:
                static[f"IS:{d.name}"] = cc.params[f"IS:{d.name}"] * torch.exp(m.diode_is_spread * self.randn(shape(f"IS:{d.name}")))
            if m.diode_n_spread:
                static[f"N:{d.name}"] = cc.params[f"N:{d.name}"] * (1 + m.diode_n_spread * self.randn(shape(f"N:{d.name}")))
            rs = f"g:{d.name}_rs"  # the conductance 1/RS that compile_circuit gives a diode's series resistance
            if m.diode_rs_spread and rs in cc.params:
                static[rs] = cc.params[rs] * torch.exp(-m.diode_rs_spread * self.randn(shape(rs)))
        for key in sorted({key for _, _, key, _ in cc.amp_chain}):
            if m.amp_gain_error:
                static[key] = cc.params[key] * (1 + m.amp_gain_error * self.randn(shape(key)))
            if m.amp_offset:
                static["off:" + key[2:]] = m.amp_offset * self.randn(shape(key))
        # the circuit as built in hardware: trainable conductances shared with cc (the device
        # state), fixed components replaced by this realisation's
        self.hardware = dataclasses.replace(cc, params={**cc.params, **static}, cache={})
        self.readout = model.readout()
        self.time = 0.0  # s: the clock reads are scheduled on (the end of the last reserved step)
        spec = model.noise_spec()
        self.noise = None if spec is None else NoiseProcess(
            spec, {k: shape(k) for k in self.keys}, seed=int(torch.randint(2 ** 62, (1,), generator=self.gen)),
            device=cc.device)

    def randn(self, shape) -> torch.Tensor:
        """Standard normal draws from this realisation's generator, on the circuit's device."""
        return torch.randn(shape, generator=self.gen, dtype=torch.float64).to(self.cc.device, self.cc.dtype)

    def _draw_faults(self, shape) -> torch.Tensor:
        m = self.model
        r = torch.rand(shape, generator=self.gen, dtype=torch.float64)
        code = torch.full(shape, OK, dtype=torch.int8)
        code[r < m.stuck_min + m.stuck_max + m.open] = OPEN
        code[r < m.stuck_min + m.stuck_max] = STUCK_MAX
        code[r < m.stuck_min] = STUCK_MIN
        return code.to(self.cc.device)

    # ------------------------------------------------------------------ writing
    def _settle_faults(self, key: str, g: torch.Tensor) -> torch.Tensor:
        if key not in self.faults:
            return g
        f = self.faults[key]
        g = torch.where(f == STUCK_MIN, self.g_min, g)
        g = torch.where(f == STUCK_MAX, self.g_max, g)
        return torch.where(f == OPEN, 0.0, g)

    def _trimmed_offsets(self) -> dict[str, float | torch.Tensor]:
        """Per key, the offset between each device's conductance and its weight (S): ``offset``,
        and with ``fault_aware`` g_max for both devices of a pair with a device stuck at g_max
        (the node's compensation trimmed by 2·(g_max − offset) for that pair, known once
        write-verify has found the stuck device): the stuck device then acts as a weight of 0
        instead of loading its node with g_max, and its partner, acting as g − g_max ∈ [g_min −
        g_max, 0], carries the pair's difference alone (a positive weight up to g_max − g_min).
        The trim is split equally between the pair's two devices, so it is a conductance of the
        node alone (the class docstring's argument); it depends only on the faults, so a
        realisation re-made from its seed has it."""
        offsets: dict[str, float | torch.Tensor] = {k: self.offset for k in self.keys}
        if not (self.model.fault_aware and self.faults):
            return offsets
        for a, b in self.pairs.items():
            stuck = (self.faults[a] == STUCK_MAX) | (self.faults[b] == STUCK_MAX)
            if bool(stuck.any()):
                trimmed = torch.full(stuck.shape, self.offset, dtype=self.cc.dtype, device=self.cc.device)
                trimmed[stuck] = self.g_max
                offsets[a] = offsets[b] = trimmed
        return offsets

    @property
    def weight_range(self) -> tuple[float, float]:
        """(lowest, highest) weight a working device gives, S: [g_min, g_max] − offset."""
        return self.g_min - self.offset, self.g_max - self.offset

    def program(self, key: str, target: torch.Tensor) -> torch.Tensor:
        """Weights after programming the weights ``target`` (S) into the devices: each is
        written to g = target + offset, write-verified to the nearest level, with the residual
        write noise."""
        m, offset = self.model, self.offsets[key]
        g = (target.detach().to(self.cc.dtype) + offset).clamp(self.g_min, self.g_max)
        if m.levels:
            g = self.g_min + torch.round((g - self.g_min) / self.step) * self.step
        if m.write_noise or m.write_noise_state:
            sigma = m.write_noise * self.g_max + m.write_noise_state * g
            g = (g + sigma * self.randn(g.shape)).clamp(self.g_min, self.g_max)
        return self._settle_faults(key, g) - offset

    def program_all(self, targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weights after programming every key's ``targets`` (in their order, each as
        :meth:`program`). With ``fault_aware``, a stuck or open device's error (the weight it
        holds minus its target) is added to its pair partner's target, where the partner works,
        so the pair's difference g+ − g− is the target's as far as the partner's range allows (a
        fault-tolerant mapping in the spirit of Xia et al., "Stuck-at fault tolerance in RRAM
        computing systems", IEEE JETCAS 8, 102 (2018))."""
        targets = {k: t.detach().to(self.cc.dtype) for k, t in targets.items()}
        if self.model.fault_aware and self.faults:
            shifted = dict(targets)
            for a, b in self.pairs.items():
                for bad, partner in ((a, b), (b, a)):
                    held = self._settle_faults(bad, torch.zeros_like(targets[bad])) - self.offsets[bad]
                    error = torch.where(self.faults[bad] == OK, 0.0, held - targets[bad])
                    shifted[partner] = shifted[partner] + torch.where(self.faults[partner] == OK, error, 0.0)
            targets = shifted
        return {k: self.program(k, t) for k, t in targets.items()}

    @property
    def ideal_updates(self) -> bool:
        m = self.model
        return not (m.levels or m.update_noise or m.asymmetry or m.soft_bounds or self.step_gain)

    def update(self, key: str, w: torch.Tensor, proposed: torch.Tensor) -> torch.Tensor:
        """Weights after asking each device to move from the weight ``w`` to ``proposed`` (S):
        whole level steps (when quantised) with cycle-to-cycle noise, up/down asymmetry, soft
        bounds and each device's own step size, acting on its conductance g = w + offset."""
        offset = self.offsets[key]
        return self._update_conductance(key, w.detach() + offset, proposed.detach() + offset) - offset

    def _update_conductance(self, key: str, g: torch.Tensor, proposed: torch.Tensor) -> torch.Tensor:
        """:meth:`update` on the devices' conductances."""
        m = self.model
        if m.update_threshold:
            proposed = self._accumulate(key, g.detach(), proposed.detach())
        if self.ideal_updates:
            return self._settle_faults(key, proposed.detach().clamp(self.g_min, self.g_max))
        g = g.detach()
        delta = proposed.detach() - g
        if m.levels:
            steps = delta / self.step
            if m.stochastic_rounding:  # P(round up) = fractional part: small updates survive on average
                pulses = torch.floor(steps + torch.rand(steps.shape, generator=self.gen, dtype=torch.float64)
                                     .to(steps.device, steps.dtype))
            else:
                pulses = torch.round(steps)
            dg = pulses * self.step
            sigma = m.update_noise * self.step * pulses.abs().sqrt()
        else:
            dg, sigma = delta, m.update_noise * delta.abs()
        if m.update_noise:
            dg = dg + sigma * self.randn(dg.shape)
        up = delta > 0
        if m.asymmetry:
            dg = torch.where(up, dg * (1 + m.asymmetry), dg * (1 - m.asymmetry))
        if m.soft_bounds:
            span = self.g_max - self.g_min
            dg = dg * torch.where(up, (self.g_max - g) / span, (g - self.g_min) / span).clamp_min(0)
        if key in self.step_gain:
            dg = dg * self.step_gain[key]
        return self._settle_faults(key, (g + dg).clamp(self.g_min, self.g_max))

    def _accumulate(self, key: str, g: torch.Tensor, proposed: torch.Tensor) -> torch.Tensor:
        """Mixed-precision updates (Nandakumar et al., "Mixed-precision deep learning based on
        computational memory", Front. Neurosci. 14, 406 (2020)): the proposed change joins the
        device's digital accumulator χ (S); the device is asked to move by n·ε, n = χ/ε rounded
        towards zero (ε = ``update_threshold``·g_max), and χ keeps the rest. Changes smaller
        than ε (noise, mostly) add up or cancel in χ instead of each costing a noisy,
        asymmetric write. Returns the conductances the device is asked for."""
        eps = self.model.update_threshold * self.g_max
        chi = self.accumulator[key] + (proposed - g)
        n = torch.trunc(chi / eps)
        self.accumulator[key] = chi - n * eps
        return g + n * eps

    # ------------------------------------------------------------------ reading
    @property
    def noisy_reads(self) -> bool:
        m = self.model
        return bool(self.noise is not None or self.nu or self.per_sample_noise
                    or (m.read_noise_model == "per_settle" and m.read_noise))

    @property
    def per_sample_noise(self) -> bool:
        """Whether part of the read noise is drawn per sample (``sequential_reads``)."""
        m = self.model
        return m.read_noise_model == "process" and m.sequential_reads and any(m.fast_read_variance(m.read_window))

    def schedule(self, phases: Sequence[str]) -> StepTimeline:
        """Reserve the next EP step's time span on the array's clock: ``phases`` back to back
        from ``time``, each settling ``settle_time`` and then reading (``readout.ep_timeline``);
        the clock moves to the step's end."""
        timeline = ep_timeline(phases, self.readout, self.model.settle_time, start=self.time)
        self.time = timeline.end
        return timeline

    def wait(self, seconds: float) -> None:
        """Let time pass with no reads (e.g. the update pulses between two EP steps)."""
        if seconds < 0:
            raise ValueError("wait: seconds ≥ 0")
        self.time += seconds

    def _flicker_gain(self) -> dict[str, torch.Tensor] | None:
        """(g/g_max)^-γ per device (0 for g = 0): the state-dependent 1/f amplitude."""
        gamma = self.model.flicker_exponent
        if not gamma:
            return None
        out = {}
        for k in self.keys:
            g = self.hardware.params[k].detach()
            g = (g + self.offsets[k] if self.shifted else g).double()
            out[k] = torch.where(g > 0, (g / self.g_max) ** -gamma, 0.0)  # g = 0 (open): no 1/f part
        return out

    def view(self, window: Window | Sequence[Window] | None = None) -> Compiled:
        """The circuit a read sees: drifted conductances times (1 + read noise), as weights
        (conductance − offset); the hardware circuit itself when reads are noiseless, so its
        operator cache is reused.

        "per_settle": noise freshly drawn with σ = ``read_noise`` on every call (``window`` is
        not used). "process": the noise process's fluctuation averaged over ``window`` (one
        (t0, t1) or several, e.g. ``phase.windows``; seconds on the array's clock, after the
        process's present time); without a window, the next phase on the array's own clock
        (``schedule(["read"])``), so a caller that views once per settle gets back-to-back phases.
        A read integrating over a window is modelled by the circuit at the window-mean
        conductances (exact to first order in the fluctuation). One view serves a whole batch:
        its samples are read in the same windows (as by parallel copies of the array)."""
        if not self.noisy_reads:
            if window is None:  # the read takes its time on the clock all the same
                self.schedule(["read"])
            return self.hardware
        m, p = self.model, dict(self.hardware.params)
        xi, windows = None, None
        if self.noise is not None or self.per_sample_noise:
            windows = self.schedule(["read"]).phases[0].windows if window is None else (
                [window] if isinstance(window[0], (int, float)) else list(window))
        if self.noise is not None:
            xi = self.noise.mean_over(windows, self._flicker_gain())
        for k in self.keys:
            g = p[k] + self.offsets[k] if self.shifted else p[k]  # the device's conductance
            if k in self.nu:
                g = g * (m.drift_time / m.drift_t0) ** (-self.nu[k])
            if xi is not None:
                g = (g * (1 + xi[k].to(g.device, g.dtype))).clamp_min(0)
            elif m.read_noise and m.read_noise_model == "per_settle":
                g = (g * (1 + m.read_noise * self.randn(g.shape))).clamp_min(0)
            p[k] = g
        if not self.per_sample_noise:
            return dataclasses.replace(self.hardware, params=self._as_weights(p), cache={})
        # the fast part of a read integrating over the phase's windows (T in all)
        white, unit = m.fast_read_variance(sum(t1 - t0 for t0, t1 in windows))
        gain = self._flicker_gain() if unit else None
        var = {k: white + (m.flicker_noise ** 2 * unit * (1.0 if gain is None else gain[k].to(p[k].dtype)))
               for k in self.keys}
        return self._with_noise_per_sample(p, var)

    def _as_weights(self, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Parameters ``p`` with the devices' conductances turned into weights (− offset)."""
        return {**p, **{k: p[k] - self.offsets[k] for k in self.keys}} if self.shifted else p

    def _with_noise_per_sample(self, p: dict[str, torch.Tensor], var: dict[str, torch.Tensor | float]) -> Compiled:
        """The circuit at device conductances ``p`` (as weights) with independent read noise of
        relative variance ``var[k]`` (per device or one number) per sample (``sequential_reads``). A device g
        between a free root i (gain γ_i) and a fixed node j (gain γ_j, value u_j) contributes
        γ_i²·g to the diagonal D_i and γ_i γ_j g u_j to the injected current f_i, so its noise ξg
        (variance σ²g²) moves (ΔD_i, Δf_i) by a jointly Gaussian pair whose variances and
        covariance are Σ_j of σ²γ_i⁴g², σ²γ_i²γ_j²g²u_j² and σ²γ_i³γ_j g²u_j: drawn per (sample,
        node) from that law — the same distribution as drawing every device's ξ, at O(B·n_free)
        draws. Devices between two free roots get one draw per batch."""
        cc, nf = self.hardware, self.hardware.n_free
        gain = cc.node_gain(p)
        dense, edges = [], []
        for blk in cc.blocks:
            if blk.name not in self.keys:
                continue
            g = p[blk.name]
            v = torch.as_tensor(var[blk.name], dtype=g.dtype, device=g.device).expand_as(g)
            g2 = g * g * v  # variance of each device's conductance noise, S²
            ra, rb = cc.root[blk.a], cc.root[blk.b]
            fa, fb = ra < nf, rb < nf
            if blk.dense and bool(fa.all()) and not bool(fb.any()):
                dense.append((ra, rb - nf, gain[blk.a], gain[blk.b], g2))
            elif blk.dense and bool(fb.all()) and not bool(fa.any()):
                dense.append((rb, ra - nf, gain[blk.b], gain[blk.a], g2.T))
            elif blk.dense:
                p[blk.name] = (g * (1 + v.sqrt() * self.randn(g.shape))).clamp_min(0)
            else:
                one = fa ^ fb
                free, fixed = torch.where(fa, ra, rb), torch.where(fa, rb, ra)
                gf, gx = torch.where(fa, gain[blk.a], gain[blk.b]), torch.where(fa, gain[blk.b], gain[blk.a])
                edges.append((free[one], fixed[one] - nf, gf[one], gx[one], g2[one]))
                both = fa & fb
                if bool(both.any()):
                    p[blk.name] = torch.where(both, (g * (1 + v.sqrt() * self.randn(g.shape))).clamp_min(0), g)
        memo: dict = {}

        def perturb(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if memo.get("u") is u and memo.get("version") == u._version:
                return memo["out"]
            B = u.shape[0]
            ext = torch.cat([u, u.new_zeros(B, 1)], dim=1)
            vD = torch.zeros(nf, dtype=cc.dtype, device=cc.device)
            vf = torch.zeros(B, nf, dtype=cc.dtype, device=cc.device)
            c = torch.zeros(B, nf, dtype=cc.dtype, device=cc.device)
            for ri, cj, gi, gj, g2 in dense:
                x = ext[:, cj] * gj  # (B, n) fixed-side voltages as the block sees them
                vD.index_add_(0, ri, gi ** 4 * g2.sum(1))
                vf.index_add_(1, ri, gi ** 2 * ((x * x) @ g2.T))
                c.index_add_(1, ri, gi ** 3 * (x @ g2.T))
            for ri, cj, gi, gj, g2 in edges:
                x = ext[:, cj] * gj
                vD.index_add_(0, ri, gi ** 4 * g2)
                vf.index_add_(1, ri, gi ** 2 * g2 * x * x)
                c.index_add_(1, ri, gi ** 3 * g2 * x)
            sd = vD.sqrt().expand(B, -1)
            z1, z2 = self.randn((B, nf)), self.randn((B, nf))
            ratio = torch.where(sd > 0, c / sd.clamp_min(1e-300), 0.0)
            dD = sd * z1
            df = ratio * z1 + (vf - ratio * ratio).clamp_min(0).sqrt() * z2
            memo.update(u=u, version=u._version, out=(dD, df))
            return dD, df

        return dataclasses.replace(cc, params=self._as_weights(p), cache={}, perturb=perturb)

    def measure(self, s: torch.Tensor) -> torch.Tensor:
        """Node voltages as the learning rule's read-out sees them: Johnson noise sqrt(kT/C),
        then an ADC of ``adc_bits`` over ±adc_range, averaged over ``read_repeats`` reads."""
        return self.readout.measure(s, self.randn)

    def read_pair(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Voltages a (read first, e.g. free) and b (read later, e.g. nudged) as measured: two
        absolute read-outs, or with ``cds`` a absolute and b − a through the differential ADC
        (``Readout.pair``)."""
        return self.readout.pair(a, b, self.randn)

    def settle_kw(self) -> dict:
        """Finite settling: a fixed number of sweeps, accepted whether converged or not."""
        return dict(method="bcd", max_iters=self.model.settle_sweeps, on_fail="ignore") if self.model.settle_sweeps else {}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The generator, the clock, the noise process and the mixed-precision accumulators:
        what exact resume needs besides the conductances (the fixed draws are re-made from the
        seed)."""
        return dict(gen=self.gen.get_state(), time=self.time,
                    noise=None if self.noise is None else self.noise.state_dict(),
                    accumulator={k: v.clone() for k, v in self.accumulator.items()})

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.time = float(state["time"])
        if (state["noise"] is None) != (self.noise is None):
            raise ValueError("device array: the saved state's read-noise model differs from this one")
        if self.noise is not None:
            self.noise.load_state_dict(state["noise"])
        if set(state.get("accumulator", {})) != set(self.accumulator):
            raise ValueError("device array: the saved state's update threshold (mixed precision) differs from this one")
        self.accumulator = {k: v.to(self.cc.device, self.cc.dtype) for k, v in state.get("accumulator", {}).items()}

"""Device non-idealities as one dataclass, with presets from published device statistics.

Conductance figures are fractions of the circuit's g_max (the config's ``train.g_max``, in
siemens), which is how device papers report them (percent of the programmable range); voltages
are in volts, times in seconds, capacitances in farads. Every field's zero value switches that
non-ideality off, so ``DeviceModel()`` is the ideal device and reproduces the ideal emulator
bit for bit.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceModel:
    # conductance range and programming
    on_off: float = math.inf  # g_max / g_min of a device (g_min = g_max / on_off)
    levels: int = 0  # programmable levels over [g_min, g_max]; writes and updates move by whole levels (0: analog)
    write_noise: float = 0.0  # σ of every write, fraction of g_max (state-independent)
    write_noise_state: float = 0.0  # σ of every write, fraction of the written conductance (state-dependent)
    # in-the-loop updates
    stochastic_rounding: bool = False  # round updates to whole levels stochastically (unbiased) instead of nearest
    update_noise: float = 0.0  # cycle-to-cycle σ of one level step (or of |Δg| when analog), relative
    asymmetry: float = 0.0  # potentiation steps × (1 + a), depression steps × (1 − a)
    soft_bounds: bool = False  # steps shrink near the bound they move towards
    d2d: float = 0.0  # device-to-device σ of each device's step size, relative (drawn once)
    # reading
    read_noise: float = 0.0  # σ of the conductance each settle sees, fraction of g (redrawn per settle)
    drift_nu: float = 0.0  # drift exponent: g(t) = g (t / drift_t0)^-ν
    drift_nu_std: float = 0.0  # device-to-device σ of ν
    drift_t0: float = 20.0  # s after programming at which g was verified
    drift_time: float = 0.0  # s after programming when the circuit is used (≤ drift_t0: no drift)
    # faults (fractions of devices, drawn once per realisation)
    stuck_min: float = 0.0  # stuck at g_min
    stuck_max: float = 0.0  # stuck at g_max
    open: float = 0.0  # open circuit (g = 0)
    # other components
    diode_is_spread: float = 0.0  # σ of ln IS per diode
    diode_n_spread: float = 0.0  # relative σ of the emission coefficient N per diode
    diode_rs_spread: float = 0.0  # σ of ln RS per diode (diodes built with series resistance RS > 0)
    amp_gain_error: float = 0.0  # relative σ of each amplifier's gain
    amp_offset: float = 0.0  # σ of each amplifier's output offset voltage, V (V_out = A·V_in + V_off)
    # measurement and settling
    johnson_capacitance: float = 0.0  # node capacitance, F: measured voltages get σ = sqrt(kT/C) (0: off)
    temperature: float = 300.15  # K, for the Johnson noise
    adc_bits: int = 0  # ADC resolution for measured node voltages (0: ideal)
    adc_range: float = 2.0  # ADC full scale ±adc_range volts
    settle_sweeps: int = 0  # stop every settle after this many sweeps (finite settling; 0: converge)

    def validate(self) -> "DeviceModel":
        odd = [f.name for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), float)
               and not math.isfinite(getattr(self, f.name)) and not (f.name == "on_off" and getattr(self, f.name) > 0)]
        if odd:
            raise ValueError(f"device model: {', '.join(odd)} must be finite (only on_off may be inf)")
        bad = [f.name for f in dataclasses.fields(self)
               if isinstance(getattr(self, f.name), (int, float)) and not isinstance(getattr(self, f.name), bool)
               and getattr(self, f.name) < 0]
        if bad:
            raise ValueError(f"device model: negative value(s) for {', '.join(bad)}")
        if self.on_off <= 1:
            raise ValueError("device model: on_off must be > 1")
        if self.levels == 1 or self.adc_bits > 24:
            raise ValueError("device model: levels must be 0 or ≥ 2, adc_bits ≤ 24")
        if not (0 <= self.asymmetry < 1) or self.stuck_min + self.stuck_max + self.open > 1:
            raise ValueError("device model: asymmetry must be in [0, 1) and fault rates sum to ≤ 1")
        return self

    @property
    def ideal(self) -> bool:
        return self == IDEAL

    def changed(self) -> dict:
        """The fields that differ from the ideal device."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(IDEAL, f.name)}

    @classmethod
    def build(cls, preset: str = "ideal", **overrides) -> "DeviceModel":
        """A preset with some fields replaced (the TOML ``[device]`` table, ``--vary`` levels)."""
        if preset not in PRESETS:
            raise ValueError(f"unknown device preset {preset!r}; choose from {', '.join(PRESETS)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise ValueError(f"unknown device setting(s) {sorted(unknown)}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(PRESETS[preset], **overrides).validate()


IDEAL = DeviceModel()

PRESETS: dict[str, DeviceModel] = {
    "ideal": IDEAL,
    # Filamentary ReRAM. Update statistics of the soft-bounds fit to Gong et al., Nat. Commun. 9, 2102
    # (2018), as published in IBM aihwkit's ReRamSBPresetDevice: ~1000 steps over the range
    # (dw_min = 0.002 of a range of 2), 30 % device-to-device step spread, cycle-to-cycle step
    # σ = 3.75 steps (here: 1000 levels, σ = 3.75 per level step); 10-14 % corrupt devices in the
    # arrays of Gong & Rasch et al., IEDM 2022 (we take 1 % stuck at each bound, 0.5 % open,
    # for a yield-screened array). On/off ratio 10 and 8-bit read-out are our assumptions.
    "reram": DeviceModel(on_off=10.0, levels=1000, update_noise=3.75, soft_bounds=True, d2d=0.3,
                         write_noise=0.01, read_noise=0.01, stuck_min=0.01, stuck_max=0.01, open=0.005,
                         adc_bits=8),
    # Phase-change memory (GST), inference statistics of Joshi et al., Nat. Commun. 11, 2473 (2020)
    # / Nandakumar et al., ICECS 2019, as documented for aihwkit's PCMLikeNoiseModel: programming
    # σ from 0.26 µS at g=0 to 1.05 µS at g_max = 25 µS (≈ 1 % of g_max + 3 % of g), drift
    # exponent ν ≈ 0.049 ± 0.008-0.045, 1/f read noise a few % of g. Evaluated 1 h after
    # programming. Updates are gradual potentiation only in PCM (abrupt RESET), modelled as a
    # strong up/down asymmetry; 8-bit read-out is our assumption.
    "pcm": DeviceModel(on_off=100.0, write_noise=0.0105, write_noise_state=0.031, read_noise=0.03,
                       drift_nu=0.049, drift_nu_std=0.02, drift_t0=20.0, drift_time=3600.0,
                       update_noise=0.6, asymmetry=0.5, d2d=0.2, adc_bits=8),
}

"""Device non-idealities as one dataclass, with presets from published device statistics.

Conductance figures are fractions of the circuit's g_max (the config's ``train.g_max``, in
siemens), which is how device papers report them (percent of the programmable range); voltages
are in volts, times in seconds, frequencies in hertz, capacitances in farads. Every field's zero
(or default) value switches that non-ideality off, so ``DeviceModel()`` is the ideal device and
reproduces the ideal emulator bit for bit.

Read noise has two models (``read_noise_model``):

* ``"per_settle"`` (default, the original model): every settle sees the conductances times
  (1 + ``read_noise``·z), z redrawn per settle — free and nudged phases independent.
* ``"process"``: read noise is a process in time (``noise.py``): white (``white_noise`` at
  ``white_bandwidth``), 1/f (``flicker_*``) and telegraph (``rtn_*``) parts, read as window
  means on the EP step's time axis (``read_window``, ``read_repeats``, ``settle_time``,
  ``adc_conversion_time``; ``readout.py``). ``read_noise`` is not used.

Two fields describe the circuit around the devices rather than the devices: ``floor_compensation``
(a negative conductance per node cancels the devices' floor g_min) and ``fault_aware``
(programming works around stuck and open devices); ``DeviceArray`` explains both.

Each model ignores the other's read-noise fields (``read_noise`` vs ``white_*``, ``flicker_*``,
``rtn_*``), so a preset carries both: ``DeviceModel.build("reram", read_noise_model="per_settle")``
is the original ReRAM preset. The read-out fields (``read_repeats``, ``cds``, ``diff_adc_*``,
with ``johnson_capacitance`` and ``adc_*``) act under both; the time axis (``read_window``,
``settle_time``, ``adc_conversion_time``) only places the process's reads and reports time.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .noise import NoiseSpec
from .readout import Readout

READ_NOISE_MODELS = ("per_settle", "process")


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
    update_threshold: float = 0.0  # mixed precision: proposed changes accumulate digitally per device and are
    #   written in whole multiples of this threshold, fraction of g_max (0: every proposal is written; DeviceArray.update)
    # reading
    read_noise_model: str = "per_settle"  # "per_settle" (read_noise) or "process" (the fields below)
    read_noise: float = 0.0  # per_settle: σ of the conductance each settle sees, fraction of g (redrawn per settle)
    white_noise: float = 0.0  # process: σ_w of the white part, fraction of g, of a read of bandwidth white_bandwidth
    white_bandwidth: float = 1e6  # Hz at which white_noise is stated (PSD σ_w²/B_w; a window T reads σ_w/√(2 B_w T))
    flicker_noise: float = 0.0  # process: Q of the 1/f part at g = g_max, S(f) = Q²/f (1/Hz; Q² ln 10 per decade)
    flicker_exponent: float = 0.0  # γ < 1: Q(g) = Q·(g/g_max)^-γ (state-dependent 1/f amplitude)
    flicker_f_min: float = 1e-3  # Hz, lowest frequency of the 1/f part
    flicker_f_max: float = 1e6  # Hz, highest frequency of the 1/f part
    sequential_reads: bool = False  # process: the samples of a batch are read one after another, so the white
    #   part is independent per sample (exact in distribution for devices joining a free node to a fixed one;
    #   shared per batch for devices between two free nodes); the slow parts (1/f, telegraph) are shared
    rtn_fraction: float = 0.0  # process: fraction of devices with a random-telegraph trap
    rtn_amplitude: float = 0.0  # relative conductance step between the trap's two states
    rtn_tau_up: float = 0.0  # s, mean dwell time in the high-conductance state
    rtn_tau_down: float = 0.0  # s, mean dwell time in the low-conductance state
    drift_nu: float = 0.0  # drift exponent: g(t) = g (t / drift_t0)^-ν
    drift_nu_std: float = 0.0  # device-to-device σ of ν
    drift_t0: float = 20.0  # s after programming at which g was verified
    drift_time: float = 0.0  # s after programming when the circuit is used (≤ drift_t0: no drift)
    # circuit around the devices
    floor_compensation: float = 0.0  # α in [0, 1]: every free node gets a negative conductance −α·g_min per device
    #   attached (a negative-impedance converter trimmed once; noiseless, our assumption), so a device at g acts as a
    #   conductance g − α·g_min: the floor g_min no longer loads the nodes (DeviceArray, "Weights and conductances")
    fault_aware: bool = False  # programming knows which devices are stuck or open (write-verify finds them) and moves
    #   each one's pair partner (g+ of g−, and back) so that the pair's difference g+ − g− stays the target's
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
    # read-out and the EP step's time axis (readout.py)
    read_window: float = 1e-6  # s, integration window of one read (process: the window its noise is averaged over)
    read_repeats: int = 1  # reads averaged per phase (each with its own Johnson noise and conversion)
    cds: bool = False  # correlated double sampling: nudged − free converted by a differential ADC
    diff_adc_bits: int = 0  # differential ADC resolution for the nudged − free difference (0: ideal)
    diff_adc_range: float = 0.1  # differential ADC full scale ±V
    adc_conversion_time: float = 0.0  # s per ADC conversion (time cost only)
    settle_time: float = 0.0  # s each phase settles before its reads (time axis only; rc_settle_time gives one)

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
        if self.read_noise_model not in READ_NOISE_MODELS:
            raise ValueError(f"device model: read_noise_model must be one of {READ_NOISE_MODELS}")
        if self.floor_compensation > 1:
            raise ValueError("device model: floor_compensation must be in [0, 1]")
        if self.flicker_exponent >= 1 or self.diff_adc_bits > 24:
            raise ValueError("device model: flicker_exponent must be < 1, diff_adc_bits ≤ 24")
        self.noise_spec()  # validates the process fields
        self.readout()  # validates the read-out fields
        return self

    def noise_spec(self) -> NoiseSpec | None:
        """The read-noise process of the "process" model (None under "per_settle" or when it
        is silent). Its 1/f amplitude is Q at g_max; DeviceArray applies (g/g_max)^-γ."""
        if self.read_noise_model != "process":
            return None
        white, flicker, f_max = self.white_noise, self.flicker_noise, self.flicker_f_max
        if self.sequential_reads:  # white and 1/f faster than a phase: drawn per sample by DeviceArray
            white, f_max = 0.0, min(f_max, self.split_frequency)
            flicker = flicker if self.flicker_f_min < f_max else 0.0
        spec = NoiseSpec(white=white, bandwidth=self.white_bandwidth, flicker=flicker,
                         f_min=self.flicker_f_min, f_max=f_max, rtn_fraction=self.rtn_fraction,
                         rtn_amplitude=self.rtn_amplitude, rtn_tau_up=self.rtn_tau_up, rtn_tau_down=self.rtn_tau_down)
        return spec if spec.active else None

    @property
    def phase_time(self) -> float:
        """s of one phase of one sample: settling, then ``read_repeats`` windows and conversions."""
        return self.settle_time + self.read_repeats * (self.read_window + self.adc_conversion_time)

    @property
    def split_frequency(self) -> float:
        """Hz: with ``sequential_reads``, noise faster than 1/phase_time decorrelates within a
        phase and is drawn per sample and per phase; slower noise is one process shared by the
        batch (conservative for the components between 1/phase_time and 1/(batch duration),
        which are in fact independent between samples but mostly cancelled by CDS)."""
        return 1.0 / self.phase_time

    def fast_read_variance(self, window: float) -> tuple[float, float]:
        """Per-read relative variances of the part drawn per sample (``sequential_reads``) for a
        read integrating ``window`` s: the white part σ_w²/(2 B_w T), and the 1/f part above
        ``split_frequency`` per unit Q² (to be scaled by each device's Q(g)²)."""
        white = self.white_noise ** 2 / (2 * self.white_bandwidth * window) if self.white_noise else 0.0
        f_min = max(self.flicker_f_min, self.split_frequency)
        unit = (NoiseSpec(flicker=1.0, f_min=f_min, f_max=self.flicker_f_max).read_covariance(window)
                if self.flicker_noise and self.flicker_f_max > f_min else 0.0)
        return white, unit

    def readout(self) -> Readout:
        """The read-out these fields describe."""
        return Readout(window=self.read_window, repeats=self.read_repeats, cds=self.cds, adc_bits=self.adc_bits,
                       adc_range=self.adc_range, diff_bits=self.diff_adc_bits, diff_range=self.diff_adc_range,
                       conversion_time=self.adc_conversion_time, johnson_capacitance=self.johnson_capacitance,
                       temperature=self.temperature)

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

# Read-out and time axis shared by the presets (our assumptions): phases settle for 1 µs (the RC
# time of ~1 pF nodes on ~10 µS to 0.1 %: 1e-12/1e-5 × ln(1000) ≈ 0.7 µs); an 8-bit SAR ADC
# converts in 100 ns (10 MS/s).
SETTLE_TIME = 1e-6
CONVERSION_TIME = 1e-7
# The lowest 1/f frequency: 1/(1 h). For PCM this is aihwkit's integration limit at the preset's
# 1 h after programming (below); for ReRAM it is our assumption (a training session's horizon —
# slower fluctuations act as a static programming error within it).
HOUR_F_MIN = 1 / 3600.0

PRESETS: dict[str, DeviceModel] = {
    "ideal": IDEAL,
    # Filamentary ReRAM. Update statistics of the soft-bounds fit to Gong et al., Nat. Commun. 9, 2102
    # (2018), as published in IBM aihwkit's ReRamSBPresetDevice: ~1000 steps over the range
    # (dw_min = 0.002 of a range of 2), 30 % device-to-device step spread, cycle-to-cycle step
    # σ = 3.75 steps (here: 1000 levels, σ = 3.75 per level step); 10-14 % corrupt devices in the
    # arrays of Gong & Rasch et al., IEDM 2022 (we take 1 % stuck at each bound, 0.5 % open,
    # for a yield-screened array). On/off ratio 10 and 8-bit read-out are our assumptions.
    # Read noise, "process" model: 1/f + random-telegraph read noise of analog filamentary
    # CMO/HfOx ReRAM, Lombardo et al., "Read noise analysis in analog conductive-metal-oxide/HfOx
    # ReRAM devices", Device Research Conference 2024 (doi:10.1109/DRC61706.2024.10643760), as
    # implemented in aihwkit's ReRamCMONoiseModel: σ_G = 0.0277·log10(g/µS)·√ln((t + t_read)/(2 t_read))
    # µS with t_read = 1 µs read pulses over g = 8-90 µS, i.e. S_G/G² = Q(g)²/f with
    # Q(g) = 0.0277·log10(g/µS)/(g/µS); our power-law fit Q = 6.2e-4·(g/g_max)^-0.69 (g_max = 90 µS,
    # within 5 % over 9-90 µS = the on/off ratio 10). The fit lumps RTN into the 1/f amplitude, so
    # no separate telegraph part (RTN amplitudes grow with resistance and vary device to device:
    # Ambrogio et al., IEEE TED 61, 2920 (2014); Veksler et al., IRPS 2013). f_max = 1/(2 t_read) =
    # 500 kHz and the 1 µs read window follow the source's read pulse. White part: aihwkit's
    # ReRAM models advise adding "about 1 %" short-term read noise per read (forward.w_noise =
    # 0.01); we state it as σ_w = 1 % at the bandwidth of a 1 µs read (500 kHz, our reading).
    # The original per-settle model (read_noise = 1 %) remains: read_noise_model="per_settle".
    "reram": DeviceModel(on_off=10.0, levels=1000, update_noise=3.75, soft_bounds=True, d2d=0.3,
                         write_noise=0.01, read_noise=0.01, stuck_min=0.01, stuck_max=0.01, open=0.005,
                         adc_bits=8, read_noise_model="process", white_noise=0.01, white_bandwidth=5e5,
                         flicker_noise=6.2e-4, flicker_exponent=0.69, flicker_f_min=HOUR_F_MIN, flicker_f_max=5e5,
                         read_window=1e-6, settle_time=SETTLE_TIME, adc_conversion_time=CONVERSION_TIME),
    # Phase-change memory (GST), inference statistics of Joshi et al., Nat. Commun. 11, 2473 (2020)
    # / Nandakumar et al., ICECS 2019, as documented for aihwkit's PCMLikeNoiseModel: programming
    # σ from 0.26 µS at g=0 to 1.05 µS at g_max = 25 µS (≈ 1 % of g_max + 3 % of g), drift
    # exponent ν ≈ 0.049 ± 0.008-0.045. Evaluated 1 h after programming. Updates are gradual
    # potentiation only in PCM (abrupt RESET), modelled as a strong up/down asymmetry; 8-bit
    # read-out is our assumption.
    # Read noise, "process" model: the same source's 1/f read noise S_G/G² = Q_s²/f with
    # Q_s = min(0.0088·(g/g_max)^-0.65, 0.2) (the cap is not reached above g_max/100 = g_min here),
    # which aihwkit integrates from f_min = 1/t (t = time since programming, 1 h here) to
    # f_max = 1/(2 t_read), t_read = 250 ns: σ/g = Q_s·√ln((t + t_read)/(2 t_read)) ≈ 4.2 % at g_max,
    # up to ≈ 84 % at g_min. Read window = t_read. No white or telegraph part in the source.
    # The original per-settle model (read_noise = 3 %, "1/f read noise a few % of g") remains:
    # read_noise_model="per_settle".
    "pcm": DeviceModel(on_off=100.0, write_noise=0.0105, write_noise_state=0.031, read_noise=0.03,
                       drift_nu=0.049, drift_nu_std=0.02, drift_t0=20.0, drift_time=3600.0,
                       update_noise=0.6, asymmetry=0.5, d2d=0.2, adc_bits=8,
                       read_noise_model="process", flicker_noise=0.0088, flicker_exponent=0.65,
                       flicker_f_min=HOUR_F_MIN, flicker_f_max=2e6, read_window=250e-9,
                       settle_time=SETTLE_TIME, adc_conversion_time=CONVERSION_TIME),
}

"""Read noise as a process in time: what a device's conductance does between and during reads.

Every trainable device's read conductance is ``g_read(t) = g · (1 + ξ(t))`` with a relative
fluctuation ξ made of three independent parts (all dimensionless, per device):

White part
    One-sided power spectral density (PSD) ``S_w = σ_w² / B_w`` (1/Hz): ``σ_w`` is the relative
    standard deviation a read of noise bandwidth ``B_w`` (Hz) sees. Convention: a read is the
    mean of ξ over an integration window of T seconds (a boxcar integrator), whose noise
    bandwidth is 1/(2T), so its variance is ``S_w / (2T) = σ_w² / (2 B_w T)``: σ_w at
    T = 1/(2 B_w), and σ of a window mean ∝ T^(-1/2). Window means of disjoint windows are
    independent.

1/f (flicker) part
    ``S(f) = Q² / f`` for ``f_min ≤ f ≤ f_max`` (Hooge-like: S_G/G² = α_H/(N f) is Q² = α_H/N;
    "Q_s" in the PCM model of aihwkit / Joshi et al., Nat. Commun. 11, 2473 (2020) is this Q).
    Q² is the variance per unit of ln f, i.e. ``Q² ln 10`` per decade, and the total variance
    is ``Q² ln(f_max / f_min)``. It is built as a sum of Ornstein–Uhlenbeck (OU) processes
    (Lorentzian spectra) with corner frequencies f_k spaced evenly in ln f, ``per_decade`` per
    decade, at the centres of N equal bins of ln f over [f_min, f_max] of width
    Δ = ln(f_max/f_min)/N; each has time constant τ_k = 1/(2π f_k) and stationary variance
    σ_k² = Q² Δ. An OU process of variance σ² and time constant τ has the one-sided PSD
    4σ²τ / (1 + (2πfτ)²); summed over a density of τ uniform in ln τ with variance Q² per unit
    ln τ it gives ∫ 4Q²τ/(1+(2πfτ)²) dτ/τ = Q²/f, the classic superposition of relaxation
    processes behind 1/f noise (McWhorter 1957; Dutta & Horn, Rev. Mod. Phys. 53, 497 (1981)).
    Slow components are nearly constant between two reads close in time, so window means do
    NOT average down like white noise, and the difference of two close reads (correlated
    double sampling) cancels most of them.

Random telegraph noise (optional)
    A fraction of the devices carries one two-state trap: ``ξ_rtn = A (s − p)`` with s = 1 in
    the high-conductance ("up") state and 0 in the low one, mean dwell times τ_up and τ_down
    (exponentially distributed: a Markov process), p = τ_up/(τ_up + τ_down) its probability of
    being up (so ξ_rtn has zero mean and peak-to-peak relative amplitude A). Its correlation
    time is τ_c = τ_up τ_down / (τ_up + τ_down), its autocovariance A² p(1−p) e^(−|t|/τ_c).

Exact time stepping (any, irregular, time axis)
    OU state x over a step of Δt seconds, u = Δt/τ, e = e^(−u): ``x(t+Δt) = e x + σ √(1−e²) z₁``
    (exact transition). The integral I = ∫ x dt over a window of length Δt given its start
    value x₀ is Gaussian and jointly Gaussian with the end value; with a = 1 − e,
    E[I | x₀] = τ a x₀, Var[I | x₀] = σ²τ²(2u − 2a − a²), Cov[I, x(t+Δt) | x₀] = σ²τ a²
    (Gillespie, Phys. Rev. E 54, 2084 (1996); they follow from integrating the conditional
    covariance σ²(e^(−|s−s'|/τ) − e^(−(s+s')/τ)) over the window). Sampling the end value first
    and then I given it:
    ``I = τ a x₀ + σ τ a √tanh(u/2) z₁ + σ τ √(2(u − 2 tanh(u/2))) z₂`` with independent
    standard normals z₁ (shared with the end value) and z₂; the conditional variance
    2(u − 2 tanh(u/2)) = u³/6 − u⁵/60 + … is taken from its series for small u (no
    cancellation). The telegraph part advances exactly too: over Δt without a read,
    P(up at t+Δt) = p + (s − p) e^(−Δt/τ_c); inside a read window its dwell times are drawn one
    by one (memoryless, so the residual dwell at any instant is again exponential) and the time
    spent up is summed, exactly.
    A read takes the gap before it and its window as one Gaussian transition: per device, one
    normal per component for its end state, and one for the sum over the components of what
    their window means add beyond it (only the sum is read), L + 1 draws for L components
    instead of 3L.

Using it (the EP estimators)
    ``NoiseProcess(spec, shapes, seed)`` holds each device's state, its own ``torch.Generator``
    and the current time ``time`` (s). Time only runs forward: ``advance(t)`` moves the state
    to t; ``window_mean(t0, t1)`` returns, for every key, the relative fluctuation ξ averaged
    over [t0, t1] (what a read integrating over that window sees) and leaves the process at t1;
    ``mean_over(windows)`` averages several disjoint windows (repeated reads). Reads of the
    phases of one EP step are successive windows on one time axis (see ``readout.ep_timeline``):
    a free and a nudged read D seconds apart share the 1/f components slower than ~1/D. ``NoiseSpec.psd(f)``
    and ``NoiseSpec.read_covariance(T, lag)`` give the spectrum (e.g. at a lock-in frequency)
    and the exact covariance of two reads, for choosing windows and predicting residuals.
    ``state_dict()`` / ``load_state_dict()`` resume exactly (state, time and generator).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

SMALL_U = 1e-2  # below this u = Δt/τ the OU integral's conditional variance is taken from its series
CLOCK_ULPS = 8  # a read starting this many float64 units before the present time starts at the present time


@dataclass(frozen=True)
class NoiseSpec:
    """The statistics of the read-noise process (relative to g; see the module docstring)."""

    white: float = 0.0  # σ_w: relative σ of a read of noise bandwidth ``bandwidth``
    bandwidth: float = 1e6  # B_w, Hz: the bandwidth at which ``white`` is stated (S_w = σ_w²/B_w)
    flicker: float = 0.0  # Q: one-sided relative PSD S(f) = Q²/f (Q² per unit ln f)
    f_min: float = 1e-3  # Hz, lowest 1/f corner
    f_max: float = 1e6  # Hz, highest 1/f corner
    per_decade: int = 3  # OU (Lorentzian) components per decade of [f_min, f_max]
    rtn_fraction: float = 0.0  # fraction of devices with a telegraph trap
    rtn_amplitude: float = 0.0  # A: relative conductance step between the two trap states
    rtn_tau_up: float = 0.0  # s, mean dwell time in the high-conductance state
    rtn_tau_down: float = 0.0  # s, mean dwell time in the low-conductance state

    def __post_init__(self) -> None:
        if any(getattr(self, f.name) < 0 for f in dataclasses.fields(self)):
            raise ValueError("noise: amplitudes, frequencies and times must be ≥ 0")
        if self.white and self.bandwidth <= 0:
            raise ValueError("noise: white noise needs a bandwidth > 0 Hz")
        if self.flicker and not (0 < self.f_min < self.f_max and self.per_decade >= 1):
            raise ValueError("noise: 1/f noise needs 0 < f_min < f_max and per_decade ≥ 1")
        if self.rtn_fraction and not (self.rtn_fraction <= 1 and self.rtn_amplitude > 0
                                      and self.rtn_tau_up > 0 and self.rtn_tau_down > 0):
            raise ValueError("noise: telegraph noise needs a fraction ≤ 1, an amplitude > 0 and dwell times > 0 s")

    @property
    def active(self) -> bool:
        return bool(self.white or self.flicker or self.rtn_fraction)

    # ------------------------------------------------------------------ components
    def corners(self) -> torch.Tensor:
        """Corner frequencies f_k (Hz) of the OU components of the 1/f part (empty without it)."""
        if not self.flicker:
            return torch.zeros(0, dtype=torch.float64)
        decades = math.log10(self.f_max / self.f_min)
        n = max(1, math.ceil(self.per_decade * decades - 1e-9))
        return self.f_min * (self.f_max / self.f_min) ** ((torch.arange(n, dtype=torch.float64) + 0.5) / n)

    def corner_variances(self) -> torch.Tensor:
        """Stationary variance σ_k² of each OU component: Q² × its bin's width in ln f."""
        f = self.corners()
        return torch.full_like(f, self.flicker ** 2 * math.log(self.f_max / self.f_min) / max(len(f), 1))

    @property
    def rtn_p_up(self) -> float:
        """p = τ_up/(τ_up + τ_down): probability that a trap is in its high-conductance state."""
        return self.rtn_tau_up / (self.rtn_tau_up + self.rtn_tau_down)

    @property
    def rtn_tau(self) -> float:
        """τ_c = τ_up τ_down/(τ_up + τ_down), s: the telegraph signal's correlation time."""
        return self.rtn_tau_up * self.rtn_tau_down / (self.rtn_tau_up + self.rtn_tau_down)

    def _lorentzians(self) -> list[tuple[float, float]]:
        """(variance, time constant in s) of every exponentially correlated part, the telegraph
        part weighted by the fraction of devices that have one (a device average)."""
        parts = [(float(v), 1.0 / (2 * math.pi * float(f))) for v, f in zip(self.corner_variances(), self.corners())]
        if self.rtn_fraction:
            p = self.rtn_p_up
            parts.append((self.rtn_fraction * self.rtn_amplitude ** 2 * p * (1 - p), self.rtn_tau))
        return parts

    # ------------------------------------------------------------------ statistics
    def psd(self, f: torch.Tensor | float) -> torch.Tensor:
        """One-sided PSD of ξ (1/Hz) at frequencies f (Hz), averaged over devices: σ_w²/B_w
        + Σ 4σ_k²τ_k/(1 + (2πfτ_k)²) (the 1/f part ≈ Q²/f inside [f_min, f_max])."""
        f = torch.as_tensor(f, dtype=torch.float64)
        out = torch.full_like(f, self.white ** 2 / self.bandwidth if self.white else 0.0)
        for var, tau in self._lorentzians():
            out = out + 4 * var * tau / (1 + (2 * math.pi * f * tau) ** 2)
        return out

    def read_covariance(self, window: float, lag: float = 0.0) -> float:
        """Covariance of two reads (window means of ξ over ``window`` seconds) whose starts are
        ``lag`` seconds apart (lag = 0: the variance of one read; lag ≥ window: disjoint
        windows), averaged over devices. White: S_w/(2T) at lag 0, else 0. Each exponentially
        correlated part (variance σ², time constant τ, u = T/τ): 2σ²(u − 1 + e^(−u))/u² at lag 0;
        σ² (τ/T)² (1 − e^(−u))² e^(−(lag − T)/τ) for lag ≥ T."""
        if window <= 0 or (0 < lag < window):
            raise ValueError("read_covariance: window > 0 s and lag = 0 or lag ≥ window")
        out = self.white ** 2 / (2 * self.bandwidth * window) if (self.white and lag == 0) else 0.0
        for var, tau in self._lorentzians():
            u = window / tau
            if lag == 0:
                out += var * _box_variance(u)
            else:
                out += var * (-math.expm1(-u) / u) ** 2 * math.exp(-(lag - window) / tau)
        return out


def _box_variance(u: float) -> float:
    """2(u − 1 + e^(−u))/u²: variance of the window mean of a unit-variance OU process over a
    window of u time constants (series 1 − u/3 + u²/12 − u³/60 below SMALL_U)."""
    if u < SMALL_U:
        return 1 - u / 3 + u ** 2 / 12 - u ** 3 / 60
    return 2 * (u + math.expm1(-u)) / u ** 2


def _ou_integral_std(u: torch.Tensor) -> torch.Tensor:
    """√(2(u − 2 tanh(u/2))): σ of ∫x dt/(στ) given both end values of a unit OU over u time
    constants (series u³/6 − u⁵/60 + 17u⁷/10080 below SMALL_U)."""
    series = u ** 3 / 6 - u ** 5 / 60 + 17 * u ** 7 / 10080
    direct = 2 * (u - 2 * torch.tanh(u / 2))
    return torch.where(u < SMALL_U, series, direct).clamp_min(0).sqrt()


class NoiseProcess:
    """Per-device read-noise state for conductance tensors of the given shapes (see the module
    docstring). State is float64 on ``device``; draws come from this process's own generator
    (on ``device``: CPU and GPU runs give different, equally distributed draws)."""

    def __init__(self, spec: NoiseSpec, shapes: Mapping[str, Sequence[int]], seed: int = 0,
                 device: str | torch.device = "cpu", start: float = 0.0):
        self.spec = spec
        self.shapes = {k: tuple(s) for k, s in shapes.items()}
        self.device = torch.device(device)
        self.gen = torch.Generator(self.device).manual_seed(seed)
        self.time = float(start)
        f = spec.corners().to(self.device)
        self.tau = 1.0 / (2 * math.pi * f)  # (L,) s
        self.sigma = spec.corner_variances().to(self.device).sqrt()  # (L,)
        # stationary start: every component drawn from its stationary distribution
        self.ou = {k: self._expand(self.sigma, s) * self._randn((len(f), *s)) for k, s in self.shapes.items()}
        self.rtn_index: dict[str, torch.Tensor] = {}
        self.rtn_up: dict[str, torch.Tensor] = {}
        if spec.rtn_fraction:
            for k, s in self.shapes.items():
                has = self._rand(s).reshape(-1) < spec.rtn_fraction
                self.rtn_index[k] = has.nonzero().reshape(-1)
                self.rtn_up[k] = self._rand(self.rtn_index[k].shape) < spec.rtn_p_up

    # ------------------------------------------------------------------ draws
    def _randn(self, shape, promote: bool = True) -> torch.Tensor:
        """Standard normals, drawn in float32 (about 5× faster than float64 on a CPU, and
        plenty for noise: 7 significant digits); promoted to the state's float64 unless
        ``promote`` is False (the caller mixes them into float64 itself)."""
        z = torch.randn(shape, generator=self.gen, dtype=torch.float32, device=self.device)
        return z.double() if promote else z

    def _rand(self, shape) -> torch.Tensor:
        return torch.rand(shape, generator=self.gen, dtype=torch.float64, device=self.device)

    def _exponential(self, shape, mean: torch.Tensor) -> torch.Tensor:
        e = torch.empty(shape, dtype=torch.float64, device=self.device).exponential_(1.0, generator=self.gen)
        return e * mean

    @staticmethod
    def _expand(v: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """A per-component (L,) vector shaped to broadcast over (L, *shape)."""
        return v.reshape(-1, *([1] * len(shape)))

    # ------------------------------------------------------------------ time
    def _check(self, t: float) -> float:
        """t (s) as a time at or after ``time``; a t earlier by float rounding of a computed time
        axis (≤ CLOCK_ULPS units in the last place of ``time``) is ``time`` itself."""
        t = float(t)
        if t < self.time - CLOCK_ULPS * math.ulp(self.time):
            raise ValueError(f"noise process: time runs forward (now {self.time} s, asked for {t} s)")
        return max(t, self.time)

    def advance(self, t: float) -> None:
        """Move every device's state from ``time`` to t (s) with the exact transition laws."""
        t = self._check(t)
        dt = t - self.time
        if dt == 0:
            return
        e = torch.exp(-dt / self.tau)
        scale = self.sigma * torch.sqrt(-torch.expm1(-2 * dt / self.tau))
        for k, s in self.shapes.items():
            self.ou[k] = self._expand(e, s) * self.ou[k] + self._expand(scale, s) * self._randn(self.ou[k].shape)
        self._advance_telegraph(dt)
        self.time = t

    def _advance_telegraph(self, dt: float) -> None:
        """The telegraph traps' exact transition over dt s without a read."""
        if self.spec.rtn_fraction and dt > 0:
            p, decay = self.spec.rtn_p_up, math.exp(-dt / self.spec.rtn_tau)
            for k, up in self.rtn_up.items():
                self.rtn_up[k] = self._rand(up.shape) < p + (up.double() - p) * decay

    def _ou_read_laws(self, gap: float, T: float) -> tuple[torch.Tensor, ...]:
        """Per OU component (each (L,)), for a read over [t0, t0 + T] that starts ``gap`` s after
        the present state x: the end state is x₁ = A x + S ζ, and the window mean is
        m = a x + b ζ + r η, with ζ, η independent standard normals and η's part summed over
        the components (only the sum is read). With the window's exact law (module docstring:
        x(t0) = e_g x + s_g w, e_g = e^(−gap/τ), s_g² = σ²(1 − e_g²); m = c₀ x(t0) + c₁ z₁ + c₂ z₂,
        x₁ = e x(t0) + c_z z₁), (x₁, m) given x is Gaussian with Var x₁ = V = e² s_g² + c_z²,
        Cov = e c₀ s_g² + c_z c₁, Var m = c₀² s_g² + c₁² + c₂²; regressing m on x₁ gives
        b = Cov/√V and the residual variance r² = Var m − Cov²/V (clamped at 0 against rounding)."""
        tau, sigma = self.tau, self.sigma
        u = T / tau
        e, a = torch.exp(-u), -torch.expm1(-u)
        e_gap = torch.exp(-gap / tau)
        s_gap2 = sigma ** 2 * -torch.expm1(-2 * gap / tau)
        c0 = tau * a / T
        c1 = sigma * tau * a * torch.sqrt(torch.tanh(u / 2)) / T
        c2 = sigma * tau * _ou_integral_std(u) / T
        cz = sigma * torch.sqrt(-torch.expm1(-2 * u))
        V = sigma ** 2 * -torch.expm1(-2 * (gap + T) / tau)  # = e² s_g² + c_z², without the cancellation
        cov = e * c0 * s_gap2 + cz * c1
        S = V.sqrt()
        b = torch.where(S > 0, cov / S.clamp_min(1e-300), 0.0)
        r2 = (c0 ** 2 * s_gap2 + c1 ** 2 + c2 ** 2 - b * b).clamp_min(0)
        return e * e_gap, S, c0 * e_gap, b, r2

    def window_mean(self, t0: float, t1: float, flicker_gain: Mapping[str, torch.Tensor] | None = None
                    ) -> dict[str, torch.Tensor]:
        """ξ averaged over [t0, t1] (s) for every device, by key (float64, on ``device``); the
        process moves from its present time to t1. ``flicker_gain[key]`` (broadcastable to
        the key's shape) multiplies that key's 1/f part (a state-dependent amplitude).

        Exact in law, at L + 1 normal draws per device for L components (the gap before the
        window and the window in one transition, :meth:`_ou_read_laws`; the parts of the
        components' window means that do not enter their end states summed into one draw)."""
        t0 = self._check(t0)
        if not float(t1) > t0:
            raise ValueError("noise process: a read window needs t1 > t0")
        gap, T = t0 - self.time, float(t1) - t0
        self._advance_telegraph(gap)
        spec = self.spec
        A, S, a, b, r2 = self._ou_read_laws(gap, T)
        r = r2.sum().sqrt()
        out = {}
        for k, s in self.shapes.items():
            x0 = self.ou[k]
            if x0.shape[0]:  # L components, flattened to (L, devices) for the sums over them
                zeta = self._randn(x0.shape, promote=False)
                flat_x, flat_z = x0.reshape(x0.shape[0], -1), zeta.reshape(x0.shape[0], -1)
                mean = (a @ flat_x + (b.float() @ flat_z).double()).reshape(s) + r * self._randn(s)
                self.ou[k] = (self._expand(A, s) * x0).addcmul_(self._expand(S, s), zeta)
            else:
                mean = torch.zeros(s, dtype=torch.float64, device=self.device)
            if flicker_gain is not None and k in flicker_gain:
                mean = mean * flicker_gain[k].to(self.device, torch.float64)
            if spec.white:
                mean = mean + spec.white / math.sqrt(2 * spec.bandwidth * T) * self._randn(s)
            if spec.rtn_fraction:
                mean = mean.reshape(-1).index_add(0, self.rtn_index[k], self._telegraph_mean(k, t0, float(t1))).reshape(s)
            out[k] = mean
        self.time = float(t1)
        return out

    def _telegraph_mean(self, key: str, t0: float, t1: float) -> torch.Tensor:
        """A(fraction of [t0, t1] spent up − p) for the trapped devices of ``key``; the dwell
        times inside the window are drawn one by one (cost: the most switches any device makes)."""
        spec = self.spec
        up = self.rtn_up[key].clone()
        tau_up, tau_down = (torch.tensor(v, dtype=torch.float64, device=self.device)
                            for v in (spec.rtn_tau_up, spec.rtn_tau_down))
        now = torch.full(up.shape, t0, dtype=torch.float64, device=self.device)
        time_up = torch.zeros_like(now)
        running = torch.ones_like(up)
        while bool(running.any()):
            mean_dwell = torch.where(up, tau_up, tau_down)
            leave = now + self._exponential(up.shape, mean_dwell)
            stop = torch.clamp(leave, max=t1)
            time_up = time_up + torch.where(running & up, stop - now, 0.0)
            switches = running & (leave < t1)
            up = up ^ switches
            now = torch.where(running, stop, now)
            running = switches
        self.rtn_up[key] = up
        return spec.rtn_amplitude * (time_up / (t1 - t0) - spec.rtn_p_up)

    def mean_over(self, windows: Sequence[tuple[float, float]],
                  flicker_gain: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """ξ averaged over several disjoint windows in time order (repeated reads averaged):
        Σ (t1 − t0) ξ̄ᵢ / Σ (t1 − t0), by key."""
        total = sum(t1 - t0 for t0, t1 in windows)
        out: dict[str, torch.Tensor] = {}
        for t0, t1 in windows:
            for k, v in self.window_mean(t0, t1, flicker_gain).items():
                out[k] = out.get(k, 0) + v * ((t1 - t0) / total)
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue with identical draws."""
        return dict(spec=dataclasses.asdict(self.spec), shapes=self.shapes, time=self.time,
                    gen=self.gen.get_state(), ou={k: v.clone() for k, v in self.ou.items()},
                    rtn_index={k: v.clone() for k, v in self.rtn_index.items()},
                    rtn_up={k: v.clone() for k, v in self.rtn_up.items()})

    def load_state_dict(self, state: Mapping) -> None:
        if state["spec"] != dataclasses.asdict(self.spec) or dict(state["shapes"]) != self.shapes:
            raise ValueError("noise process: the saved state belongs to another noise model or circuit")
        self.time = float(state["time"])
        self.gen.set_state(state["gen"])
        self.ou = {k: v.to(self.device) for k, v in state["ou"].items()}
        self.rtn_index = {k: v.to(self.device) for k, v in state["rtn_index"].items()}
        self.rtn_up = {k: v.to(self.device) for k, v in state["rtn_up"].items()}

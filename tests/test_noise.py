"""Read noise as a process in time (devices/noise.py), the read-out and the EP step's time axis
(devices/readout.py), and how DeviceArray uses them. Statistical tests use fixed seeds; each
states its tolerance, which is several standard errors of the estimate (e.g. 40,000 devices:
the σ of a standard deviation estimate is 0.35 %, of a variance 0.7 %)."""
import copy
import io
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.signal
import torch

from analog_ep.circuit import layered
from analog_ep.circuit.constants import BOLTZMANN
from analog_ep.devices import (DeviceArray, DeviceModel, NoiseProcess, NoiseSpec, Readout, ep_timeline, quantise,
                               rc_settle_time)
from analog_ep.emulator import compile_circuit

N = 40_000
G_MAX = 1e-4


def process(seed: int = 0, n: int = N, **spec) -> NoiseProcess:
    return NoiseProcess(NoiseSpec(**spec), {"g": (n,)}, seed=seed)


def read(p: NoiseProcess, t0: float, T: float) -> torch.Tensor:
    return p.window_mean(t0, t0 + T)["g"]


def rel(a, b):
    return abs(a - b) / abs(b)


def normal(seed: int):
    """Standard normal draws of a shape from a seeded generator (a read-out's noise source)."""
    gen = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(shape, generator=gen, dtype=torch.float64)


# ---------------------------------------------------------------------- the process
def test_white_window_mean_sigma_scales_as_inverse_sqrt_of_the_window():
    """σ of a window mean = σ_w/√(2 B_w T) (σ_w at T = 1/(2 B_w)); tolerance 2 % per window
    (≈ 6 standard errors), fitted log-log slope −0.5 ± 0.01."""
    p = process(white=0.01, bandwidth=1e6)
    Ts = [1e-7, 5e-7, 1e-5, 1e-3]
    sig = [float(read(p, p.time + 1e-3, T).std()) for T in Ts]
    for T, s in zip(Ts, sig):
        assert rel(s, 0.01 / math.sqrt(2 * 1e6 * T)) < 0.02
    assert rel(sig[1], 0.01) < 0.02  # T = 1/(2 B_w): σ_w itself
    assert abs(np.polyfit(np.log(Ts), np.log(sig), 1)[0] + 0.5) < 0.01
    a, b = read(p, p.time, 1e-6), read(p, p.time, 1e-6)  # disjoint windows are independent
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.02


def test_flicker_psd_has_slope_minus_one_over_three_decades():
    """Welch PSD of evenly sampled window means (16 devices; three sampling rates, each fitted
    over one decade well below its Nyquist frequency, boxcar sinc² divided out): slope −1 ± 0.1
    over 0.1-100 Hz inside [f_min, f_max] = [1 mHz, 10 kHz], level Q²/f within 10 %."""
    Q = 0.01
    p = process(n=16, flicker=Q, f_min=1e-3, f_max=1e4)
    f_all, S_all = [], []
    for dt, (lo, hi) in [(1e-3, (10, 100)), (1e-2, (1, 10)), (1e-1, (0.1, 1))]:
        start = p.time
        x = np.stack([read(p, start + i * dt, dt).numpy() for i in range(2048)])
        f, S = scipy.signal.welch(x, fs=1 / dt, nperseg=512, axis=0)
        S = S.mean(1) / np.sinc(f * dt) ** 2
        band = (f >= lo) & (f < hi)
        f_all.append(f[band])
        S_all.append(S[band])
    f, S = np.concatenate(f_all), np.concatenate(S_all)
    slope, level = np.polyfit(np.log10(f), np.log10(S), 1)
    assert abs(slope + 1) < 0.1
    assert rel(10 ** level, Q ** 2) < 0.1
    torch.testing.assert_close(NoiseSpec(flicker=Q, f_min=1e-3, f_max=1e4).psd(torch.tensor(f)),
                               torch.tensor(Q ** 2 / f), rtol=0.03, atol=0)  # the Lorentzian sum's ripple


def test_flicker_window_means_do_not_average_down_like_white_noise():
    """Over 4 decades of window length the 1/f read σ falls by less than a factor 2 (white: 100);
    each variance matches read_covariance within 5 %."""
    spec = dict(flicker=0.01, f_min=1e-2, f_max=1e5)
    p = process(**spec)
    var = {T: float(read(p, p.time + 1.0, T).var()) for T in (1e-5, 1e-1)}
    for T, v in var.items():
        assert rel(v, NoiseSpec(**spec).read_covariance(T)) < 0.05
    assert math.sqrt(var[1e-1] / var[1e-5]) > 0.5


def test_reads_on_an_irregular_time_axis_have_the_exact_joint_statistics():
    """Covariance of two reads (1/f + telegraph + white) at start-to-start lags from 1 µs to
    100 s (each pair after an irregular gap, up to 3,000 s: a read is the gap and the window in
    one transition) against read_covariance: within 3 % of the variance."""
    spec = NoiseSpec(white=0.005, bandwidth=1e6, flicker=0.01, f_min=1e-2, f_max=1e6,
                     rtn_fraction=0.5, rtn_amplitude=0.05, rtn_tau_up=1e-4, rtn_tau_down=3e-4)
    p = NoiseProcess(spec, {"g": (N,)}, seed=4)
    T = 1e-6
    for gap, lag in [(0.37, 2e-6), (5.1, 3.3e-5), (0.0, 1e-3), (12.0, 0.27), (1.0, 100.0), (3e3, 1e-6)]:
        t = p.time + gap
        a, b = read(p, t, T), read(p, t + lag, T)
        cov = float(((a - a.mean()) * (b - b.mean())).mean())
        assert abs(cov - spec.read_covariance(T, lag)) < 0.03 * spec.read_covariance(T), lag
        assert rel(float(a.var()), spec.read_covariance(T)) < 0.03


def test_correlated_double_sampling_cancels_most_of_the_slow_noise():
    """Two 1 µs reads 2 µs apart (≪ 1/f_min = 1 s): Var(b − a) < 0.1 × 2 Var(a) for 1/f noise
    (analytic 0.05; simulated within 5 % of it); white noise does not cancel (ratio 1 ± 0.03)."""
    spec = NoiseSpec(flicker=0.01, f_min=1.0, f_max=1e5)
    T, lag = 1e-6, 2e-6
    ratio = 1 - spec.read_covariance(T, lag) / spec.read_covariance(T)
    assert ratio < 0.1
    p = NoiseProcess(spec, {"g": (N,)}, seed=5)
    a, b = read(p, 1.0, T), read(p, 1.0 + lag, T)
    assert rel(float((b - a).var()) / (2 * float(a.var())), ratio) < 0.05
    w = process(white=0.01, bandwidth=1e6)
    a, b = read(w, 1.0, T), read(w, 1.0 + lag, T)
    assert rel(float((b - a).var()) / (2 * float(a.var())), 1.0) < 0.03


def test_telegraph_dwell_times_and_occupancy():
    """A trace sampled every τ_up/50 (the exact transition law between samples) of 1000 trapped
    devices over 50 ms (≈ 12,000 dwells in each state): mean dwell times (time spent in a state
    over the transitions out of it, the censoring-free estimate; standard error ≈ 1 %) within
    3 % of τ_up = 1 ms and τ_down = 3 ms; fraction up p = 1/4 within 0.01."""
    tau_up, tau_down, dt = 1e-3, 3e-3, 2e-5
    p = process(n=1000, rtn_fraction=1.0, rtn_amplitude=0.1, rtn_tau_up=tau_up, rtn_tau_down=tau_down)
    states = []
    for i in range(2500):
        p.advance((i + 1) * dt)
        states.append(p.rtn_up["g"].numpy().copy())
    x = np.stack(states).T  # (devices, time)
    assert abs(x.mean() - 0.25) < 0.01
    leave_up = (x[:, :-1] & ~x[:, 1:]).sum()
    leave_down = (~x[:, :-1] & x[:, 1:]).sum()
    assert min(leave_up, leave_down) > 10_000
    assert rel(x[:, :-1].sum() * dt / leave_up, tau_up) < 0.03
    assert rel((~x[:, :-1]).sum() * dt / leave_down, tau_down) < 0.03


def test_telegraph_window_means_match_the_exact_variance():
    """Window means of the telegraph part (dwells drawn inside the window) for windows of 0.1, 1
    and 10 correlation times: zero mean (±0.003) and variance A²p(1−p)·2(u − 1 + e^−u)/u²
    within 5 %; only the trapped fraction fluctuates."""
    spec = NoiseSpec(rtn_fraction=0.3, rtn_amplitude=0.1, rtn_tau_up=1e-3, rtn_tau_down=3e-3)
    p = NoiseProcess(spec, {"g": (N,)}, seed=6)
    trapped = torch.zeros(N, dtype=torch.bool)
    trapped[p.rtn_index["g"]] = True
    assert abs(float(trapped.double().mean()) - 0.3) < 0.01
    fraction = float(trapped.double().mean())
    for u in (0.1, 1.0, 10.0):
        m = read(p, p.time + 0.1, u * spec.rtn_tau)
        assert bool((m[~trapped] == 0).all())
        assert abs(float(m[trapped].mean())) < 0.003
        assert rel(float((m[trapped] ** 2).mean()) * fraction, spec.read_covariance(u * spec.rtn_tau)) < 0.05


def test_state_dict_resumes_with_identical_draws():
    spec = NoiseSpec(white=0.01, flicker=0.01, f_min=1e-2, f_max=1e6, rtn_fraction=0.2, rtn_amplitude=0.1,
                     rtn_tau_up=1e-6, rtn_tau_down=2e-6)
    p = NoiseProcess(spec, {"a": (50, 3), "b": (7,)}, seed=1)
    p.window_mean(0.5, 0.5 + 1e-5)
    buf = io.BytesIO()
    torch.save(p.state_dict(), buf)  # as a checkpoint stores it
    after = [p.window_mean(1.0 + i, 1.0 + i + 1e-5) for i in range(3)]
    q = NoiseProcess(spec, {"a": (50, 3), "b": (7,)}, seed=99)
    q.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    again = [q.window_mean(1.0 + i, 1.0 + i + 1e-5) for i in range(3)]
    for x, y in zip(after, again):
        assert all(torch.equal(x[k], y[k]) for k in x)
    with pytest.raises(ValueError, match="another noise model"):
        NoiseProcess(NoiseSpec(white=0.02), {"a": (50, 3), "b": (7,)}).load_state_dict(p.state_dict())


def test_repeated_windows_average_by_duration():
    """mean_over: each window's mean weighted by its length (the mean over their union)."""
    spec = NoiseSpec(white=0.01, flicker=0.01, f_min=1e-2, f_max=1e6)
    p, q = NoiseProcess(spec, {"g": (100,)}, seed=2), NoiseProcess(spec, {"g": (100,)}, seed=2)
    both = p.mean_over([(1.0, 1.0 + 1e-6), (1.0 + 2e-6, 1.0 + 5e-6)])["g"]
    one, two = read(q, 1.0, 1e-6), read(q, 1.0 + 2e-6, 3e-6)
    torch.testing.assert_close(both, (one + 3 * two) / 4, rtol=1e-8, atol=0)  # durations 1 and 3 µs, up to rounding


def test_time_runs_forward_and_specs_are_validated():
    p = process(n=3, white=0.01)
    p.window_mean(1.0, 2.0)
    p.window_mean(2.0 - math.ulp(2.0), 2.5)  # a computed time axis' rounding: starts at the present time
    assert p.time == 2.5
    with pytest.raises(ValueError, match="forward"):
        p.window_mean(2.4, 3.0)
    with pytest.raises(ValueError, match="t1 > t0"):
        p.window_mean(3.0, 3.0)
    with pytest.raises(ValueError, match="f_min < f_max"):
        NoiseSpec(flicker=0.01, f_min=10.0, f_max=1.0)
    with pytest.raises(ValueError, match="telegraph"):
        NoiseSpec(rtn_fraction=0.1, rtn_amplitude=0.1)
    with pytest.raises(ValueError, match="≥ 0"):
        NoiseSpec(white=-0.1)


# ---------------------------------------------------------------------- the read-out
def test_cds_cancels_a_common_offset_exactly_and_resolves_a_nudge_below_the_absolute_lsb():
    """Voltages, offset and ranges on a dyadic grid (exact arithmetic): adding a common offset to
    both reads changes the CDS difference not at all (ideal or 8-bit differential ADC). A 1 mV
    nudge is below the 15.6 mV LSB of the 8-bit ±2 V ADC — two absolute reads see no difference
    or a whole LSB — while an 8-bit ±15.6 mV differential ADC reads it to within its LSB/2."""
    randn = normal(0)
    a = torch.round(torch.rand(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 ** 19) / 2 ** 20
    nudge = 2.0 ** -10  # ≈ 1 mV
    b = a + nudge
    for diff_bits in (0, 8):
        r = Readout(cds=True, adc_bits=8, adc_range=2.0, diff_bits=diff_bits, diff_range=2.0 ** -6)
        am, bm = r.pair(a, b, randn)
        am2, bm2 = r.pair(a + 0.125, b + 0.125, randn)
        assert torch.equal(bm - am, bm2 - am2)
        assert float((bm - am - nudge).abs().max()) <= 2.0 ** -6 / 2 ** 8
    am, bm = Readout(adc_bits=8, adc_range=2.0).pair(a, b, randn)
    assert set(((bm - am) / (4.0 / 2 ** 8)).tolist()) <= {0.0, 1.0}  # no difference or a whole LSB, never the nudge


def test_repeated_reads_average_the_sampling_noise():
    """4 reads averaged: Johnson σ √(kT/C)/2 within 2 % (200,000 samples); quantise is the
    legacy mid-tread ADC."""
    r = Readout(repeats=4, johnson_capacitance=1e-15, temperature=300.0)
    m = r.measure(torch.zeros(200_000, dtype=torch.float64), normal(1))
    assert rel(float(m.std()), math.sqrt(BOLTZMANN * 300.0 / 1e-15) / 2) < 0.02
    v = torch.tensor([-3.0, -0.01, 0.004, 0.99])
    torch.testing.assert_close(quantise(v, 2, 1.0), torch.tensor([-1.0, 0.0, 0.0, 1.0]))


def test_ep_timeline_places_settles_windows_and_conversions_back_to_back():
    r = Readout(window=1e-6, repeats=2, conversion_time=1e-7)
    tl = ep_timeline(["free", "+β", "−β"], r, settle=5e-7, start=10.0)
    free, plus, minus = tl.phases
    assert free.start == 10.0 and free.settled == pytest.approx(10.0 + 5e-7)
    assert [t for w in free.windows for t in w] == pytest.approx([10.0 + 5e-7, 10.0 + 15e-7, 10.0 + 16e-7, 10.0 + 26e-7])
    assert free.end == pytest.approx(10.0 + 27e-7) and plus.start == free.end and tl["−β"] is minus
    assert tl.conversions == 6 and tl.duration == pytest.approx(3 * (5e-7 + 2 * 1.1e-6))
    assert tl.measurement_time == pytest.approx(6 * 1.1e-6) and tl.settle_time == pytest.approx(1.5e-6)
    with pytest.raises(ValueError):
        ep_timeline(["free", "free"], r, settle=0.0)


def test_rc_settle_time():
    """One node: τ = C/G, t = τ ln(1/tol). A 3-node RC ladder (matrix form): after t the slowest
    mode has decayed to tol (checked with the matrix exponential); the per-node estimate is
    shorter (a lower bound)."""
    assert rc_settle_time(1e-12, torch.tensor([1e-5]), tol=1e-3) == pytest.approx(1e-7 * math.log(1e3))
    g = 1e-5
    G = torch.tensor([[2 * g, -g, 0], [-g, 2 * g, -g], [0, -g, g]], dtype=torch.float64)  # ladder to ground
    C = torch.tensor([1e-12, 2e-12, 1e-12], dtype=torch.float64)
    t = rc_settle_time(C, G, tol=1e-3)
    A = -(G / C[:, None]).numpy()  # C dV/dt = −G V
    lam, vec = scipy.linalg.eig(A)
    slow = np.real(vec[:, np.argmax(np.real(lam))])
    v = scipy.linalg.expm(A * t) @ slow
    assert np.linalg.norm(v) / np.linalg.norm(slow) == pytest.approx(1e-3, rel=1e-6)
    assert rc_settle_time(C, torch.diagonal(G), tol=1e-3) < t


# ---------------------------------------------------------------------- DeviceArray
def small_array(seed: int = 3, layers: str = "20,30,4", **fields) -> DeviceArray:
    cc = compile_circuit(layered(layers, seed=0, amplifier_gain=4.0), dtype=torch.float64)
    return DeviceArray(DeviceModel.build(**fields), cc, list(cc.trainable), G_MAX, seed=seed)


def test_with_the_new_fields_off_view_and_measure_are_the_per_settle_model_draw_for_draw():
    """Per settle: g·(1 + σ z) clamped at 0, z from the array's generator in key order; measure:
    + √(kT/C) z, then the absolute ADC — the same values and the same generator state as the
    formulas applied to an identically seeded generator."""
    arr = small_array(read_noise=0.04, johnson_capacitance=1e-16, adc_bits=6, adc_range=1.0)
    assert arr.noise is None and arr.readout == Readout(adc_bits=6, adc_range=1.0, johnson_capacitance=1e-16)
    gen = torch.Generator().manual_seed(3)
    view = arr.view()
    for k in arr.keys:
        g = arr.cc.params[k]
        expect = (g * (1 + 0.04 * torch.randn(g.shape, generator=gen, dtype=torch.float64))).clamp_min(0)
        assert torch.equal(view.params[k], expect)
    s = torch.linspace(-1.2, 1.2, 101, dtype=torch.float64)
    lsb = 2.0 / 64
    noisy = s + math.sqrt(BOLTZMANN * 300.15 / 1e-16) * torch.randn(s.shape, generator=gen, dtype=torch.float64)
    assert torch.equal(arr.measure(s), (torch.round(noisy / lsb) * lsb).clamp(-1.0, 1.0))
    assert torch.equal(arr.gen.get_state(), gen.get_state()) and arr.time == 0.0


OLD_PRESETS = {  # the presets before the process model, field for field
    "reram": dict(on_off=10.0, levels=1000, update_noise=3.75, soft_bounds=True, d2d=0.3, write_noise=0.01,
                  read_noise=0.01, stuck_min=0.01, stuck_max=0.01, open=0.005, adc_bits=8),
    "pcm": dict(on_off=100.0, write_noise=0.0105, write_noise_state=0.031, read_noise=0.03, drift_nu=0.049,
                drift_nu_std=0.02, drift_t0=20.0, drift_time=3600.0, update_noise=0.6, asymmetry=0.5, d2d=0.2,
                adc_bits=8),
}


@pytest.mark.parametrize("preset", sorted(OLD_PRESETS))
def test_per_settle_reproduces_the_original_presets_exactly(preset):
    new = small_array(preset=preset, read_noise_model="per_settle")
    old = small_array(**OLD_PRESETS[preset])
    assert DeviceModel.build(preset).read_noise_model == "process"
    for k in old.keys:
        assert torch.equal(new.program(k, old.cc.params[k] * 0.5), old.program(k, old.cc.params[k] * 0.5))
        g = old.cc.params[k]
        assert torch.equal(new.update(k, g, g * 1.3), old.update(k, g, g * 1.3))
    a, b = new.view(), old.view()
    assert all(torch.equal(a.params[k], b.params[k]) for k in old.keys)
    s = torch.linspace(-1, 1, 50, dtype=torch.float64)
    assert torch.equal(new.measure(s), old.measure(s)) and torch.equal(new.gen.get_state(), old.gen.get_state())


def flicker_array(**extra) -> DeviceArray:
    """1/f read noise on a circuit with 20,000 devices in g:w1p."""
    return small_array(layers="200,100,4", read_noise_model="process", flicker_noise=0.01, flicker_f_min=1.0,
                       flicker_f_max=1e6, read_window=1e-6, settle_time=2e-6, adc_conversion_time=1e-7, **extra)


def test_process_view_reads_the_window_mean_and_close_phases_share_the_slow_noise():
    arr = flicker_array()
    ref = NoiseProcess(arr.noise.spec, arr.noise.shapes)
    ref.load_state_dict(arr.noise.state_dict())
    tl = arr.schedule(["free", "nudged"])
    assert arr.time == tl.end == pytest.approx(2 * (2e-6 + 1.1e-6))
    free = arr.view(window=tl["free"].windows)
    xi = ref.mean_over(tl["free"].windows)
    for k in arr.keys:
        assert torch.equal(free.params[k], (arr.cc.params[k] * (1 + xi[k])).clamp_min(0))
    nudged = arr.view(window=tl["nudged"].windows)
    spec, lag = arr.noise.spec, tl["nudged"].windows[0][0] - tl["free"].windows[0][0]
    fresh = small_array(layers="200,100,4", read_noise=math.sqrt(spec.read_covariance(1e-6)))  # per settle, same σ per read
    k = "g:w1p"
    g = arr.cc.params[k]
    close = float(((nudged.params[k] - free.params[k]) / g).var())
    independent = float(((fresh.view().params[k] - fresh.view().params[k]) / g).var())
    assert rel(close, 2 * (spec.read_covariance(1e-6) - spec.read_covariance(1e-6, lag))) < 0.05  # 20,000 devices
    assert rel(independent, 2 * spec.read_covariance(1e-6)) < 0.05
    assert close < 0.3 * independent  # 3.1 µs apart, the two reads share 80 % of the 1/f variance
    t = arr.time
    arr.view()  # a caller without a window: the next phase on the array's clock
    assert arr.time == pytest.approx(t + 2e-6 + 1.1e-6) and arr.noise.time == pytest.approx(t + 2e-6 + 1e-6)
    with pytest.raises(ValueError, match="forward"):
        arr.view(window=tl["free"].windows)
    end = arr.time
    arr.wait(0.5)  # e.g. the update between two steps
    assert arr.schedule(["free"]).start == end + 0.5


def test_flicker_amplitude_follows_the_conductance_state():
    """Q(g) = Q (g/g_max)^-γ: σ at g_max/10 over σ at g_max = 10^γ within 3 % (10,000 devices
    each); open devices (g = 0) stay at 0."""
    arr = flicker_array(flicker_exponent=0.65)
    k = "g:w1p"
    with torch.no_grad():
        g = arr.cc.params[k]
        g[: g.shape[0] // 2] = G_MAX
        g[g.shape[0] // 2:] = G_MAX / 10
        g[0, 0] = 0.0
    x = (arr.view(window=(1.0, 1.0 + 1e-6)).params[k] / g - 1)
    hi, lo = x[1: g.shape[0] // 2].std(), x[g.shape[0] // 2:].std()
    assert rel(float(lo / hi), 10 ** 0.65) < 0.03
    assert float(arr.view(window=(2.0, 2.0 + 1e-6)).params[k][0, 0]) == 0.0


def test_read_pair_uses_the_differential_adc_with_cds():
    a = torch.full((10,), 0.3, dtype=torch.float64)
    plain = small_array(adc_bits=8)
    am, bm = plain.read_pair(a, a + 1e-3)
    assert torch.equal(am, bm)  # the nudge is lost below the absolute LSB
    cds = small_array(adc_bits=8, cds=True, diff_adc_bits=8, diff_adc_range=0.01)
    am, bm = cds.read_pair(a, a + 1e-3)
    assert float((bm - am - 1e-3).abs().max()) <= 0.01 / 2 ** 8


def test_device_array_state_dict_resumes_the_noise_and_the_clock():
    arr = flicker_array(white_noise=0.01, rtn_fraction=0.1, rtn_amplitude=0.05, rtn_tau_up=1e-6, rtn_tau_down=1e-6,
                        johnson_capacitance=1e-15)
    arr.view()
    saved = copy.deepcopy(arr.state_dict())
    first = [arr.view().params["g:w1p"] for _ in range(2)] + [arr.measure(torch.zeros(5, dtype=torch.float64))]
    other = flicker_array(white_noise=0.01, rtn_fraction=0.1, rtn_amplitude=0.05, rtn_tau_up=1e-6, rtn_tau_down=1e-6,
                          johnson_capacitance=1e-15)
    other.load_state_dict(saved)
    second = [other.view().params["g:w1p"] for _ in range(2)] + [other.measure(torch.zeros(5, dtype=torch.float64))]
    assert all(torch.equal(x, y) for x, y in zip(first, second)) and other.time == arr.time
    with pytest.raises(ValueError, match="read-noise model"):
        small_array().load_state_dict(saved)


# ---------------------------------------------------------------------- model and presets
def test_process_fields_are_validated():
    with pytest.raises(ValueError, match="read_noise_model"):
        DeviceModel.build(read_noise_model="sometimes")
    with pytest.raises(ValueError, match="flicker_exponent"):
        DeviceModel.build(flicker_exponent=1.0)
    with pytest.raises(ValueError, match="f_min < f_max"):
        DeviceModel.build(read_noise_model="process", flicker_noise=0.01, flicker_f_min=1e3, flicker_f_max=1.0)
    with pytest.raises(ValueError, match="repeats"):
        DeviceModel.build(read_repeats=0)
    assert DeviceModel.build(read_noise_model="process").noise_spec() is None  # silent process: no state
    assert DeviceModel.build(flicker_noise=0.01).noise_spec() is None  # per_settle ignores the process fields


def test_presets_read_noise_is_the_sources():
    """PCM: Q_s = 0.0088 (g/g_max)^-0.65, integrated from 1/(1 h) to 1/(2·250 ns) as aihwkit does:
    σ/g of the stationary process ≈ 4.2 % at g_max. ReRAM: the power-law fit stays within 5 % of
    Lombardo et al.'s Q(g) = 0.0277·log10(g/µS)/(g/µS) over 9-90 µS (g_max = 90 µS)."""
    pcm = DeviceModel.build("pcm").noise_spec()
    assert pcm.read_covariance(1e-12) == pytest.approx(0.0088 ** 2 * math.log(2e6 * 3600), rel=1e-6)
    assert math.sqrt(pcm.read_covariance(1e-12)) == pytest.approx(0.042, abs=5e-4)
    reram = DeviceModel.build("reram")
    g_us = np.geomspace(9, 90, 50)
    fit = reram.flicker_noise * (g_us / 90) ** -reram.flicker_exponent
    assert np.max(np.abs(fit / (0.0277 * np.log10(g_us) / g_us) - 1)) < 0.05
    assert reram.noise_spec().read_covariance(reram.read_window) >= 0.01 ** 2  # ≥ aihwkit's ~1 % per read


def test_trainer_checkpoints_the_device_array_state_and_reads_the_old_generator_only_form():
    """The trainer saves DeviceArray.state_dict() (generator, clock, noise process); a checkpoint
    from before the noise process (the generator state alone, "device_rng") still loads for a
    per-settle model."""
    from analog_ep.train import Config, Trainer

    raw = dict(name="tiny", data=dict(dataset="digits", batch_size=8),
               circuit=dict(layers="64,8,10", amplifier_gain=4.0, g_init=[1e-6, 1e-5]),
               train=dict(lr=[2e-6], beta=2e-5, dtype="float64"),
               device=dict(in_the_loop=True, preset="reram"))
    tr = Trainer(Config.from_dict(raw))
    tr.model.devices.view()
    state = tr.state()
    assert state["devices"]["noise"]["time"] == tr.model.devices.noise.time > 0
    legacy = Trainer(Config.from_dict({**raw, "device": dict(in_the_loop=True, preset="reram",
                                                                read_noise_model="per_settle")}))
    legacy.model.devices.view()
    old = legacy.state()
    old["device_rng"] = old.pop("devices")["gen"]
    again = Trainer(Config.from_dict({**raw, "device": dict(in_the_loop=True, preset="reram",
                                                               read_noise_model="per_settle")}))
    again.load_state(old)
    assert torch.equal(again.model.devices.gen.get_state(), legacy.model.devices.gen.get_state())

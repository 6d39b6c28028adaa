"""The EP estimators of analog_ep.models.estimators: their finite-β bias on a noiseless circuit,
and how read noise in time and the read-out enter them."""
import pytest
import torch

from analog_ep import AnalogCircuit
from analog_ep.devices import DeviceModel
from analog_ep.emulator.ep import ep_gradient, equilibrium_gradient
from analog_ep.models.estimators import Estimator, estimate

SETTLE = dict(rtol=1e-12, max_iters=5000)


def small(seed=0) -> tuple[AnalogCircuit, torch.Tensor, torch.Tensor]:
    m = AnalogCircuit(layers="8,6,3", seed=seed, amplifier_gain=2.0, clamp=(0.0, 1.0), g_init=(1e-5, 1e-4),
                      dtype=torch.float64, rtol=1e-12, max_iters=5000)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 8, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 3, (16,), generator=g)
    return m, m.sources(x), m.targets(y)


def rel_error(est: dict, exact: dict) -> float:
    a = torch.cat([est[k].reshape(-1) for k in sorted(exact)])
    b = torch.cat([exact[k].reshape(-1) for k in sorted(exact)])
    return float((a - b).norm() / b.norm())


def run(m, u, y, beta, kind, devices=None, mode="centered", **kw):
    return estimate(m.cc if devices is None else m.cc, devices, u, y, beta, mode=mode, estimator=Estimator(kind, **kw),
                    keys=list(m.cc.trainable), settle_kw=SETTLE).grads


def test_lockin_recovers_the_exact_gradient_with_second_order_bias():
    """Noiseless: the lock-in's first Fourier coefficient matches implicit differentiation to
    ≤ 1e-3 relative; halving β quarters its error (no first-order bias) where one-sided EP's
    error only halves (measured ratios 3.9-4.1 and 1.9-2.1; tolerances 3.3-4.7 and 1.6-2.4)."""
    m, u, y = small()
    exact = equilibrium_gradient(m.cc, u, y, keys=list(m.cc.trainable), **SETTLE)
    lock = {b: rel_error(run(m, u, y, b, "lockin", periods=1, points=8), exact) for b in (2e-5, 1e-5)}
    pos = {b: rel_error(run(m, u, y, b, "cds", mode="positive"), exact) for b in (2e-5, 1e-5)}
    assert lock[1e-5] <= 1e-3, lock
    assert 3.3 <= lock[2e-5] / lock[1e-5] <= 4.7, lock
    assert 1.6 <= pos[2e-5] / pos[1e-5] <= 2.4, pos
    assert lock[1e-5] < pos[1e-5] / 10


def test_cds_without_devices_is_ep_and_periods_do_not_change_a_noiseless_lockin():
    m, u, y = small(1)
    ep = ep_gradient(m.cc, u, y, 1e-5, mode="centered", **SETTLE).grads
    cds = run(m, u, y, 1e-5, "cds")
    for k in ep:  # the nudged voltages are rebuilt as free + (nudged − free): rounding, then ½ΔV² differences
        torch.testing.assert_close(cds[k], ep[k], rtol=1e-7, atol=1e-9)
    one, four = run(m, u, y, 1e-5, "lockin", periods=1), run(m, u, y, 1e-5, "lockin", periods=4)
    for k in one:
        torch.testing.assert_close(four[k], one[k], rtol=1e-9, atol=1e-12)


def devices_with(m, **fields):
    return m.attach_devices(DeviceModel(read_noise_model="process", **fields), seed=0)


def test_averaged_reads_and_longer_windows_reduce_white_noise_error():
    """White read noise (1 % at 500 kHz) on every conductance: the CDS estimate's error falls
    with the integration window (σ ∝ T^-½: 100× the window, about 10× less error; tolerance
    ×5; β small enough that the O(β²) bias stays below the noise) and with averaged reads; the measurement time per step grows accordingly."""
    errs, times = {}, {}
    for window, repeats in ((1e-6, 1), (1e-4, 1), (1e-6, 16)):
        m, u, y = small(2)
        exact = equilibrium_gradient(m.cc, u, y, keys=list(m.cc.trainable), **SETTLE)
        dev = devices_with(m, white_noise=0.01, white_bandwidth=5e5, read_window=window, read_repeats=repeats,
                           cds=True, settle_time=1e-6)
        e = estimate(m.cc, dev, u, y, 2e-5, mode="centered", estimator=Estimator("cds"), keys=list(m.cc.trainable),
                     settle_kw=SETTLE)
        errs[window, repeats], times[window, repeats] = rel_error(e.grads, exact), e.measurement_time
    assert errs[1e-4, 1] < errs[1e-6, 1] / 5, errs
    assert errs[1e-6, 16] < errs[1e-6, 1] / 2, errs
    assert times[1e-4, 1] == pytest.approx(3 * (1e-6 + 1e-4))  # three phases: settle + one window each
    assert times[1e-6, 16] == pytest.approx(3 * (1e-6 + 16e-6))


def test_lockin_rejects_slow_noise_better_than_separate_reads():
    """1/f read noise only (1 mHz-500 kHz): over 8 periods the lock-in's error is below that of
    one-sided EP read without CDS (absolute reads of each phase, whose slow drift between the
    phases enters the difference)."""
    errs = {}
    for name, kind, kw, cds in (("lockin", "lockin", dict(periods=8), True), ("plain", "ep", {}, False)):
        m, u, y = small(3)
        exact = equilibrium_gradient(m.cc, u, y, keys=list(m.cc.trainable), **SETTLE)
        dev = devices_with(m, flicker_noise=0.01, flicker_f_min=1e-3, flicker_f_max=5e5, cds=cds, settle_time=1e-5,
                           read_window=1e-5)
        dev.wait(1.0)
        e = estimate(m.cc, dev, u, y, 1e-4, mode="positive", estimator=Estimator(kind, **kw),
                     keys=list(m.cc.trainable), settle_kw=SETTLE)
        errs[name] = rel_error(e.grads, exact)
    assert errs["lockin"] < errs["plain"], errs


def test_estimator_settings_are_checked():
    with pytest.raises(ValueError, match="estimator must be one of"):
        Estimator("magic")
    with pytest.raises(ValueError, match="points >= 2"):
        Estimator("lockin", points=1)


def test_per_sample_white_noise_has_the_law_of_per_device_draws():
    """sequential_reads: each sample's white read noise, drawn as the jointly Gaussian change of
    (D_i, f_i) per node, gives node voltages with the same spread as settling every sample with
    its own per-device draw g·(1 + σξ) (300 samples each; std within 15 %, means within 3 std
    errors); the noise is independent across the samples of a batch."""
    import dataclasses

    from analog_ep.devices import DeviceArray
    from analog_ep.emulator import settle

    m, _, _ = small(4)
    cc, keys = m.cc, ["g:w1p", "g:w1n"]
    model = DeviceModel(read_noise_model="process", white_noise=0.05, white_bandwidth=5e5, read_window=1e-6,
                        sequential_reads=True)
    arr = DeviceArray(model, cc, keys, g_max=1e-4, seed=0)
    n = 300
    u = m.sources(torch.full((n, 8), 0.7, dtype=torch.float64) + torch.linspace(0, 1, 8, dtype=torch.float64))
    fast = settle(arr.view(), u, rtol=1e-12).V
    g = torch.Generator().manual_seed(1)
    slow = []
    for b in range(n):
        p = dict(cc.params)
        for k in keys:
            p[k] = cc.params[k] * (1 + 0.05 * torch.randn(cc.params[k].shape, generator=g, dtype=torch.float64))
        slow.append(settle(dataclasses.replace(cc, params=p, cache={}), u[b:b + 1], rtol=1e-12).V)
    slow = torch.cat(slow)
    free = [cc.free[i] for i in range(cc.n_free)]
    a, b = fast[:, free], slow[:, free]
    ratio = a.std(0) / b.std(0)
    assert bool(((ratio > 0.85) & (ratio < 1.15)).all()), ratio
    assert bool(((a.mean(0) - b.mean(0)).abs() <= 3 * b.std(0) * (2 / n) ** 0.5 + 1e-12).all())
    assert float(a.std(0).min()) > 0


@pytest.mark.parametrize("kind", ["ep", "cds"])
def test_noiseless_reads_still_take_their_time_on_the_clock(kind):
    """Reads without noise reuse the hardware circuit, but the step's phases still take their
    settle and read time (they were counted as 0 s for the per-settle estimator)."""
    m, u, y = small(3)
    dev = devices_with(m, read_window=1e-4, settle_time=1e-6)
    e = estimate(m.cc, dev, u, y, 2e-5, mode="centered", estimator=Estimator(kind), keys=list(m.cc.trainable),
                 settle_kw=SETTLE)
    assert e.measurement_time == pytest.approx(3 * (1e-6 + 1e-4))

"""Bias and variance of the EP estimators under device read noise, against the exact gradient.

The trained XS circuit (examples/pretrained/mnist_xs) is programmed into a realisation of a
device model; for one batch of 128 MNIST training images, each estimator's gradient is compared
with ``equilibrium_gradient`` of the same programmed circuit without read noise (implicit
differentiation, float64): cosine similarity and relative error ‖ĝ − g‖/‖g‖, as a function of
the reads it takes and of its measurement time per step (the devices' clock: settles, read
windows, conversions). Noise models: the ``reram`` preset as cited (white + 1/f read noise as a
process in time, plus its programming non-idealities), and the same with only its white part or
only its 1/f part, and with no read noise at all (each estimator's own bias: finite β, ADCs; the
default window only); the samples of the batch are read one after another (``sequential_reads``:
noise faster than a phase is independent per sample, slower noise one process shared by the
batch). Estimators: per-settle EP (one view and one absolute 8-bit read per settle,
the model of the earlier robustness sweep), CDS centred EP with 1 or 4 averaged reads, and the
lock-in of an oscillating nudge over 4 or 16 periods (analog_ep.models.estimators), each with
read windows of 1 µs (the preset's read pulse), 100 µs and 1 ms. "Default budget": 100 µs
windows. The lock-in's nudge amplitude (--lockin-beta) is larger than centred EP's β: its bias
has no first-order term, and its noise, set by the 1/f power near the nudge frequency times the
demodulation bandwidth 1/(K periods), is fixed while its signal grows with β.

Read-out of the CDS and lock-in estimators (our assumption, stated in the JSON): correlated double
sampling, a differential ADC of 10 bits over ±50 mV for nudged − free, the preset's 8-bit
absolute ADC for the free voltages.

    .venv/bin/python benchmarks/noisy_gradient.py [--json] [--repeats 3] [--devices cpu]

Writes benchmarks/results/noisy_gradient.json and noisy_gradient.png (1 − cosine against the
measurement time per step: the gradient-quality Pareto front of each estimator); with --json the last line is one JSON object with
``best_cosine`` and ``best_estimator`` (reram preset, each estimator at its default budget).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from analog_ep import AnalogCircuit
from analog_ep.data import load_dataset
from analog_ep.devices import DeviceModel
from analog_ep.emulator.ep import equilibrium_gradient
from analog_ep.models.estimators import Estimator, estimate
from torch_devices import add_devices_option, parse_devices

ROOT = Path(__file__).resolve().parents[1]
READOUT = dict(cds=True, diff_adc_bits=10, diff_adc_range=0.05)
SEQUENTIAL = dict(sequential_reads=True)  # the 128 samples are read one after another on one array
NOISE = {
    "reram": SEQUENTIAL,
    "white-only": dict(SEQUENTIAL, flicker_noise=0.0),
    "flicker-only": dict(SEQUENTIAL, white_noise=0.0),
}
NOISELESS = "no read noise"  # each estimator's own bias (finite β, ADCs): the default window only
NOISE[NOISELESS] = dict(SEQUENTIAL, white_noise=0.0, flicker_noise=0.0)
WINDOWS = (1e-6, 1e-4, 1e-3)  # s per read: the preset's 1 µs read pulse, and longer integrations
DEFAULT_WINDOW = 1e-4
# (label, estimator, device read-out overrides); each runs at every window
ESTIMATORS = [("ep (per-settle)", Estimator("ep"), {})]
ESTIMATORS += [(f"cds centred, {r} reads", Estimator("cds"), dict(READOUT, read_repeats=r)) for r in (1, 4)]
ESTIMATORS += [(f"lock-in, {k} periods", Estimator("lockin", periods=k, points=4), READOUT) for k in (4, 16)]


def pareto_panels(rows: list[dict], noises: list[str], value, ylabel: str, *, log_y: bool = True,
                  ylim: tuple[float, float] | None = None, reference: tuple[float, str] | None = None):
    """``value(row)`` against the measurement time per EP step (µs, log, shared), one panel per
    noise model and one line per estimator (its points: the read windows); ``reference``: a
    dashed horizontal line (value, label)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(noises), 3.6))
    for i, noise in enumerate(noises):
        ax = fig.add_subplot(1, len(noises), i + 1, sharex=fig.axes[0] if fig.axes else None)
        for label in dict.fromkeys(r["estimator"] for r in rows):
            pts = sorted((r["measurement_time_s"], value(r)) for r in rows if r["noise"] == noise
                         and r["estimator"] == label)
            ax.plot([1e6 * t for t, _ in pts], [v for _, v in pts], "o-", label=label)
        if reference is not None:
            ax.axhline(reference[0], color="grey", ls="--", lw=1, label=reference[1])
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_xlabel("measurement time per EP step (µs)")
        ax.set_ylabel(ylabel)
        ax.set_title(noise)
        ax.grid(True, which="both", alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def pareto_figure(rows: list[dict]):
    """1 − cosine against measurement time per EP step (log-log), per noise model and estimator."""
    noises = [n for n in dict.fromkeys(r["noise"] for r in rows) if n != NOISELESS]
    return pareto_panels(rows, noises, lambda r: 1 - r["cosine"], "1 − cosine with the exact gradient")


def flat(g: dict) -> torch.Tensor:
    return torch.cat([v.reshape(-1).double() for _, v in sorted(g.items())])


def add_estimator_options(ap: argparse.ArgumentParser) -> None:
    """The options the noisy-estimator benchmarks share: --json, each estimator's β, --devices
    and --plot-only."""
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--beta", type=float, default=2e-4,
                    help="nudge conductance of ep and cds, S (10x the XS config's, chosen for signal-to-noise: its "
                         "noiseless centred estimate still has cosine 1.0000 with the exact gradient; 2e-3 drops to 0.76)")
    ap.add_argument("--lockin-beta", type=float, default=4e-4,
                    help="amplitude of the lock-in's oscillating nudge, S: larger than --beta, as its bias has no "
                         "first-order term (noiseless cosine 0.9985 at 4e-4 with 16 periods; 1e-3 drops to 0.88)")
    add_devices_option(ap, loops=False)
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure from the JSON of the last run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="independent estimates per setting")
    ap.add_argument("--batch", type=int, default=128)
    add_estimator_options(ap)
    args = ap.parse_args()
    device = parse_devices(ap, args.devices, loops=False)[0]
    out = ROOT / "benchmarks/results/noisy_gradient.json"
    if args.plot_only:
        pareto_figure(json.loads(out.read_text())["rows"]).savefig(out.with_suffix(".png"), dpi=120)
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    d = load_dataset("mnist")
    x, labels = d.x_train[:args.batch], torch.as_tensor(d.y_train[:args.batch])
    ckpt = ROOT / "examples/pretrained/mnist_xs/checkpoint.pt"
    rows = []
    for noise, overrides in NOISE.items():
        windows = (DEFAULT_WINDOW,) if noise == NOISELESS else WINDOWS
        for (label, est, readout), window in ((e, w) for e in ESTIMATORS for w in windows):
            default = window == DEFAULT_WINDOW
            m = AnalogCircuit.from_checkpoint(ckpt, device=device).to(torch.float64)
            m.estimator = est
            devices = m.attach_devices(DeviceModel.build("reram", **overrides, **readout, read_window=window), seed=0)
            u, y = m.sources(x), m.targets(labels)
            exact = flat(equilibrium_gradient(devices.hardware, u, y, keys=list(m.cc.trainable), rtol=1e-10))
            cos, err, times = [], [], []
            for _ in range(args.repeats):
                beta = args.lockin_beta if est.kind == "lockin" else args.beta
                e = estimate(m.cc, devices, u, y, beta, mode="centered", estimator=est, keys=list(m.cc.trainable),
                             settle_kw=dict(rtol=1e-10, max_iters=2000))
                g = flat(e.grads)
                cos.append(float(g @ exact / (g.norm() * exact.norm())))
                err.append(float((g - exact).norm() / exact.norm()))
                times.append(e.measurement_time)
            row = dict(noise=noise, estimator=label, beta_S=beta, read_window_s=window, default_budget=default,
                       cosine=float(np.mean(cos)),
                       cosine_std=float(np.std(cos)), rel_error=float(np.mean(err)),
                       measurement_time_s=float(np.mean(times)),
                       reads_per_step=(1 + 2 * readout.get("read_repeats", 1)) if est.kind == "cds"
                       else (1 + est.periods * est.points if est.kind == "lockin" else 3))
            rows.append(row)
            print(f"{noise:>13s} | {label:<22s} | {1e6 * window:6.0f} µs | cos {row['cosine']:.4f} ± {row['cosine_std']:.4f} | "
                  f"rel err {row['rel_error']:.3f} | {1e6 * row['measurement_time_s']:.1f} µs/step", flush=True)
    best = max((r for r in rows if r["noise"] == "reram" and r["default_budget"]), key=lambda r: r["cosine"])
    result = dict(circuit="XS 2x784-100-10 (examples/pretrained/mnist_xs)", batch=args.batch, beta=args.beta,
                  lockin_beta=args.lockin_beta,
                  repeats=args.repeats, readout_assumption=READOUT, reference="equilibrium_gradient, float64",
                  rows=rows, best_cosine=best["cosine"], best_estimator=best["estimator"])
    write_result(out, result, pareto_figure(rows), dict(best_cosine=best["cosine"], best_estimator=best["estimator"],
                                                        measurement_time_s=best["measurement_time_s"]), args.json)


def write_result(out: Path, result: dict, fig, summary: dict, last_line: bool) -> None:
    """The benchmark's JSON at ``out`` and its figure beside it (.png); ``summary`` as one JSON
    line on stdout with ``last_line`` (--json)."""
    out.write_text(json.dumps(result, indent=1))
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out}", file=sys.stderr)
    if last_line:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()

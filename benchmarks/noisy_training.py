"""Test error against measurement time per EP step: in-the-loop training with each estimator
under each read-noise model (the training Pareto figure of issue 13).

The trained ideal XS circuit (examples/pretrained/mnist_xs, 2.13 %) is programmed into one
realisation of the ``reram`` preset (its programming non-idealities as cited), and EP fine-tunes
it in the loop on the first ``--train-subset`` MNIST training images (default 10,000: 1/5 epoch,
the budget of the robustness sweep in examples/sweeps/), reading through the devices with each
estimator of ``benchmarks/noisy_gradient.py`` (per-settle EP; CDS centred EP with 1 or 4
averaged reads; the lock-in over 4 or 16 periods) at each read window, under the same noise
models (the preset's white + 1/f read noise, its white part only, its 1/f part only, none; the
samples of a batch read one after another). Each run's test error (the full MNIST test set,
read through the same noisy devices) is plotted against its measurement time per EP step on
the devices' clock (settles, read windows, conversions): what a better gradient costs in time,
and what it buys in accuracy. Adam at the ideal run's rate (3e-7 S per step), β 2e-4 S
(centred) and 4e-4 S (lock-in amplitude) as in noisy_gradient.py. One device realisation and
one run per point: differences of a point or so are within the spread between realisations.

    .venv/bin/python benchmarks/noisy_training.py [--json] [--train-subset 10000] [--devices cpu] [--compensated]

Writes benchmarks/results/noisy_training.json and noisy_training.png; with --json the last line
is one JSON object with the best (lowest) test error under the reram preset, its estimator and
its measurement time per step. ``--compensated``: the circuit of
examples/mnist_xs_reram_finetune.toml instead — the devices' floor cancelled per node
(``floor_compensation = 1``), fault-aware programming, that config's rate — written to
noisy_training_compensated.json/.png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from analog_ep.studies.sweep import fine_tune
from analog_ep.train import Config, load_checkpoint
from noisy_gradient import (DEFAULT_WINDOW, ESTIMATORS, NOISE, NOISELESS, WINDOWS, add_estimator_options, pareto_panels,
                            write_result)
from torch_devices import parse_devices

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "examples/pretrained/mnist_xs/checkpoint.pt"
COMPENSATED = ROOT / "examples/mnist_xs_reram_finetune.toml"  # --compensated: its circuit settings and rate


def pareto_figure(rows: list[dict], baseline: float):
    """Test error against measurement time per EP step (log x), one panel per noise model and
    one line per estimator (its points: the read windows); the ideal circuit's error dashed."""
    top = 100 * max(r["test_error"] for r in rows) * 1.15
    return pareto_panels(rows, list(dict.fromkeys(r["noise"] for r in rows)), lambda r: 100 * r["test_error"],
                         "MNIST test error (%)", log_y=False, ylim=(0, top),
                         reference=(100 * baseline, "ideal circuit"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-subset", type=int, default=10_000, help="training images of in-the-loop EP per run")
    ap.add_argument("--compensated", action="store_true",
                    help="floor compensation, fault-aware programming and the rate of examples/mnist_xs_reram_finetune.toml")
    add_estimator_options(ap)
    args = ap.parse_args()
    device = parse_devices(ap, args.devices, loops=False)[0]
    out = ROOT / f"benchmarks/results/noisy_training{'_compensated' if args.compensated else ''}.json"
    circuit, lr = {}, {}
    if args.compensated:
        cfg = Config.load(COMPENSATED)
        circuit = {k: cfg.device.settings[k] for k in ("floor_compensation", "fault_aware")}
        lr = dict(lr=list(cfg.train.lr))
    if args.plot_only:
        last = json.loads(out.read_text())
        pareto_figure(last["rows"], last["ideal_test_error"]).savefig(out.with_suffix(".png"), dpi=120)
        return
    ideal = load_checkpoint(CHECKPOINT, device=device)
    data = ideal.data
    baseline = ideal.error(data.x_test, data.y_test)  # the ideal circuit's test error, the figures' reference
    rows = []
    for noise, overrides in NOISE.items():
        windows = (DEFAULT_WINDOW,) if noise == NOISELESS else WINDOWS[:2]
        for (label, est, readout), window in ((e, w) for e in ESTIMATORS for w in windows):
            beta = args.lockin_beta if est.kind == "lockin" else args.beta
            tuned = fine_tune(CHECKPOINT, preset="reram", settings=dict(overrides, **readout, **circuit, read_window=window),
                              train=dict(estimator=est.kind, lockin_periods=est.periods, lockin_points=est.points,
                                         beta=beta, **lr), train_subset=args.train_subset, data=data, device=device)
            err, per_step = tuned.error(data.x_test, data.y_test), tuned.history[-1].measurement_time
            row = dict(noise=noise, estimator=label, read_window_s=window, beta_S=beta, test_error=err,
                       measurement_time_s=per_step, default_budget=window == DEFAULT_WINDOW)
            rows.append(row)
            print(f"{noise:>13s} | {label:<22s} | {1e6 * window:6.0f} µs | test error {100 * err:6.2f} % | "
                  f"{1e6 * per_step:8.1f} µs/step", flush=True)
            out.write_text(json.dumps(dict(rows=rows, partial=True), indent=1))  # nothing lost if stopped
    best = min((r for r in rows if r["noise"] == "reram"), key=lambda r: r["test_error"])
    result = dict(circuit="XS 2x784-100-10 (examples/pretrained/mnist_xs), fine-tuned in the loop on the reram preset",
                  start=str(CHECKPOINT.relative_to(ROOT)), ideal_test_error=baseline, train_subset=args.train_subset,
                  device_settings=circuit, lr=lr.get("lr", list(ideal.cfg.train.lr)), beta=args.beta, lockin_beta=args.lockin_beta, realisations=1, rows=rows,
                  best_test_error=best["test_error"], best_estimator=best["estimator"],
                  best_measurement_time_s=best["measurement_time_s"])
    write_result(out, result, pareto_figure(rows, baseline), dict(
        best_test_error=best["test_error"], best_estimator=best["estimator"],
        measurement_time_s=best["measurement_time_s"]), args.json)


if __name__ == "__main__":
    main()

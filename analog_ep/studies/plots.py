"""Figures of the studies: learning curves, conductance histograms, robustness sweeps, SPICE
parity and GDU processes. Each function draws on ``ax`` (or a new figure) and returns the
``Figure``; it never touches matplotlib's global backend or pyplot state, so notebooks keep
theirs. The caller saves it (``fig.savefig(path)``)."""
from __future__ import annotations

import math

from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..train.files import atomic_write


def _axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size)
    return fig, fig.add_subplot()


def save(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write a figure atomically (format from the suffix) and return the path."""
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi))


def learning_curve(history, ax: Axes | None = None) -> Figure:
    """Training (during the epoch) and validation error per epoch, percent, log scale."""
    fig, ax = _axes(ax, (5.5, 3.8))
    epochs = [m.epoch for m in history]
    ax.plot(epochs, [100 * m.train_error for m in history], "o-", label="train (during epoch)")
    ax.plot(epochs, [100 * m.val_error for m in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def conductance_histogram(params: dict, g_max: float) -> Figure:
    """One histogram of conductances (µS, over [0, g_max]) per trainable group."""
    keys = sorted(params)
    fig = Figure(figsize=(2.2 * len(keys), 2.6))
    for i, k in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        g = params[k].detach().cpu().numpy().ravel() * 1e6
        ax.hist(g, bins=40, range=(0, g_max * 1e6))
        ax.set_title(k.split(":")[-1], fontsize=9)
        ax.set_xlabel("g (µS)", fontsize=8)
        ax.tick_params(labelsize=7)
    return fig


def sweep_plot(rows) -> Figure:
    """Test error vs level, one panel per non-ideality (four to a row), deploy-only and
    in-the-loop lines."""
    fields = list(dict.fromkeys(r.field for r in rows))
    cols = min(4, len(fields))
    grid = (math.ceil(len(fields) / cols), cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * grid[0]))
    axes = [fig.add_subplot(*grid, i + 1) for i in range(len(fields))]
    for ax, field in zip(axes, fields):
        for mode, marker in (("deploy-only", "o-"), ("in-the-loop", "s--")):
            pts = [r for r in rows if r.field == field and r.mode == mode]
            if pts:
                ax.errorbar([r.level for r in pts], [100 * r.error_mean for r in pts],
                            yerr=[100 * r.error_std for r in pts], fmt=marker, capsize=3, label=mode)
        ax.set_title(field, fontsize=9)
        ax.set_xlabel("level", fontsize=8)
        ax.set_ylabel("test error (%)", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    return fig


def parity_plot(cmp, ax: Axes | None = None) -> Figure:
    """Emulator vs ngspice node voltages (V) of a :class:`~analog_ep.studies.compare.Comparison`."""
    fig, ax = _axes(ax, (5, 5))
    ax.scatter(cmp.spice.ravel(), cmp.emulator.ravel(), s=6)
    lo, hi = float(cmp.spice.min()), float(cmp.spice.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("ngspice node voltage (V)")
    ax.set_ylabel("emulator node voltage (V)")
    ax.set_title(f"max |dV| = {cmp.max_abs_dv:.2g} V")
    return fig


def gdu_plot(p, n_traces: int = 4) -> Figure:
    """ΔEP (solid) vs −∇BPTT (dashed) for a few elements of each layer, as seed 003's figures."""
    names = list(p.ep)
    fig = Figure(figsize=(3.0 * len(names), 2.8))
    for j, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), j + 1)
        ep, bp = p.ep[name].reshape(p.ep[name].shape[0], -1), p.bptt[name].reshape(p.bptt[name].shape[0], -1)
        idx = torch.argsort(bp.abs().amax(0), descending=True)[:n_traces]
        for c, i in enumerate(idx.tolist()):
            ax.plot(ep[:, i].cpu(), color=f"C{c}", lw=1.5)
            ax.plot(bp[:, i].cpu(), color=f"C{c}", ls="--", lw=1.5)
        ax.set_title(f"{name}: ΔEP (—) vs −∇BPTT (--)", fontsize=8)
        ax.set_xlabel("t", fontsize=8)
        ax.tick_params(labelsize=7)
    return fig


def energy_breakdown_plot(report: dict, ax: Axes | None = None) -> Figure:
    """Energy per inference (J, log scale) by where it is dissipated, from an energy report
    (:func:`analog_ep.studies.power.energy_report`): element groups, amplifiers, sinking sources
    and the ADC read-out; the total in the title."""
    fig, ax = _axes(ax, (6.0, 0.3 * len(report["breakdown_J"]) + 1.6))
    parts = sorted(((k, v) for k, v in report["breakdown_J"].items() if v > 0), key=lambda kv: kv[1])
    ax.barh([k for k, _ in parts], [v for _, v in parts])
    ax.set_xscale("log")
    ax.set_xlim(left=parts[-1][1] * 1e-8)  # parts below 1e-8 of the largest are invisible anyway
    ax.set_xlabel("energy per inference (J)")
    ax.set_title(f"{report['energy_per_inference_J']:.3g} J per inference, {report['power_W']:.3g} W, "
                 f"settle {report['settle_time_s']:.3g} s", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def energy_vs_size_plot(rows: list[dict], ax: Axes | None = None) -> Figure:
    """Energy per inference and per training step (J) against the number of conductances, one
    point per circuit (``rows``: dicts with ``name``, ``conductances`` and an energy report's
    ``energy_per_inference_J``, ``energy_per_training_step_J`` and ``digital``), with the same
    networks' digital energies per inference, log-log."""
    fig, ax = _axes(ax, (6.0, 4.2))
    rows = sorted(rows, key=lambda r: r["conductances"])
    n = [r["conductances"] for r in rows]
    ax.plot(n, [r["energy_per_inference_J"] for r in rows], "o-", label="analog, inference")
    ax.plot(n, [r["energy_per_training_step_J"] for r in rows], "s-", label="analog, EP training step")
    for k, platform in enumerate(rows[0]["digital"]["platforms"]):
        ax.plot(n, [r["digital"]["platforms"][k]["energy_per_inference_J"] for r in rows], "^--",
                label=f"digital inference: {platform['name']}")
    for x, r in zip(n, rows):
        ax.annotate(r["name"], (x, r["energy_per_inference_J"]), textcoords="offset points", xytext=(4, -10),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("conductances in the circuit")
    ax.set_ylabel("energy (J)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return fig

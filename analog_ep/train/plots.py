"""Learning curves and conductance histograms of a training run (PNG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(history, path: str | Path) -> Path:
    plt = _plt()
    epochs = [m.epoch for m in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(epochs, [100 * m.train_error for m in history], "o-", label="train (during epoch)")
    ax.plot(epochs, [100 * m.val_error for m in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def conductance_histogram(params: dict, path: str | Path, g_max: float) -> Path:
    plt = _plt()
    keys = sorted(params)
    fig, axes = plt.subplots(1, len(keys), figsize=(2.2 * len(keys), 2.6), sharey=False)
    for ax, k in zip(np.atleast_1d(axes), keys):
        g = params[k].detach().cpu().numpy().ravel() * 1e6
        ax.hist(g, bins=40, range=(0, g_max * 1e6))
        ax.set_title(k.split(":")[-1], fontsize=9)
        ax.set_xlabel("g (µS)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def sweep_plot(rows, path: str | Path) -> Path:
    """Test error vs level, one panel per non-ideality, deploy-only and in-the-loop lines."""
    plt = _plt()
    fields = list(dict.fromkeys(r.field for r in rows))
    fig, axes = plt.subplots(1, len(fields), figsize=(3.2 * len(fields), 3.0), squeeze=False)
    for ax, field in zip(axes[0], fields):
        for mode, marker in (("deploy-only", "o-"), ("in-the-loop", "s--")):
            pts = [r for r in rows if r.field == field and r.mode == mode]
            if pts:
                ax.errorbar([r.level for r in pts], [100 * r.error_mean for r in pts],
                            yerr=[100 * r.error_std for r in pts], fmt=marker, capsize=3, label=mode)
        ax.set_title(field, fontsize=9)
        ax.set_xlabel("level", fontsize=8)
        ax.set_ylabel("test error (%)", fontsize=8)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

"""The ``--devices`` option every benchmark takes: torch devices (cpu, cuda, cuda:N),
comma-separated where a script loops over them; a device this machine lacks is a usage error."""
from __future__ import annotations

import argparse

import torch


def add_devices_option(ap: argparse.ArgumentParser, *, loops: bool) -> None:
    """``--devices``: several comma-separated devices if the script ``loops`` over them (default:
    cpu, and cuda when available), else one (default: cpu)."""
    default = "cpu,cuda" if loops and torch.cuda.is_available() else "cpu"
    what = "torch devices, comma-separated" if loops else "torch device"
    ap.add_argument("--devices", default=default, help=f"{what}: cpu, cuda or cuda:N (default: {default})")


def parse_devices(ap: argparse.ArgumentParser, text: str, *, loops: bool) -> list[str]:
    """The devices of ``--devices``; exits with a usage error (status 2) for an unknown device,
    a CUDA device without CUDA, or several devices where the script runs on one."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or (len(names) > 1 and not loops):
        ap.error(f"--devices: expected {'one or more devices' if loops else 'one device'}, got {text!r}")
    for name in names:
        try:
            kind = torch.device(name).type
        except RuntimeError:
            ap.error(f"--devices: {name!r} is not a torch device (cpu, cuda, cuda:N)")
        if kind == "cuda" and not torch.cuda.is_available():
            ap.error(f"--devices {name}: CUDA is not available to this torch ({torch.__version__})")
    return names


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so a timer reads its end."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)

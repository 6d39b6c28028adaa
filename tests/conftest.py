import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NETLISTS = sorted((ROOT / "netlists").glob("*.cir"))


def tiny_toml(batch_size: int = 32, layers: str = "64,32,10", extra_data: str = "", extra_train: str = "") -> str:
    """A seconds-long training config on scikit-learn's digits, as a TOML file's text (for the
    command-line tests)."""
    return f"""
name = "tiny"
[data]
dataset = "digits"
batch_size = {batch_size}
{extra_data}
[circuit]
layers = "{layers}"
amplifier_gain = 4.0
clamp = [0.6, 0.4]
g_init = [1e-6, 1e-5]
[train]
epochs = 2
lr = [2e-6]
beta = 2e-5
target = [0.0, 0.2]
{extra_train}
"""


def pytest_collection_modifyitems(config, items):
    """ngspice tests skip on a machine without ngspice, but never in CI, where `make test`
    installs it: a CI run that silently skipped them would prove nothing."""
    if shutil.which("ngspice") or os.environ.get("CI"):
        return
    skip = pytest.mark.skip(reason="ngspice is not installed (make setup installs it)")
    for item in items:
        if "spice" in item.keywords:
            item.add_marker(skip)

"""pyproject.toml tells the truth: every third-party module the package, its tests and the docs
build import is declared, at run time or in the extra of the feature that needs it."""
import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from .conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    """Normalised distribution names of requirement strings ('mkdocstrings[python]>=1' -> 'mkdocstrings')."""
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", r).group(0)).lower() for r in requirements}


def _third_party(folder: Path) -> dict[str, str]:
    """Top-level third-party modules imported anywhere under ``folder``: module -> a file importing it."""
    found: dict[str, str] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for m in modules:
                top = m.split(".")[0]
                # analog_ep, tests, ...; or a module beside the file (benchmarks/torch_devices.py)
                first_party = (ROOT / top).is_dir() or (path.parent / f"{top}.py").exists() or top == "__future__"
                if top not in sys.stdlib_module_names and not first_party:
                    found.setdefault(top, path.name)
    return found


def _undeclared(folder: Path, declared: set[str]) -> list[str]:
    dists = packages_distributions()
    missing = []
    for module, where in sorted(_third_party(folder).items()):
        names = _names(dists.get(module, [module]))
        if not names & declared:
            missing.append(f"{module} ({where}) from {sorted(names)}")
    return missing


RUNTIME = _names(PROJECT["dependencies"])
EXTRAS = {k: _names(v) for k, v in PROJECT["optional-dependencies"].items()}


@pytest.mark.parametrize("folder, declared", [
    ("analog_ep", RUNTIME),
    ("tests", RUNTIME | EXTRAS["test"]),
    ("benchmarks", RUNTIME),
    ("docs", RUNTIME | EXTRAS["docs"]),
])
def test_every_import_is_declared(folder, declared):
    assert _undeclared(ROOT / folder, declared) == []


def test_runtime_needs_of_features():
    """scikit-learn (digits) and scipy (sparse LU) are runtime dependencies; the docs tools stay
    out of the runtime set."""
    assert {"scikit-learn", "scipy", "pyspice", "typer"} <= RUNTIME
    assert not (EXTRAS["docs"] | EXTRAS["test"]) & RUNTIME


def test_the_checker_sees_a_missing_dependency(tmp_path):
    (tmp_path / "m.py").write_text("import os\nfrom sklearn.datasets import load_digits\nimport numpy\n")
    assert _third_party(tmp_path).keys() == {"sklearn", "numpy"}
    assert [m.split()[0] for m in _undeclared(tmp_path, {"numpy"})] == ["sklearn"]

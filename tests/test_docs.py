"""The documentation's code runs as written, and its generated pages cover the code.

Every ```python and ```sh block of the pages in docs/ runs in order, one page per test, in a
fresh directory where ``netlists/``, ``examples/`` and ``docs/`` are the repository's, so a page
can build on its earlier blocks (the Python blocks of a page share one namespace; shell blocks
run with ``analog-ep`` on PATH). A block right after ``<!-- no-test: reason -->`` is skipped:
the reason says why (it sets up a machine, it needs MNIST, it takes minutes).
"""
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import typer

from .conftest import ROOT

DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- no-test: [^>]*-->\n)?```(python|sh)\n(.*?)```", re.S)


def blocks(page) -> list[tuple[str, str]]:
    """(language, code) of a page's runnable blocks, in order."""
    return [(lang, code) for skip, lang, code in BLOCK.findall(page.read_text()) if not skip]


PAGES = sorted(p for p in DOCS.rglob("*.md") if blocks(p))


def _load_hook():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks" / "generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.spice
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_code_runs(page, tmp_path, monkeypatch):
    code = blocks(page)
    for name in ("netlists", "examples", "docs"):
        (tmp_path / name).symlink_to(ROOT / name)
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "analog-ep"  # the package under test, whatever the environment's scripts are
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m analog_ep "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for k, (lang, text) in enumerate(code):
        if lang == "python":
            exec(compile(text, f"{page.name}[block {k}]", "exec"), namespace)
        else:
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"{page.name} block {k}:\n{text}\n{proc.stdout}\n{proc.stderr}"


def test_no_test_markers_say_why():
    for page in DOCS.rglob("*.md"):
        for reason in re.findall(r"<!-- no-test:(.*?)-->", page.read_text()):
            assert reason.strip(), page


def test_cli_reference_covers_every_command_and_option():
    from analog_ep.cli import app

    text = _load_hook().cli_reference()
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"### `analog-ep {name}`" in text
        for param in command.params:
            assert all(opt in text for opt in param.opts), (name, param.opts)
    for panel in {c.rich_help_panel for c in group.commands.values()}:
        assert f"## {panel}" in text


def test_results_page_sections_exist_in_the_readme():
    hook = _load_hook()
    readme = (ROOT / "README.md").read_text()
    headings = re.findall(r"<!-- readme-section: (.+?) -->", (DOCS / "results.md").read_text())
    assert headings
    for heading in headings:
        section = hook.readme_section(readme, heading)
        assert section.lstrip("#").strip().startswith(heading) and "|---" in section
        assert "![" not in section  # images name their file instead: the site has no repository files
    with pytest.raises(ValueError, match="no section"):
        hook.readme_section(readme, "No such heading")


def test_sphinx_roles_render_as_code_names():
    hook = _load_hook()
    html = "see :func:<code>~.ngspice.run_op</code>, :mod:<code>.netlist</code> and :class:<code>a.B</code>"
    assert hook.sphinx_roles_as_code(html) == "see <code>run_op</code>, <code>netlist</code> and <code>a.B</code>"

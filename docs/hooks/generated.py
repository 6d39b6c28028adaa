"""MkDocs hook: pages whose content is generated at build time, so they cannot drift.

* ``<!-- cli-reference -->`` becomes the reference of every ``analog-ep`` command, grouped by its
  help panel, from the typer app itself: each command's docstring, usage line, and the same
  option lines and help texts (defaults included) that ``analog-ep COMMAND --help`` prints.
* ``<!-- readme-section: HEADING -->`` becomes the README's section whose heading starts with
  HEADING (the heading line and everything up to the next heading of the same or a higher
  level). A heading that is not in the README stops the build. Its images (repository files
  the site does not carry) become a line naming the file.
* The package's docstrings cross-reference in Sphinx's style (``:func:`~.ngspice.run_op```),
  which mkdocstrings renders literally; in the rendered pages such a reference becomes its
  code name alone (``run_op``), as Sphinx would show it.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[2]
CLI_MARKER = "<!-- cli-reference -->"
README_MARKER = re.compile(r"<!-- readme-section: (.+?) -->")
IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$", re.M)
SPHINX_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):<code>(~?)\.?([^<]*)</code>")


def _paragraphs(text: str) -> str:
    """A docstring as Markdown paragraphs (its hard line breaks joined)."""
    blocks = inspect.cleandoc(text or "").split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in b.splitlines()) for b in blocks)


def _cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _options_table(command, ctx) -> list[str]:
    lines = ["| option | description |", "|---|---|"]
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None:
            opts, help_text = record
            lines.append(f"| `{opts}` | {_cell(help_text)} |")  # a pipe inside backticks stays in its cell
    return lines


def cli_reference() -> str:
    """Markdown reference of the ``analog-ep`` command line, generated from the typer app."""
    from analog_ep.cli import app

    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="analog-ep")
    out = [f"```text\n{group.get_usage(ctx)}\n```", "", "Global options:", "", *_options_table(group, ctx)]
    panels: dict[str, list[str]] = {}
    for name, command in group.commands.items():
        panels.setdefault(command.rich_help_panel or "Other", []).append(name)
    for panel, names in panels.items():
        out += ["", f"## {panel}"]
        for name in names:
            command = group.commands[name]
            sub = typer.Context(command, info_name=name, parent=ctx)
            out += ["", f"### `analog-ep {name}`", "", _paragraphs(command.help), "",
                    f"```text\n{command.get_usage(sub)}\n```", "", *_options_table(command, sub)]
    return "\n".join(out) + "\n"


def readme_section(readme: str, heading: str) -> str:
    """The section of ``readme`` whose heading text starts with ``heading``."""
    lines, fenced, start, level = readme.splitlines(), False, None, 0
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"(#+) (.*)", line)
        if m is None:
            continue
        if start is not None and len(m.group(1)) <= level:
            return _without_images("\n".join(lines[start:i]).rstrip() + "\n")
        if start is None and m.group(2).startswith(heading):
            start, level = i, len(m.group(1))
    if start is None:
        raise ValueError(f"README.md has no section whose heading starts with {heading!r}")
    return _without_images("\n".join(lines[start:]).rstrip() + "\n")


def _without_images(markdown: str) -> str:
    """Image lines as a line naming the file (the site does not carry the repository's files)."""
    return IMAGE.sub(lambda m: f"Figure ({m.group(1)}): `{m.group(2)}` in the repository.", markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """MkDocs event: fill in the generated parts of a page."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if README_MARKER.search(markdown):
        readme = (ROOT / "README.md").read_text()
        markdown = README_MARKER.sub(lambda m: readme_section(readme, m.group(1)), markdown)
    return markdown


def sphinx_roles_as_code(html: str) -> str:
    """``:role:<code>~a.b.c</code>`` -> ``<code>c</code>``; without ``~`` the full name (a
    leading ``.`` dropped)."""
    return SPHINX_ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>",
                           html)


def on_page_content(html: str, page, config, files) -> str:
    """MkDocs event: tidy the rendered page."""
    return sphinx_roles_as_code(html)

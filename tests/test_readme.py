"""The README's Python examples run as written, and its layout section names every module."""
import re

import pytest

from .conftest import ROOT

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.spice
@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})


def test_the_layout_section_names_every_module_under_its_subpackage():
    """Each module of each ``analog_ep`` subpackage (``__init__.py`` aside) is named in that
    subpackage's entry of the README's layout block, and each module at the package's top in
    the ``analog_ep/`` part of the block: the section a newcomer reads first stays true."""
    block = re.search(r"## Layout\n.*?```\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    package = block.split("\nbenchmarks/")[0]  # the analog_ep/ part
    entries = dict(re.findall(r"^  (\w+)/ +(.*?)(?=^  \S|\Z)", package, re.S | re.M))
    missing = []
    for module in sorted((ROOT / "analog_ep").glob("*/*.py")):
        sub = module.parent.name
        if module.name != "__init__.py" and module.name not in entries.get(sub, ""):
            missing.append(f"{sub}/{module.name}")
    missing += [m.name for m in sorted((ROOT / "analog_ep").glob("*.py"))
                if m.name != "__init__.py" and not re.search(rf"^  {re.escape(m.name)} ", package, re.M)]
    assert not missing, f"not in the README's layout section: {', '.join(missing)}"

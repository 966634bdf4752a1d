"""The README's Python examples run as written (docs that cannot rot silently)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
# Blocks that need torch show how a torch user calls refmem; torch is not a refmem dependency,
# so those are the only ones not executed here (the same API is run with NumPy in test_conform.py).
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if "import torch" not in b]


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[i], f"README.md block {i}", "exec"), {"__name__": "__readme__"})


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make verify" in text and "make test" in text

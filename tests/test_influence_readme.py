"""The README section on Group Influence (docs/readme_sections/40_influence.md) runs as written: every ```python
block, in order, in one namespace, except blocks preceded by a ``<!-- not run`` comment."""
from __future__ import annotations

import pathlib
import re

import pytest
import torch

SECTION = pathlib.Path(__file__).resolve().parents[1] / "docs" / "readme_sections" / "40_influence.md"


def _blocks(text: str) -> list[str]:
    out = []
    for m in re.finditer(r"(<!--[^>]*-->\s*)?```python\n(.*?)```", text, flags=re.S):
        if m.group(1) and "not run" in m.group(1):
            continue
        out.append(m.group(2))
    return out


def test_readme_examples_run_as_written(capsys):
    blocks = _blocks(SECTION.read_text())
    assert len(blocks) >= 3
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        namespace: dict = {"__name__": "readme_example"}
        for code in blocks:
            exec(compile(code, str(SECTION), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "larger = more helpful" in printed  # summary() printed; the example asserts its own rankings

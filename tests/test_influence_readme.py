"""The README's section on Group Influence ("## Group Influence") runs as written: every ```python
block, in order, in one namespace, except blocks preceded by a ``<!-- not run`` comment."""
from __future__ import annotations

import pathlib
import re

import pytest
import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _blocks(text: str) -> list[str]:
    out = []
    for m in re.finditer(r"(<!--[^>]*-->\s*)?```python\n(.*?)```", text, flags=re.S):
        if m.group(1) and "not run" in m.group(1):
            continue
        out.append(m.group(2))
    return out


def test_readme_examples_run_as_written(capsys):
    blocks = _blocks(_section("Group Influence"))
    assert len(blocks) >= 3
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        namespace: dict = {"__name__": "readme_example"}
        for code in blocks:
            exec(compile(code, "README.md#group-influence", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "larger = more helpful" in printed  # summary() printed; the example asserts its own rankings

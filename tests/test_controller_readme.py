"""The README's Controller example runs as written and changes the mixture at its stage boundaries."""
from __future__ import annotations

import pathlib
import re

import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    start = text.index("## The Controller in your training loop")
    code = re.search(r"```python\n(.*?)```", text[start:], flags=re.S)
    assert code is not None, "the README's Controller section has no python block"
    return code.group(1)


def test_controller_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example may write files; keep them out of the checkout
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict = {"__name__": "readme_example"}
    try:
        exec(compile(_example(), "README.md#the-controller-in-your-training-loop", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    history = namespace["controller"].history
    stages = history["stages"]
    assert [s["step"] for s in stages] == [50, 100]
    first = stages[0]["weights"]
    assert len(first) == 6 and abs(sum(first) - 1.0) < 1e-9
    assert any(abs(a - 1 / 6) > 1e-3 for a in first), "the mixture never moved away from uniform"
    assert history["final"]["step"] == 150

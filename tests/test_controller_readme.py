"""The README's Controller training-loop example runs as written, on a shortened schedule.

The example trains 1500 steps; the test substitutes a 60-step budget with boundaries at 20 and 40 (each
substitution is asserted, so an edited README cannot silently skip them) and checks the history it writes.
"""
from __future__ import annotations

import json
import pathlib
import re

import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SUBSTITUTIONS = {
    "steps = 1500": "steps = 60",
    "stages=[375, 750, 1125]": "stages=[20, 40]",
    "samples_per_domain=64": "samples_per_domain=16",
    '"runs/demo/history.json"': "HISTORY_PATH",
}


def _example() -> str:
    text = README.read_text()
    start = text.index("### The Controller in your own loop")
    code = re.search(r"```python\n(.*?)```", text[start:], flags=re.S)
    assert code is not None
    return code.group(1)


def test_controller_example_runs(tmp_path, capsys):
    code = _example()
    for old, new in SUBSTITUTIONS.items():
        assert old in code, f"README example changed: {old!r} not found"
        code = code.replace(old, new)
    history_path = tmp_path / "history.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, "README.md#the-controller-in-your-own-loop", "exec"),
             {"__name__": "readme_example", "HISTORY_PATH": str(history_path)})
    finally:
        torch.set_num_threads(threads)
    history = json.loads(history_path.read_text())
    stages = history["stages"]
    assert len(stages) >= 2
    weights = [s["weights"] for s in stages if "weights" in s]
    assert any(abs(a - b) > 1e-6 for w in weights[1:] for a, b in zip(w, weights[0])), "the mixture never changed"
    assert "arith" in capsys.readouterr().out

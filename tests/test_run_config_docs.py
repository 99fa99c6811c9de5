"""docs/run-config.md is generated from the ``tikmix run`` schema, and every example config in it validates."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tikmix.data import write_token_file
from tikmix.run import load_config, reference_markdown
from tikmix.run.schema import RunConfig

PAGE = Path(__file__).resolve().parents[1] / "docs" / "run-config.md"


def test_page_is_the_generated_reference():
    assert PAGE.read_text() == reference_markdown(), (
        "docs/run-config.md is out of date: regenerate it with\n  python -c \"from tikmix.run.reference import "
        "reference_markdown as r; print(r(), end='')\" > docs/run-config.md"
    )


def test_reference_lists_every_key_with_its_default():
    text = reference_markdown()
    for section, field in RunConfig.model_fields.items():
        model = field.annotation if isinstance(field.annotation, type) else None
        if model is not None and hasattr(model, "model_fields"):
            for key, sub in model.model_fields.items():
                if key in ("domains", "targets"):
                    assert f"{section}.{key}.*&lt;name&gt;*" in text
                    continue
                row = next(line for line in text.splitlines()
                           if line.startswith((f"| `{section}.{key}` |", f"| **{section}.{key}** |")))
                assert ("required" in row) == sub.is_required(), row
        else:
            assert f"| `{section}` |" in text
    assert "| `train.grad_clip` | number or null | `1.0` | finite; > 0 |" in text
    assert "| `data.vocab_size` | int or null | `null` | >= 2; <= 2^32 |" in text


def test_every_example_config_in_the_page_validates(tmp_path):
    blocks = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert blocks
    rng = np.random.default_rng(0)
    for i, block in enumerate(blocks):
        folder = tmp_path / f"example{i}"
        # the files the examples name, relative to the config's folder
        for rel in re.findall(r"token_file: ([\w./-]+)", block):
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            write_token_file(folder / rel, rng.integers(0, 256, size=70_000), vocab_size=256)
        for rel, pattern in re.findall(r"text_folder: ([\w./-]+), pattern: \"\*\*/\*(\.\w+)\"", block):
            (folder / rel).mkdir(parents=True, exist_ok=True)
            (folder / rel / f"a{pattern}").write_text("print('hello')\n" * 500)
        path = folder / "config.yaml"
        path.write_text(block)
        cfg = load_config(path)
        assert cfg.out_dir == folder / "runs" / "exp1"

"""Checkpoints of ``tikmix run``: ``<out>/checkpoint.pt`` written atomically (temp file + rename)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["checkpoint_path", "save_checkpoint", "load_checkpoint"]


def checkpoint_path(out_dir: Path) -> Path:
    """Where the latest checkpoint of a run lives."""
    return Path(out_dir) / "checkpoint.pt"


def save_checkpoint(out_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state``; a reader sees the previous checkpoint or this one, never a partial file."""
    path = checkpoint_path(out_dir)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(out_dir: Path, map_location: torch.device) -> dict[str, Any] | None:
    """The latest checkpoint's state, or None when there is none."""
    path = checkpoint_path(out_dir)
    if not path.is_file():
        return None
    return torch.load(path, map_location=map_location, weights_only=False)

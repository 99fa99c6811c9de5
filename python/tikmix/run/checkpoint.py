"""Checkpoints of ``tikmix run``: safe to load, atomic to write, the last two kept.

A checkpoint is ``<out>/checkpoints/step-<step>.pt``: a ``torch.save`` archive of tensors and plain Python
values only (``format``, ``step``, ``config``, model, optimizer, controller and RNG states), so it is read
with ``torch.load(weights_only=True)`` -- a file planted in ``out`` cannot run code. It is written to a
temporary file, flushed to disk and renamed into place, so a reader sees a whole checkpoint or none; the two
newest are kept, and :func:`load_latest` falls back to the older one when the newest does not load (e.g. a
file truncated by a full disk).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _rng

__all__ = ["FORMAT", "CheckpointError", "checkpoint_dir", "list_checkpoints", "save_checkpoint", "load_checkpoint",
           "load_latest", "rng_state", "set_rng_state"]

FORMAT = "tikmix.run.checkpoint/1"
KEEP = 2
_NAME = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (unreadable, not a tikmix run checkpoint, or none usable left)."""


def checkpoint_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Where a run's checkpoints live."""
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file, newest first."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return sorted(found, reverse=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory handles: the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out_dir: str | os.PathLike[str], step: int, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus ``format`` and ``step``) as the checkpoint of ``step``; keep the newest two.

    Temp file, fsync, rename, fsync of the folder: after a crash at any point the folder holds the previous
    checkpoints intact, and at most a stray temp file (removed by the next save).
    """
    folder = checkpoint_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:09d}.pt"
    tmp = folder / f".{path.name}.tmp"
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, "step": int(step), **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(folder)
    for _, old in list_checkpoints(out_dir)[KEEP:]:
        old.unlink(missing_ok=True)
    for stray in folder.glob(".step-*.pt.tmp"):
        stray.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read one checkpoint safely (``weights_only=True``); raise :class:`CheckpointError` if it is unusable."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a torch.save archive (truncated or not a checkpoint)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} cannot be read safely: {first}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a tikmix run checkpoint (format {found!r}, expected {FORMAT!r})")
    return state


def load_latest(out_dir: str | os.PathLike[str], map_location: torch.device | str = "cpu",
                log: Callable[[str], Any] = print) -> dict[str, Any] | None:
    """The newest usable checkpoint of a run; None when there is none at all.

    A checkpoint that does not load is reported through ``log`` and the next older one is tried; if every
    one fails, :class:`CheckpointError` lists why.
    """
    found = list_checkpoints(out_dir)
    if not found:
        return None
    problems = []
    for _, path in found:
        try:
            return load_checkpoint(path, map_location)
        except CheckpointError as exc:
            problems.append(str(exc))
            log(f"[tikmix] skipping checkpoint: {exc}")
    raise CheckpointError("no usable checkpoint in " + str(checkpoint_dir(out_dir)) + ": " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), numpy and Python RNG states, as tensors and plain values."""
    state = _rng.rng_state()
    name, key, pos, has_gauss, gauss = state["numpy"]
    state["numpy"] = {"bit_generator": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` output."""
    n = state["numpy"]
    _rng.set_rng_state({**state, "numpy": (n["bit_generator"], n["key"].numpy().astype(np.uint32), n["pos"],
                                           n["has_gauss"], n["gauss"])})


"""The training random streams of this process (torch CPU, every initialised CUDA device, Python ``random``, numpy's
global generator): one capture and one restore, plus the portable form that checkpoints loaded with
``torch.load(weights_only=True)`` accept."""
from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state", "portable_rng", "native_rng"]


def rng_state() -> dict[str, Any]:
    """The training random streams: torch CPU, every initialised CUDA device, Python ``random``, numpy's global
    (numpy's in its legacy tuple form)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (or :func:`native_rng` rebuilt). The CUDA streams are restored only where
    CUDA is available, so a state saved on a GPU machine can be resumed on a CPU-only one."""
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def portable_rng(state: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`rng_state` output as tensors and plain Python values (a checkpoint loaded with ``weights_only=True``
    takes them)."""
    out = dict(state)
    name, keys, pos, has_gauss, cached = state["numpy"]
    out["numpy"] = [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]
    out["python"] = [state["python"][0], list(state["python"][1]), state["python"][2]]
    return out


def native_rng(state: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`portable_rng`: a state :func:`set_rng_state` restores."""
    out = dict(state)
    name, keys, pos, has_gauss, cached = state["numpy"]
    out["numpy"] = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    version, internal, gauss = state["python"]
    out["python"] = (version, tuple(internal), gauss)
    return out

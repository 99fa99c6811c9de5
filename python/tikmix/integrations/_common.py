"""What the framework callbacks share: the ``>=`` boundary rule and the controller's state file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["check_controller", "advance", "STATE_FILE", "save_state", "load_state"]

STATE_FILE = "tikmix_controller.json"


def check_controller(controller: Any) -> Any:
    """``controller`` if it has what the framework callbacks use, else a TypeError naming what is missing."""
    for attr in ("boundaries", "stages_done", "step", "state_dict", "load_state_dict", "sampler", "model"):
        if not hasattr(controller, attr):
            raise TypeError(f"controller must be a tikmix.Controller; it has no {attr!r}")
    return controller


def advance(controller: Any, step: int) -> list[dict[str, Any]]:
    """Handle every stage boundary ``b <= step`` that ``controller`` has not handled yet, oldest first.

    Each boundary is handled exactly once, by ``controller.step(b)``: influence is measured on the model as it is
    now (at ``step``), and the new mixture starts at the sampler's next free step (``applies_from_step`` in the
    history). Between boundaries this only keeps the controller's training-time clock. The model is put in eval
    mode while influence is measured (no dropout: per-sample gradients need a deterministic forward) and then
    restored. Returns the new history records (usually none).
    """
    step = int(step)
    # The controller handles boundaries in order, so the first `stages_done` are the handled ones.
    pending = [b for b in controller.boundaries[controller.stages_done :] if b <= step]
    if not pending:
        controller.step(step)  # keeps the train-time clock; a no-op otherwise
        return []
    model = controller.model
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    records = []
    try:
        for b in pending:
            record = controller.step(b)
            if record is not None:
                records.append(record)
    finally:
        for m, training in modes:
            m.training = training
    return records


def save_state(controller: Any, step: int, folder: str | os.PathLike[str]) -> Path:
    """Write ``controller.state_dict(step=step)`` (the sampler's state inside) to ``folder/tikmix_controller.json``."""
    path = Path(folder) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(controller.state_dict(step=int(step))))
    os.replace(tmp, path)
    return path


def load_state(controller: Any, folder: str | os.PathLike[str]) -> Path:
    """Restore ``controller`` (and its sampler) from ``folder/tikmix_controller.json``; FileNotFoundError if absent."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the checkpoint {str(folder)!r} holds no tikmix controller state, so the mixture "
            "schedule and sampler position cannot be restored exactly (was it saved with the tikmix callback?)"
        )
    controller.load_state_dict(json.loads(path.read_text()))
    return path

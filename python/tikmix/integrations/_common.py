"""What the framework callbacks share: collecting the records of a controller step, and the controller's state file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["check_controller", "advance", "STATE_FILE", "save_state", "load_state"]

STATE_FILE = "tikmix_controller.json"


def check_controller(controller: Any) -> Any:
    """``controller`` if it has what the framework callbacks use, else a TypeError naming what is missing."""
    for attr in ("boundaries", "stages_done", "step", "state_dict", "load_state_dict", "sampler", "model", "history"):
        if not hasattr(controller, attr):
            raise TypeError(f"controller must be a tikmix.Controller; it has no {attr!r}")
    return controller


def advance(controller: Any, step: int) -> list[dict[str, Any]]:
    """``controller.step(step)``, returning the history records of the boundaries it handled (usually none).

    The rule (every boundary ``<= step`` not handled yet, once, in order) and the measurement policy (eval mode,
    training RNG untouched) are the controller's own (:meth:`tikmix.Controller.step`); this only collects what a
    call appended to ``controller.history["stages"]``.
    """
    before = len(controller.history["stages"])
    controller.step(int(step))
    return list(controller.history["stages"][before:])


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

"""What the framework callbacks share: collecting the records of a controller step, and the controller's state file."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["check_controller", "check_dataset", "check_step_batch", "advance", "STATE_FILE", "save_state",
           "load_state"]

STATE_FILE = "tikmix_controller.json"


def check_controller(controller: Any) -> Any:
    """``controller`` if it has what the framework callbacks use, else a TypeError naming what is missing."""
    for attr in ("boundaries", "stages_done", "step", "state_dict", "load_state_dict", "sampler", "model", "history"):
        if not hasattr(controller, attr):
            raise TypeError(f"controller must be a tikmix.Controller; it has no {attr!r}")
    return controller


def check_dataset(controller: Any, dataset: Any, what: str) -> None:
    """Refuse a training dataset whose domains are not the controller's, in names, order and sizes.

    ``dataset`` is the concatenation the sampler indexes (:func:`tikmix.concat_domains`); built from a mapping it
    carries ``domain_names``, and always ``domain_sizes``. Without them only the total size can be compared.
    """
    names = list(controller.domain_names)
    sizes = [len(d) for d in controller._domains.values()]
    theirs_n = getattr(dataset, "domain_names", None)
    theirs_s = getattr(dataset, "domain_sizes", None)

    def listing(ns: Any, ss: Any) -> str:
        if ns is None:
            return "(" + ", ".join(f"domain {j}={k}" for j, k in enumerate(ss)) + ")"
        return "(" + ", ".join(f"{n}={k}" for n, k in zip(ns, ss)) + ")"

    hint = ("build it with tikmix.concat_domains(domains) from the same mapping name -> dataset as the "
            "controller's domains")
    if theirs_n is not None and list(theirs_n) != names:
        raise ValueError(f"{what} holds the domains {listing(theirs_n, theirs_s)} in this order, but the "
                         f"controller's domains are {listing(names, sizes)}: {hint}")
    if theirs_s is not None and [int(k) for k in theirs_s] != sizes:
        raise ValueError(f"{what} holds domains of sizes {listing(theirs_n, theirs_s)}, but the controller's "
                         f"domains are {listing(names, sizes)}: {hint}")
    if theirs_s is None and hasattr(dataset, "__len__") and len(dataset) != sum(sizes):
        raise ValueError(f"{what} has {len(dataset)} samples but the controller's domains {listing(names, sizes)} "
                         f"sum to {sum(sizes)}: {hint}")


def check_step_batch(sampler: Any, factors: Sequence[tuple[str, int]]) -> None:
    """Refuse a sampler whose ``batch_size`` is not the samples of one optimizer step.

    ``factors`` are the framework's ``(setting name, value)`` pairs whose product is that number (micro-batch size,
    accumulation steps, world size); the error shows the product term by term.
    """
    per_step = math.prod(int(v) for _, v in factors)
    if sampler.batch_size != per_step:
        formula = " x ".join(f"{name} ({value})" for name, value in factors)
        raise ValueError(
            f"the sampler's batch_size ({sampler.batch_size}) must be the samples of one optimizer step: "
            f"{formula} = {per_step}"
        )


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

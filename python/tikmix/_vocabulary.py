"""The model's vocabulary against the data's token ids: a mismatch is refused before step 1, not met as an IndexError
inside the first forward."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["check_vocabulary", "max_token_id", "SCAN_LIMIT"]


def check_vocabulary(controller: Any, model: Any) -> None:
    """Refuse token ids the model's input embedding cannot look up, before step 1 (not an IndexError inside it).

    Checks the controller's domains and targets where their largest id is cheap to know (tensors, numpy arrays,
    datasets with ``max_token_id`` or of at most :data:`SCAN_LIMIT` items, scanned once)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    vocab = getattr(emb, "num_embeddings", None)
    if vocab is None:
        return
    for kind, sets in (("domains", controller._domains), ("targets", controller._targets)):
        for name, data in sets.items():
            top = max_token_id(data)
            if top is not None and top >= vocab:
                raise ValueError(
                    f"{kind}[{name!r}] holds token id {top}, but the model's input embedding has {vocab} rows "
                    f"(ids 0..{vocab - 1}): the tokenizer's vocabulary is larger than the model's; build the model "
                    f"with vocab_size >= {top + 1}"
                )


#: Map-style datasets of at most this many items are scanned for their largest token id.
SCAN_LIMIT = 100_000


def max_token_id(data: Any) -> int | None:
    """The largest token id in ``data`` (tensor rows, numpy rows, or a dataset of such items or dicts with
    ``input_ids``), or None when it is not cheap to know."""
    top = getattr(data, "max_token_id", None)
    if isinstance(top, (int, np.integer)):
        return int(top)
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        return int(data.max()) if data.numel() and not data.is_floating_point() else None
    if not hasattr(data, "__len__") or len(data) > SCAN_LIMIT:
        return None
    best: int | None = None
    for i in range(len(data)):
        item = data[i]
        ids = item.get("input_ids") if isinstance(item, dict) else item
        if isinstance(ids, np.ndarray):
            ids = torch.from_numpy(ids)
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.numel() == 0:
            return None
        m = int(ids.max())
        best = m if best is None else max(best, m)
    return best

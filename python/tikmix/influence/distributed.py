"""torch.distributed glue for influence: each rank sketches its own batches with the shared seed; the small
results are summed (all_reduce) or gathered. No home-made communication: collectives of torch.distributed only,
so any backend works (gloo on CPU, nccl on GPU).

What crosses ranks, per compute: target sketch sums ``[n, K]`` and counts, domain sketch sums ``[G, K]`` and
counts, the partial ``S`` ``[n, G]``, for ``gauss_newton`` the Gram matrix ``ΦᵀΦ`` ``[K, K]`` (float64) and row
count, and the per-unit scores ``[U, n]`` for the bootstrap (gathered). Sketches of single samples never move.
"""
from __future__ import annotations

from typing import Any, List, Sequence

import torch
import torch.distributed as dist

__all__ = ["world_size", "rank", "is_active", "all_reduce_sum_", "all_gather_objects", "check_same_on_all_ranks"]


def is_active() -> bool:
    """True under an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def _comm_device(t: torch.Tensor) -> torch.device:
    backend = dist.get_backend()
    if t.device.type == "cuda" and backend == "gloo":
        return torch.device("cpu")
    return t.device


def all_reduce_sum_(tensors: Sequence[torch.Tensor]) -> None:
    """In place: every tensor becomes its sum over ranks (moved through the CPU when the backend needs it)."""
    if not is_active():
        return
    for t in tensors:
        dev = _comm_device(t)
        if dev == t.device:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        else:
            tmp = t.to(dev)
            dist.all_reduce(tmp, op=dist.ReduceOp.SUM)
            t.copy_(tmp)


def all_gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (a one-element list without a process group)."""
    if not is_active():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def check_same_on_all_ranks(value: Any, what: str) -> None:
    """Raise a ValueError on every rank when ``value`` differs between ranks."""
    values = all_gather_objects(value)
    if any(v != values[0] for v in values[1:]):
        raise ValueError(f"{what} differ between ranks: " + "; ".join(f"rank {i}: {v!r}" for i, v in enumerate(values)))

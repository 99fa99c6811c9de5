"""The one home of tikmix's torch.distributed glue: rank, world size, barrier and the few collectives the library
uses (sum over ranks, gather of small objects). No home-made communication: collectives of torch.distributed
only, so any backend works (gloo on CPU, nccl on GPU). Without an initialised process group every helper
answers as a single process (rank 0 of 1) and the collectives are no-ops.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, List, Sequence

import torch
import torch.distributed as dist

__all__ = [
    "is_initialized",
    "is_active",
    "rank",
    "world_size",
    "barrier",
    "init_from_env",
    "process_group_from_env",
    "all_reduce_sum_",
    "all_gather_objects",
    "check_same_on_all_ranks",
    "share",
]


def is_initialized() -> bool:
    """True under an initialised process group (of any size, one rank included)."""
    return dist.is_available() and dist.is_initialized()


def is_active() -> bool:
    """True under an initialised process group with more than one rank."""
    return is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The process group's size; 1 without one."""
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    """This process's rank in the process group; 0 without one."""
    return dist.get_rank() if is_initialized() else 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    if is_initialized():
        dist.barrier()


def init_from_env(device: str) -> tuple[int, int, int]:
    """Join the process group a launcher such as ``torchrun`` describes in the environment.

    Initialises the default group (nccl for a CUDA ``device``, gloo otherwise) when ``WORLD_SIZE`` > 1 and none
    is initialised yet. Returns ``(rank, world_size, local_rank)``; ``(0, 1, 0)`` for a single process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if is_initialized():
        return rank(), world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


@contextlib.contextmanager
def process_group_from_env(device: str) -> Iterator[tuple[int, int, int]]:
    """:func:`init_from_env` for the length of a ``with`` block, leaving the process as it found it.

    Yields ``(rank, world_size, local_rank)``. A group this block initialised is destroyed when it ends: after a
    barrier when the block completes (no rank tears its connections down while a peer still reads from them), at
    once when it raises (the peers may never reach a barrier). A group that existed before is left alone.
    """
    created = not is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    info = init_from_env(device)
    try:
        yield info
    except BaseException:
        if created:
            dist.destroy_process_group()
        raise
    if created:
        dist.barrier()
        dist.destroy_process_group()


def _comm_device(t: torch.Tensor) -> torch.device:
    """Where the backend can reduce ``t``: gloo reduces CPU tensors, nccl CUDA tensors."""
    backend = dist.get_backend()
    if t.device.type == "cuda" and backend == "gloo":
        return torch.device("cpu")
    if t.device.type == "cpu" and backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def all_reduce_sum_(tensors: Sequence[torch.Tensor]) -> None:
    """In place: every tensor becomes its sum over ranks (moved to a device the backend reduces on when needed).

    A collective call: make it on every rank. A no-op without a process group of more than one rank.
    """
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


def share(n: int, unit: int = 1) -> tuple[int, int]:
    """``[a, b)``: this rank's contiguous share of ``n`` ordered items cut into units of ``unit`` items (the last unit
    may be shorter), whole units only, balanced over the ranks (the first ``units % world`` ranks take one more).

    Rank order is item order, so gathering per-unit results by rank and then local order restores the global order
    at every world size. Without a process group: ``(0, n)``.
    """
    if n < 0 or unit < 1:
        raise ValueError(f"share needs n >= 0 and unit >= 1, got n={n}, unit={unit}")
    units = -(-n // unit)
    per, extra = divmod(units, world_size())
    r = rank()
    u0 = r * per + min(r, extra)
    u1 = u0 + per + (r < extra)
    return min(n, u0 * unit), min(n, u1 * unit)

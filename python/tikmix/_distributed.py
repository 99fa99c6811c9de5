"""The one home of tikmix's torch.distributed glue: rank, world size, barrier and the few collectives the library
uses (sum over ranks, gather of small objects). No home-made communication: collectives of torch.distributed
only, so any backend works (gloo on CPU, nccl on GPU). Without an initialised process group every helper
answers as a single process (rank 0 of 1) and the collectives are no-ops.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterator, List, Sequence

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
    "fingerprint",
    "plain_tree",
    "rendezvous",
    "rendezvous_timeout",
    "share",
]

#: Environment variable: seconds :func:`rendezvous` waits for every rank (default :data:`DEFAULT_RENDEZVOUS_TIMEOUT`).
TIMEOUT_ENV = "TIKMIX_RENDEZVOUS_TIMEOUT"
DEFAULT_RENDEZVOUS_TIMEOUT = 600.0


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


def plain_tree(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``value`` as plain Python containers, recursively: mappings as dicts with str keys, lists and tuples as lists,
    tensors, numpy arrays and numpy scalars (anything with ``tolist``) as lists and Python scalars; every other
    value becomes ``leaf(value)``."""
    if isinstance(value, Mapping):
        return {str(k): plain_tree(v, leaf) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_tree(v, leaf) for v in value]
    if isinstance(value, torch.Tensor):
        return plain_tree(value.detach().cpu().tolist(), leaf)
    if hasattr(value, "tolist") and callable(value.tolist):
        return plain_tree(value.tolist(), leaf)
    return leaf(value)


def _canonical_leaf(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(value):
        return f"<callable {getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__qualname__)}>"
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _canonical(value: Any) -> Any:
    """A JSON-ready stand-in for ``value`` that is equal on every rank when the values are: containers recursively,
    arrays and tensors as lists, callables by their qualified name and other objects by their type (never a repr,
    which may hold a memory address)."""
    return plain_tree(value, _canonical_leaf)


def _flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    """Dotted key -> leaf of a canonical value (lists of dicts by index: ``stages.0.step``)."""
    if isinstance(value, dict) and value:
        out: Dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        out = {f"{prefix}.#" if prefix else "#": len(value)}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}.{i}" if prefix else str(i)))
        return out
    return {prefix: value}


def fingerprint(value: Any) -> str:
    """SHA-256 (hex) of a nested value's canonical form: equal values give equal fingerprints in every process."""
    flat = _flatten(_canonical(value))
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()


def _short(value: Any, width: int = 80) -> str:
    text = "(missing)" if value is _MISSING else json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


_MISSING = object()


def check_same_on_all_ranks(value: Any, what: str) -> None:
    """Raise a ValueError on every rank when ``value`` (a nested dict, list or plain value) differs between ranks.

    The ranks first wait for each other (:func:`rendezvous`, so a rank that never comes is reported by number instead
    of hanging), then compare a 32-byte :func:`fingerprint`; only on a mismatch are the values themselves gathered,
    and the error names every differing key (dotted, e.g. ``influence.k``) with each rank's value. A no-op without a
    process group of more than one rank.
    """
    if not is_active():
        return
    rendezvous(f"comparing {what}")
    group = _control_group()  # gloo, CPU tensors, apart from the training's collectives
    digest = torch.frombuffer(bytearray(bytes.fromhex(fingerprint(value))), dtype=torch.int64).clone()
    gathered = [torch.zeros_like(digest) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, digest, group=group)
    if all(torch.equal(g, gathered[0]) for g in gathered[1:]):
        return
    flats: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(flats, _flatten(_canonical(value)), group=group)
    keys = sorted(set().union(*flats))
    lines = []
    for key in keys:
        vals = [f.get(key, _MISSING) for f in flats]
        if any(v != vals[0] for v in vals[1:]):
            ranks = ", ".join(f"rank {r}: {_short(v)}" for r, v in enumerate(vals))
            lines.append(f"{key or 'value'} ({ranks})")
    raise ValueError(f"{what} differ between ranks, so they would not take the same decisions (or would hang in "
                     f"a collective); every rank must run the same configuration. Differing: " + "; ".join(lines))


def rendezvous_timeout() -> float:
    """Seconds :func:`rendezvous` waits: the ``TIKMIX_RENDEZVOUS_TIMEOUT`` environment variable, else 600."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_RENDEZVOUS_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


_control_groups: Dict[Any, Any] = {}


def _control_group() -> Any:
    """A gloo group over all ranks for :func:`rendezvous`, apart from the training's collectives (so a rank waiting
    here never pairs with a peer's gradient all-reduce) and able to time out on any device. Created on first use,
    which every rank reaches at the same point of the same program."""
    default = dist.group.WORLD
    if default not in _control_groups:
        _control_groups[default] = dist.new_group(backend="gloo")
    return _control_groups[default]


def rendezvous(what: str) -> None:
    """Wait until every rank reaches this point, for at most :func:`rendezvous_timeout` seconds.

    Called before collectives that ranks could reach in disagreement (a boundary one rank thinks is due and another
    does not): instead of a silent hang, a RuntimeError names ``what``. A no-op without a process group of more than
    one rank.
    """
    if not is_active():
        return
    timeout = rendezvous_timeout()
    here = torch.ones(1, dtype=torch.int64)
    work = dist.all_reduce(here, group=_control_group(), async_op=True)
    try:
        work.wait(timeout=datetime.timedelta(seconds=timeout))
    except RuntimeError as exc:
        raise RuntimeError(
            f"tikmix: rank {rank()} waited {timeout:g}s for every rank at {what}, and not all came ({exc}). The ranks "
            "disagree about where they are (different configs, boundaries or step counts, or a rank that failed or "
            f"stalls); set {TIMEOUT_ENV} to wait longer when a rank is legitimately late") from exc
    if int(here) != world_size():
        raise RuntimeError(f"tikmix: rendezvous at {what} counted {int(here)} of {world_size()} ranks")

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

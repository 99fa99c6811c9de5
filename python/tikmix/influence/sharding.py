"""Sharded parameters (DTensor, as FSDP2's ``fully_shard`` makes them): where each rank's local gradient lies in the
flat parameter, and the FSDP2 settings an influence computation needs.

Why sketching a shard is exact: a sketch of a flattened gradient ``g ∈ R^D`` is ``Σ_r g[r]·R[r, :]`` with ``R[r, c]``
a function of ``(seed, r, c)`` only, so a rank holding the contiguous slice ``g[o : o+n]`` sketches it with
``offset = o`` and the partial sketches of all slices sum to the sketch of ``g`` (up to the order of the float32
additions). Kronecker blocks are chunk-additive the same way: rows ``[r0, r1)`` of a weight gradient contribute
``R_out[r0:r1]ᵀ G[r0:r1] R_in``. Nothing is gathered: ``k`` floats per gradient cross ranks.

Supported placements: ``Shard(0)`` (what ``fully_shard`` makes; even, uneven, and empty local shards) and
``Replicate()`` on any mesh dimension — so FSDP (1-D mesh) and HSDP (2-D mesh ``(replicate, shard)``). A rank's
local gradient is then a contiguous run of rows of the global one at ``row_start · prod(shape[1:])``, read from the
placement and the mesh (never assumed even). The gradient that FSDP2 reduce-scatters (and, for HSDP, all-reduces
over replicas) holds the sum over *all* ranks' micro-batches, each of the ``n_replicas`` replicas holding the same
slice: the partial sketches are divided by ``n_replicas`` (a power of two in practice, so exactly) and summed over
all ranks. Other placements (tensor parallelism's ``Shard(1)``, ``Partial``, strided shards) raise
``NotImplementedError`` naming the parameter and its placement.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .. import _distributed as dist_utils

__all__ = ["ShardSpec", "Lockstep", "is_sharded", "local_tensor", "shard_spec", "shard_specs", "compute_device",
           "fsdp_summed_gradients"]


def _dtensor_type() -> Optional[type]:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return None
    return DTensor


def is_sharded(t: Any) -> bool:
    """True when ``t`` is a DTensor (a sharded or replicated parameter, gradient or optimizer state)."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The local (unpadded) part of a DTensor; a plain tensor as is."""
    return t.to_local() if is_sharded(t) else t


@dataclass(frozen=True)
class ShardSpec:
    """Where one rank's local part of a parameter lies in the flat (row-major) global parameter.

    ``row_start``/``rows``: the local rows of dim 0 (``rows`` may be 0); ``flat_offset = row_start · row_numel``;
    ``n_replicas``: how many ranks hold the same slice (product of the mesh sizes with ``Replicate()``);
    ``mesh_size``: ranks in the parameter's device mesh.
    """

    row_start: int
    rows: int
    row_numel: int
    n_replicas: int
    mesh_size: int

    @property
    def flat_offset(self) -> int:
        return self.row_start * self.row_numel

    @property
    def numel(self) -> int:
        return self.rows * self.row_numel


def _placement_ok(placement: Any) -> bool:
    """``Replicate()`` or a plain ``Shard(0)`` (not a strided shard, whose local rows are not contiguous)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor import placement_types

    strided = getattr(placement_types, "_StridedShard", None)
    if isinstance(placement, Replicate):
        return True
    if strided is not None and isinstance(placement, strided):
        return False
    return isinstance(placement, Shard) and placement.dim == 0


def shard_spec(name: str, param: torch.Tensor) -> ShardSpec:
    """The :class:`ShardSpec` of a DTensor ``param`` on this rank; NotImplementedError for placements other than
    ``Shard(0)`` and ``Replicate()``, naming the parameter and the placement."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    placements = tuple(param.placements)
    bad = [p for p in placements if not _placement_ok(p)]
    if bad:
        raise NotImplementedError(
            f"influence of parameter {name!r} with DTensor placements {placements}: only Shard(0) (FSDP2's "
            f"fully_shard) and Replicate() are supported (unsupported: {bad}); tensor-parallel layouts (Shard(1), "
            "Partial, strided shards) cannot be sketched exactly here, so they raise rather than give a wrong number"
        )
    mesh = param.device_mesh
    shape = tuple(param.shape)
    if len(shape) == 0:  # a scalar cannot be sharded: every rank holds it
        local_shape: Tuple[int, ...] = ()
        offset: Tuple[int, ...] = ()
    else:
        local_shape, offset = compute_local_shape_and_global_offset(shape, mesh, placements)
    local = param.to_local()
    if tuple(local.shape) != tuple(local_shape) or (len(shape) > 0 and tuple(local_shape[1:]) != shape[1:]):
        raise NotImplementedError(
            f"influence of parameter {name!r}: its local shard has shape {tuple(local.shape)}, but its placements "
            f"{placements} on the mesh describe {tuple(local_shape)} (global {shape}); cannot locate it exactly"
        )
    from torch.distributed.tensor import Replicate

    sizes = list(mesh.shape)
    n_replicas = math.prod(s for s, p in zip(sizes, placements) if isinstance(p, Replicate))
    row_numel = math.prod(shape[1:]) if len(shape) > 0 else 1
    rows = local_shape[0] if len(shape) > 0 else 1
    row_start = offset[0] if len(shape) > 0 and rows > 0 else 0
    return ShardSpec(row_start, rows, row_numel, n_replicas, math.prod(sizes))


def shard_specs(named: Sequence[Tuple[str, torch.Tensor]]) -> Dict[int, ShardSpec]:
    """``index -> ShardSpec`` for the DTensor entries of ``named``; checks that their meshes span every rank."""
    specs: Dict[int, ShardSpec] = {}
    world = dist_utils.world_size()
    for i, (name, p) in enumerate(named):
        if not is_sharded(p):
            continue
        spec = shard_spec(name, p)
        if spec.mesh_size != world:
            raise NotImplementedError(
                f"influence of parameter {name!r}: its device mesh spans {spec.mesh_size} ranks, but the process "
                f"group has {world}; sharded influence needs every rank in the parameter's mesh (FSDP/HSDP over "
                "the whole job)"
            )
        specs[i] = spec
    return specs


def compute_device(named: Sequence[Tuple[str, torch.Tensor]]) -> Optional[torch.device]:
    """The device the forward runs on for DTensor parameters (their mesh's device type: with FSDP2's CPU offload the
    parameters live on the CPU while the forward runs on the accelerator); None without DTensors."""
    for _, p in named:
        if is_sharded(p):
            kind = p.device_mesh.device_type
            if kind == "cpu":
                return torch.device("cpu")
            mod = getattr(torch, kind, None)
            index = mod.current_device() if mod is not None and hasattr(mod, "current_device") else None
            return torch.device(kind, index)
    return None


def _fsdp_param_groups(model: nn.Module) -> Iterator[Any]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            state = module._get_fsdp_state()
            for group in state._fsdp_param_groups:
                yield group


@contextlib.contextmanager
def fsdp_summed_gradients(model: nn.Module) -> Iterator[None]:
    """While active, FSDP2 reduces gradients with a plain sum over ranks (no division by the data-parallel size, no
    custom pre/post factors), so a rank's sharded gradient is its slice of the sum over every rank's micro-batch.
    The model's own settings come back afterwards. Refuses a model inside gradient accumulation without sync
    (a backward would add to the accumulated unsharded gradients)."""
    groups = list(_fsdp_param_groups(model))
    if any(not getattr(g, "reduce_grads", True) for g in groups):
        raise RuntimeError(
            "the FSDP2 model has gradient synchronisation disabled (set_requires_gradient_sync(False), e.g. inside "
            "gradient accumulation); run the influence computation between optimizer steps, with sync enabled"
        )
    saved = [(g, g.gradient_divide_factor, g.force_sum_reduction_for_comms) for g in groups]
    try:
        for g in groups:
            g.gradient_divide_factor = 1.0
            g.force_sum_reduction_for_comms = True
        yield
    finally:
        for g, factor, force in saved:
            g.gradient_divide_factor = factor
            g.force_sum_reduction_for_comms = force


class Lockstep:
    """Runs every rank through the same number of forward/backward passes per domain or target (FSDP2's collectives
    inside forward and backward need every rank), padding a rank that has run out of batches with a zero-weighted
    pass over a batch it has seen before (or one received from another rank).

    ``steps(iterator)`` yields ``(batch, real)``: ``real`` False for a padding pass, whose loss must be multiplied by
    zero and which must not be counted.
    """

    def __init__(self) -> None:
        self.template: Any = None

    def steps(self, iterator: Iterator[Any]) -> Iterator[Tuple[Any, bool]]:
        import torch.distributed as dist

        end = object()
        while True:
            batch = next(iterator, end)
            have = batch is not end
            if have and self.template is None:
                self.template = batch
            flags = torch.tensor([[int(have), int(self.template is not None)]], dtype=torch.int64)
            if dist_utils.is_active():
                gathered = [torch.zeros_like(flags) for _ in range(dist.get_world_size())]
                dist.all_gather(gathered, flags)
                table = torch.cat(gathered)
            else:
                table = flags
            if int(table[:, 0].sum()) == 0:
                return
            if bool((table[:, 1] == 0).any()):  # someone has never seen a batch: send it one
                src = int(table[:, 0].nonzero()[0, 0])
                box: List[Any] = [batch if dist.get_rank() == src else None]
                dist.broadcast_object_list(box, src=src)
                if self.template is None:
                    self.template = box[0]
            yield (batch, True) if have else (self.template, False)

"""tikmix_ext — the compiled op layer of tikmix.

Loads the native module ``_C`` (which registers ``torch.ops.tikmix.*``), and provides typed wrappers, fake
kernels (for torch.compile / FakeTensor) and autograd registrations for every op. ``python -m tikmix_ext.info``
prints what this build contains.
"""
from __future__ import annotations

from typing import Any, Dict

from ._load import _C
from .kron import sketch_kron
from .reduce import group_influence, mixture_scores, segment_mean, segment_sum
from .sketch import projection, sketch, sketch_accumulate_

OPS = (
    "sketch",
    "sketch_accumulate_",
    "projection",
    "sketch_kron",
    "segment_sum",
    "segment_mean",
    "group_influence",
    "mixture_scores",
)


def build_info() -> Dict[str, Any]:
    """Versions and features of the compiled extension, plus which dispatch keys each op has a kernel for."""
    import torch

    info: Dict[str, Any] = dict(_C.build_info())
    info["torch_runtime_version"] = torch.__version__
    kernels: Dict[str, list] = {}
    for op in OPS:
        name = f"tikmix::{op}"
        keys = [
            key
            for key in ("CPU", "CUDA", "CompositeExplicitAutograd")
            if torch._C._dispatch_has_kernel_for_dispatch_key(name, key)
        ]
        kernels[op] = keys
    info["kernels"] = kernels
    info["cuda_available"] = torch.cuda.is_available()
    return info


__all__ = [
    "build_info",
    "sketch",
    "sketch_accumulate_",
    "projection",
    "sketch_kron",
    "segment_sum",
    "segment_mean",
    "group_influence",
    "mixture_scores",
    "OPS",
]

"""tikmix_ext — the compiled op layer of tikmix.

Loads the native module ``_C`` (which registers ``torch.ops.tikmix.*`` with CPU, CUDA and Meta kernels; the Meta
kernels serve meta tensors, FakeTensor and torch.compile and run the real kernels' input checks), and provides typed
wrappers and autograd registrations for every op. :func:`has_kernel` says whether this build runs an op on a
device; ``python -m tikmix_ext.info`` prints what this build contains.
"""
from __future__ import annotations

from typing import Any, Dict, Union

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


def has_kernel(op: str, device: Union[str, "torch.device"]) -> bool:
    """Whether this build can run tikmix op ``op`` on tensors of ``device``.

    Args:
        op: an op name from :data:`OPS`, e.g. ``"sketch"`` (``"tikmix::sketch"`` is accepted too).
        device: a ``torch.device`` or a device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``); only its type counts.

    Returns:
        True when the op has a computing kernel for that device type: always for ``"cpu"``; for ``"cuda"`` only in
        a build with CUDA kernels (``python -m tikmix_ext.info`` lists them). Other device types (``"meta"``,
        ``"mps"``, …) give False: meta tensors only ever get output shapes, never results.

    Raises:
        ValueError: ``op`` is not a tikmix op, or ``device`` is not a valid device string.
        TypeError: ``op`` is not a str, or ``device`` is neither a str nor a torch.device.
    """
    import torch

    if not isinstance(op, str):
        raise TypeError(f"tikmix_ext.has_kernel: op must be a str, got {type(op).__name__}")
    name = op[len("tikmix::"):] if op.startswith("tikmix::") else op
    if name not in OPS:
        raise ValueError(f"tikmix_ext.has_kernel: op must be one of {', '.join(OPS)}; got {op!r}")
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"tikmix_ext.has_kernel: device {device!r} is not a valid device string: {exc}") from None
    elif not isinstance(device, torch.device):
        raise TypeError(f"tikmix_ext.has_kernel: device must be a str or torch.device, got {type(device).__name__}")
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    if key is None:
        return False
    qualified = f"tikmix::{name}"
    if torch._C._dispatch_has_kernel_for_dispatch_key(qualified, key):
        return True
    # An op without tensor inputs (projection) is registered once for every backend and returns CPU tensors.
    return key == "CPU" and bool(torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CompositeExplicitAutograd"))


def build_info() -> Dict[str, Any]:
    """Versions and features of the compiled extension, plus the device types each op has a kernel for."""
    import torch

    info: Dict[str, Any] = dict(_C.build_info())
    info["torch_runtime_version"] = torch.__version__
    info["kernels"] = {op: [device for device in ("cpu", "cuda") if has_kernel(op, device)] for op in OPS}
    info["cuda_available"] = torch.cuda.is_available()
    return info


__all__ = ["build_info", "has_kernel", *OPS, "OPS"]

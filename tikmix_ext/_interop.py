"""Accept arrays that speak DLPack (numpy, cupy, jax, …) in the typed wrappers, and hand results back in kind."""
from __future__ import annotations

import numbers
from typing import Any, Callable, Optional, Tuple

import torch

Converter = Callable[[torch.Tensor], Any]

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def int_arg(value: Any, name: str, op: str, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    """An integer argument of op ``op`` as a Python int in ``[low, high]``: TypeError for a non-int (bools
    included), ValueError out of range. Bounds the kernel checks itself with its own message are left at int64."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"tikmix.{op}: {name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not low <= value <= high:
        what = "fit in int64" if (low, high) == (INT64_MIN, INT64_MAX) else f"be in [{low}, {high}]"
        raise ValueError(f"tikmix.{op}: {name} must {what}, got {value}")
    return value


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def as_tensor(value: Any, name: str, written: bool = False) -> Tuple[torch.Tensor, Converter]:
    """Return ``value`` as a tensor (zero-copy through DLPack where the device allows) and a converter back.

    Tensors pass through unchanged. numpy arrays are wrapped with ``torch.from_numpy`` (no copy); other
    objects with ``__dlpack__`` (cupy, jax) via ``torch.from_dlpack`` (no copy). Anything else raises a
    TypeError naming ``name``. ``written=True`` marks an argument the op updates in place: it must share memory
    with the caller's object, so a read-only numpy array raises ValueError (a copy would be updated and dropped)
    and only tensors, numpy and cupy arrays are accepted (jax arrays, for one, are immutable).
    """
    if isinstance(value, torch.Tensor):
        return value, _identity
    module = type(value).__module__.split(".")[0]
    if written and module not in ("numpy", "cupy"):
        raise TypeError(
            f"tikmix: {name} is updated in place, so it must be a torch.Tensor, a numpy array or a cupy array, "
            f"got {type(value).__name__}"
        )
    if module == "numpy":
        import numpy as np

        if not value.flags.writeable:
            if written:
                raise ValueError(
                    f"tikmix: {name} is a read-only numpy array, but the op updates it in place; pass a writable "
                    f"array (e.g. {name}.copy()) and keep that one"
                )
            value = np.array(value)  # torch.from_numpy warns on read-only arrays; an input may be copied
        if value.dtype.byteorder == ">":
            raise TypeError(f"tikmix: {name} has a big-endian dtype {value.dtype}; convert it to native order")
        return torch.from_numpy(value), lambda t: t.detach().cpu().numpy()
    if hasattr(value, "__dlpack__"):
        tensor = torch.from_dlpack(value)
        if module == "cupy":
            import cupy  # type: ignore[import-not-found]

            return tensor, lambda t: cupy.from_dlpack(t.detach())
        return tensor, lambda t: _from_dlpack_like(value, t)
    raise TypeError(
        f"tikmix: {name} must be a torch.Tensor or an array supporting DLPack (numpy, cupy), got {type(value).__name__}"
    )


def _from_dlpack_like(example: Any, t: torch.Tensor) -> Any:
    namespace = getattr(example, "__array_namespace__", None)
    if namespace is not None:
        return namespace().from_dlpack(t.detach())
    return t


def as_optional_tensor(value: Optional[Any], name: str) -> Optional[torch.Tensor]:
    if value is None:
        return None
    return as_tensor(value, name)[0]


def check_devices(op: str, **tensors: Optional[torch.Tensor]) -> None:
    """Raise one clear error listing every reason ``op`` cannot run on these tensors' devices.

    Catches, before the dispatcher does, a CUDA tensor given to a CPU-only build and tensors on mixed devices.
    """
    from ._load import _C

    present = {name: t for name, t in tensors.items() if t is not None}
    devices = {t.device for t in present.values()}
    problems = []
    if len(devices) > 1:
        where = ", ".join(f"{name} on {t.device}" for name, t in present.items())
        problems.append(f"all tensors must be on one device, got {where}")
    for name, t in present.items():
        if t.device.type == "cuda" and not _C.build_info()["with_cuda"]:
            problems.append(
                f"{name} is a CUDA tensor but this tikmix_ext build has no CUDA kernels (built against a CPU torch "
                "or with TIKMIX_CUDA=OFF; see `python -m tikmix_ext.info` and README, GPU build)"
            )
            break
        if t.device.type not in ("cpu", "cuda", "meta"):
            problems.append(f"{name} is on {t.device}; tikmix ops run on cpu and cuda")
    if problems:
        raise ValueError(f"tikmix.{op}: " + "; ".join(problems))

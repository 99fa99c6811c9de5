"""Typed wrappers and fake kernels of the sketch family: sketch, sketch_accumulate_, projection, sketch_kron.

The projection R is defined once, in csrc/include/tikmix/rng.h (the RNG contract). Detailed input checks live
in the real kernels (csrc/binding/sketch_checks.h); fakes only compute output metadata.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from . import _load  # noqa: F401  (registers torch.ops.tikmix)
from ._interop import as_optional_tensor, as_tensor

__all__ = ["sketch", "sketch_accumulate_", "projection"]


def sketch(x: Any, k: int, seed: int, offset: int = 0, scale: Optional[Any] = None) -> Any:
    """Project rows of ``x[N, d]`` to ``[N, k]`` float32: ``(x ⊙ scale) · R[offset:offset+d, :]``.

    ``x`` is float32/bfloat16/float16 (accumulation is float32); ``scale`` an optional float32 ``[d]``
    per-coordinate factor (e.g. an Adam preconditioner). ``offset`` is the global row of ``x``'s first column,
    so segments of one long vector sketched with their offsets sum to the sketch of the whole vector.
    Accepts DLPack arrays and returns the caller's kind.
    """
    xt, back = as_tensor(x, "x")
    return back(torch.ops.tikmix.sketch.default(xt, k, seed, offset, as_optional_tensor(scale, "scale")))


@torch.library.register_fake("tikmix::sketch")
def _sketch_fake(x, k, seed, offset=0, scale=None):
    torch._check(x.dim() == 2, lambda: "tikmix.sketch: x must be 2-D")
    return x.new_empty((x.shape[0], k), dtype=torch.float32)


def sketch_accumulate_(out: Any, x: Any, seed: int, offset: int = 0, scale: Optional[Any] = None) -> None:
    """In place: ``out[N, k] += (x ⊙ scale) · R[offset:offset+d, :]`` with ``k = out.shape[1]`` (float32 ``out``)."""
    out_t, _ = as_tensor(out, "out")
    xt, _ = as_tensor(x, "x")
    torch.ops.tikmix.sketch_accumulate_.default(out_t, xt, seed, offset, as_optional_tensor(scale, "scale"))


@torch.library.register_fake("tikmix::sketch_accumulate_")
def _sketch_accumulate_fake(out, x, seed, offset=0, scale=None):
    return None


def projection(rows: int, k: int, seed: int, offset: int = 0) -> torch.Tensor:
    """Materialise ``R[offset:offset+rows, :k]`` (float32, entries ±1/√k) on the CPU."""
    return torch.ops.tikmix.projection.default(rows, k, seed, offset)


@torch.library.register_fake("tikmix::projection")
def _projection_fake(rows, k, seed, offset=0):
    return torch.empty((rows, k), dtype=torch.float32, device="meta")

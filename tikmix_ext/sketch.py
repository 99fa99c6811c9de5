"""Typed wrappers and autograd of the sketch family: sketch, sketch_accumulate_, projection.

The projection R is defined once, in csrc/include/tikmix/rng.h (the RNG contract): ``R[r, c] = ±1/√k`` with the sign
a pure function of ``(seed, r, c)``. Input checks live in C++ (csrc/binding/sketch_checks.h), called by the CPU,
CUDA and Meta kernels alike (and by projection's fake), so meta tensors, FakeTensor and ``torch.compile`` reject bad
input at trace time with the real kernel's message. The wrappers check the Python types and int64 range of the
integer arguments (the raw ``torch.ops.tikmix`` ops parse them as int64 before any tikmix code runs, so a value
beyond int64 raises torch's RuntimeError there, and ValueError here).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ._interop import as_optional_tensor, as_tensor, check_devices, int_arg
from ._load import _C  # loading it registers torch.ops.tikmix

__all__ = ["sketch", "sketch_accumulate_", "projection", "MAX_ROWS", "MAX_K"]

MAX_ROWS: int = _C.rng_max_rows  #: rows of R addressable by the RNG contract: ``offset + d`` must not exceed this
MAX_K: int = _C.rng_max_k  #: ``k`` must be below this (both from csrc/include/tikmix/rng.h, through the native module)


def sketch(x: Any, k: int, seed: int, offset: int = 0, scale: Optional[Any] = None) -> Any:
    """Project rows of ``x[N, d]`` to ``y[N, k]`` float32: ``y = (x ⊙ scale) · R[offset : offset + d, :]``.

    Args:
        x: ``[N, d]`` float32, bfloat16 or float16 (any strides; a torch tensor or a DLPack array such as numpy).
            Products and sums are float32; NaN or inf in a row of x propagates to that row of y (the op is linear),
            and a sum beyond float32's range is ±inf (IEEE, as in torch.mm).
        k: sketch size, ``1 ≤ k < 2^26``. Column c of R does not depend on k (prefix property), only the
            scale ``1/√k`` does.
        seed: non-negative int selecting R.
        offset: global row of R used for x's first column, ``offset + d ≤ 2^44``. Segments of one long vector
            sketched with their offsets sum to the sketch of the whole vector (see :func:`sketch_accumulate_`).
        scale: optional float32 ``[d]`` per-coordinate factor (e.g. an Adam preconditioner), applied in float32.

    Returns:
        ``[N, k]`` float32, of the caller's kind (numpy in → numpy out).

    Differentiable in ``x`` and ``scale`` (the backward multiplies by Rᵀ, generating R in row chunks).
    """
    op = "sketch"
    k = int_arg(k, "k", op, 1, MAX_K - 1)
    seed = int_arg(seed, "seed", op, 0)
    offset = int_arg(offset, "offset", op, 0, MAX_ROWS)
    xt, back = as_tensor(x, "x")
    st = as_optional_tensor(scale, "scale")
    check_devices(op, x=xt, scale=st)
    return back(torch.ops.tikmix.sketch.default(xt, k, seed, offset, st))


def _transposed_sketch(grad: torch.Tensor, d: int, seed: int, offset: int, rows_per_chunk: int = 1 << 16):
    """``grad[N, k] · R[offset : offset + d, :]ᵀ`` in float32, generating R in chunks of rows (bounded memory)."""
    k = grad.shape[1]
    out = grad.new_empty((grad.shape[0], d), dtype=torch.float32)
    g = grad.to(torch.float32)
    for r0 in range(0, d, rows_per_chunk):
        rows = min(rows_per_chunk, d - r0)
        R = torch.ops.tikmix.projection.default(rows, k, seed, offset + r0).to(g.device)
        torch.mm(g, R.t(), out=out[:, r0 : r0 + rows])
    return out


def _needs_grad(ctx, index: int) -> bool:
    flags = ctx.needs_input_grad
    return index < len(flags) and bool(flags[index])


def _sketch_setup_context(ctx, inputs, output):
    x, _k, seed = inputs[:3]
    offset = inputs[3] if len(inputs) > 3 else 0
    scale = inputs[4] if len(inputs) > 4 else None
    ctx.meta = (x.shape[1], seed, offset, x.dtype)
    saved_x = x if (scale is not None and _needs_grad(ctx, 4)) else None
    ctx.save_for_backward(saved_x, scale)


def _sketch_backward(ctx, grad):
    d, seed, offset, x_dtype = ctx.meta
    saved_x, scale = ctx.saved_tensors
    gx = gscale = None
    if _needs_grad(ctx, 0) or _needs_grad(ctx, 4):
        g_in = _transposed_sketch(grad, d, seed, offset)  # ∂L/∂(x ⊙ scale)
        if _needs_grad(ctx, 0):
            gx = (g_in * scale if scale is not None else g_in).to(x_dtype)
        if _needs_grad(ctx, 4):
            gscale = (g_in * saved_x.to(torch.float32)).sum(0)
    return gx, None, None, None, gscale


torch.library.register_autograd("tikmix::sketch", _sketch_backward, setup_context=_sketch_setup_context)


def sketch_accumulate_(out: Any, x: Any, seed: int, offset: int = 0, scale: Optional[Any] = None) -> None:
    """In place: ``out[N, k] += (x ⊙ scale) · R[offset : offset + d, :]`` with ``k = out.shape[1]``.

    ``out`` is a contiguous float32 ``[N, k]`` tensor or array (numpy arrays are updated in place); ``x``, ``seed``,
    ``offset`` and ``scale`` are as in :func:`sketch`. Streaming a long vector segment by segment, each with its
    global ``offset``, accumulates the sketch of the whole vector without a temporary of out's size (equal to
    :func:`sketch` of the concatenation up to float32 rounding; bit-exact for small-integer data).

    Raises:
        ValueError: ``x`` or ``scale`` shares memory with ``out`` (e.g. ``x = out[:, :d]``): out is written while they
            are read, so pass a copy. ``out`` is a read-only numpy array (it could not be updated in place).
        TypeError: ``out`` is neither a torch.Tensor, a numpy array nor a cupy array (e.g. an immutable jax array).
        RuntimeError: ``out`` is a leaf tensor that requires grad while grad mode is on, like torch's in-place ops.
        NotImplementedError: ``out``, ``x`` or ``scale`` requires grad (the op is not differentiable; use
            :func:`sketch`, which is, and add).

    Like torch's in-place ops, it bumps ``out``'s version counter, so autograd notices if ``out`` was saved for a
    backward pass.
    """
    op = "sketch_accumulate_"
    seed = int_arg(seed, "seed", op, 0)
    offset = int_arg(offset, "offset", op, 0, MAX_ROWS)
    out_t, _ = as_tensor(out, "out", written=True)
    xt, _ = as_tensor(x, "x")
    st = as_optional_tensor(scale, "scale")
    check_devices(op, out=out_t, x=xt, scale=st)
    torch.ops.tikmix.sketch_accumulate_.default(out_t, xt, seed, offset, st)


def projection(rows: int, k: int, seed: int, offset: int = 0) -> torch.Tensor:
    """Materialise ``R[offset : offset + rows, :k]`` as a float32 CPU tensor (entries ``±1/√k``).

    Meant for tests and small dense projections: it needs ``rows·k·4`` bytes, which :func:`sketch` never does.
    """
    op = "projection"
    rows = int_arg(rows, "rows", op, 0, MAX_ROWS)
    k = int_arg(k, "k", op, 1, MAX_K - 1)
    seed = int_arg(seed, "seed", op, 0)
    offset = int_arg(offset, "offset", op, 0, MAX_ROWS)
    return torch.ops.tikmix.projection.default(rows, k, seed, offset)


@torch.library.register_fake("tikmix::projection")
def _projection_fake(rows, k, seed, offset=0):
    # No tensor inputs, so no C++ Meta kernel: the fake calls the kernel's own checks, and its output lives on the CPU
    # like the real kernel's (under fake mode this is a FakeTensor).
    _C.check_projection_inputs(rows, k, seed, offset)
    return torch.empty((rows, k), dtype=torch.float32, device="cpu")


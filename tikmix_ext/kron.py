"""Typed wrapper and autograd of ``sketch_kron``: per-sample sketches of a linear layer's weight gradient.

Contract (csrc/include/tikmix/reduce_kernels.h): ``y[n, p·k_in + q] = (R_outᵀ · W_n · R_in)[p, q] / √(k_in·k_out)``
with ``W_n = Σ_t g[n, t] · a[n, t]ᵀ`` never materialised; ``R_in``/``R_out`` are the RNG contract's sign matrices for
the seeds ``kron_seed(seed, layer, 0/1)`` (rng.h). Input checks live in C++ (csrc/binding/reduce_checks.h),
called by the CPU, CUDA and Meta kernels alike, so torch.compile rejects bad input at trace time.

No gradient formula: the op consumes activations and output gradients captured by hooks during a backward pass,
to produce influence features, and nothing differentiates through it. (It is bilinear in ``a`` and ``g``, so one
could be added.) The registered backward raises a clear NotImplementedError instead of torch's deprecated
fallback, which would silently treat the gradient as zero; the forward works on inputs that require grad.
"""
from __future__ import annotations

from typing import Any

import torch

from . import _load  # noqa: F401  (registers torch.ops.tikmix)
from ._interop import as_tensor, check_devices, int_arg

__all__ = ["sketch_kron"]


def sketch_kron(a: Any, g: Any, k_in: int, k_out: int, seed: int, layer: int) -> Any:
    """Sketch per-sample weight gradients ``Σ_t g_t a_tᵀ`` of a linear layer to ``[N, k_out·k_in]`` float32.

    ``a``: ``[N, T, in_features]`` layer inputs, ``g``: ``[N, T, out_features]`` gradients w.r.t. the layer outputs
    (same dtype: float32, bfloat16 or float16; products in float32). Output index ``p·k_in + q`` holds
    ``(R_outᵀ W_n R_in)[p, q]``, i.e. ``((R_out ⊗ R_in)ᵀ vec_row(W_n))`` with entries ``±1/√k``. ``layer`` selects
    independent projections per layer. A Kronecker sketch needs a somewhat larger ``k_in·k_out`` than a dense
    sketch for the same distortion. Accepts DLPack arrays and returns the caller's kind.
    """
    at, back = as_tensor(a, "a")
    gt, _ = as_tensor(g, "g")
    check_devices("sketch_kron", a=at, g=gt)
    k_in, k_out = int_arg(k_in, "k_in", "sketch_kron"), int_arg(k_out, "k_out", "sketch_kron")
    seed, layer = int_arg(seed, "seed", "sketch_kron"), int_arg(layer, "layer", "sketch_kron")
    return back(torch.ops.tikmix.sketch_kron.default(at, gt, k_in, k_out, seed, layer))


def _sketch_kron_backward(ctx, grad):
    raise NotImplementedError(
        "tikmix.sketch_kron has no backward: it sketches per-sample gradients captured by hooks and is not meant to "
        "be differentiated through; detach a and g (or compute the sketch under torch.no_grad())"
    )


torch.library.register_autograd("tikmix::sketch_kron", _sketch_kron_backward)

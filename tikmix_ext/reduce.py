"""Typed wrappers and autograd of the reduce family: segment_sum, segment_mean, group_influence,
mixture_scores.

Numerical contracts (summation order, draw counts, draw hash) are stated once in
csrc/include/tikmix/reduce_kernels.h. Input checks live in C++ (csrc/binding/reduce_checks.h), called by the CPU,
CUDA and Meta kernels alike: meta tensors, FakeTensor and ``torch.compile`` reject bad input at trace time with the
real kernel's message. Checks that need the data (ids in range, finite values, candidate weights) run only in the
real kernels.

Autograd: ``segment_sum``/``segment_mean`` and ``group_influence`` are linear in their float inputs and have
backward formulas (plain torch ops, so double backward works too). ``mixture_scores`` has none: its outputs are
labels for a surrogate model, and its gradient would need the resampling multiplicities of every candidate; its
registered backward raises NotImplementedError (the forward works on inputs that require grad).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from . import _load  # noqa: F401  (registers torch.ops.tikmix)
from ._interop import as_optional_tensor, as_tensor, check_devices, int_arg

__all__ = ["segment_sum", "segment_mean", "group_influence", "mixture_scores"]


def _segment_op(op: str, x: Any, ids: Any, num_groups: int) -> Any:
    """Checks and converts the arguments shared by segment_sum and segment_mean, then runs ``tikmix::<op>``."""
    xt, back = as_tensor(x, "x")
    it, _ = as_tensor(ids, "ids")
    check_devices(op, x=xt, ids=it)
    num_groups = int_arg(num_groups, "num_groups", op)
    return back(getattr(torch.ops.tikmix, op).default(xt, it, num_groups))


# ---- segment_sum ------------------------------------------------------------------------------------------------
def segment_sum(x: Any, ids: Any, num_groups: int) -> Any:
    """Deterministic row sums per group: ``out[j] = Σ_{z: ids[z]=j} x[z]`` → ``[num_groups, k]`` in x's dtype.

    ``x``: ``[N, k]`` float32/float64; ``ids``: ``[N]`` int64/int32 in ``[0, num_groups)``; ``num_groups`` in
    ``[1, 2^31)``. Same bits every run, for any thread count, and on CUDA (fixed 4096-row chunk order,
    reduce_kernels.h). Empty groups give zeros. Sums follow IEEE arithmetic in x's dtype, like ``torch.sum``: NaN/inf
    in x propagate, and a sum beyond the dtype's range is ±inf.
    """
    return _segment_op("segment_sum", x, ids, num_groups)


def _segment_sum_backward(ctx, grad):
    (ids,) = ctx.saved_tensors
    grad_x = grad.index_select(0, ids.long()) if ctx.needs_input_grad[0] else None
    return grad_x, None, None


def _segment_sum_setup_context(ctx, inputs, output):
    _, ids, _ = inputs
    ctx.save_for_backward(ids)


torch.library.register_autograd(
    "tikmix::segment_sum", _segment_sum_backward, setup_context=_segment_sum_setup_context
)


# ---- segment_mean -----------------------------------------------------------------------------------------------
def segment_mean(x: Any, ids: Any, num_groups: int) -> Any:
    """Per-group row means ``segment_sum / count`` in x's dtype → ``[num_groups, k]``; an empty group gives zeros.

    Same inputs and determinism as :func:`segment_sum`. The mean divides the group sum, so a sum beyond the dtype's
    range gives ±inf even where the mean itself would fit (as ``torch.mean`` does).
    """
    return _segment_op("segment_mean", x, ids, num_groups)


def _segment_mean_backward(ctx, grad):
    (ids,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None
    idx = ids.long()
    counts = torch.zeros(ctx.num_groups, dtype=torch.int64, device=idx.device).index_add_(0, idx, torch.ones_like(idx))
    scaled = grad / counts.clamp_min(1).to(grad.dtype).unsqueeze(1)
    return scaled.index_select(0, idx), None, None


def _segment_mean_setup_context(ctx, inputs, output):
    _, ids, num_groups = inputs
    ctx.num_groups = num_groups
    ctx.save_for_backward(ids)


torch.library.register_autograd(
    "tikmix::segment_mean", _segment_mean_backward, setup_context=_segment_mean_setup_context
)


# ---- group_influence --------------------------------------------------------------------------------------------
def group_influence(
    train: Any, ids: Any, num_groups: int, target: Any, precond: Optional[Any] = None
) -> Tuple[Any, Any]:
    """Domain-wise influence: ``per_sample[z, i] = target_i · (P · train_z)`` and ``S[i, j] = Σ_{ids[z]=j} per_sample[z, i]``.

    ``train``: ``[N, k]``, ``target``: ``[n, k]``, ``precond``: optional ``[k, k]`` (P = I when None), all float32 or
    all float64; ``ids``: ``[N]`` int64/int32 in ``[0, num_groups)``. Returns ``(S [n, num_groups],
    per_sample [N, n])`` in that dtype; S uses the deterministic segment sum. ``num_groups`` in ``[1, 2^31)``.

    Raises ValueError (naming the argument and the first bad entry) for NaN/±inf in train, target or precond, and
    when a finite computation leaves the dtype's range: a per-sample product or a domain sum of S that overflows to
    ±inf (e.g. float32 rows of 1e38 summed over a domain) raises instead of returning inf; rescale the inputs, or
    use float64.
    """
    tt, back = as_tensor(train, "train")
    it, _ = as_tensor(ids, "ids")
    gt, _ = as_tensor(target, "target")
    pt = as_optional_tensor(precond, "precond")
    check_devices("group_influence", train=tt, ids=it, target=gt, precond=pt)
    num_groups = int_arg(num_groups, "num_groups", "group_influence")
    s, per_sample = torch.ops.tikmix.group_influence.default(tt, it, num_groups, gt, pt)
    return back(s), back(per_sample)


def _group_influence_backward(ctx, grad_s, grad_per_sample):
    train, ids, target, precond = ctx.saved_tensors
    # Total gradient on per_sample: its own plus S's, routed back to the rows of each group.
    g = grad_per_sample + grad_s.t().index_select(0, ids.long())
    q = target if precond is None else target @ precond  # per_sample = train · qᵀ
    grad_train = g @ q if ctx.needs_input_grad[0] else None
    grad_q = g.t() @ train if (ctx.needs_input_grad[3] or ctx.needs_input_grad[4]) else None
    grad_target = grad_precond = None
    if ctx.needs_input_grad[3]:
        grad_target = grad_q if precond is None else grad_q @ precond.t()
    if precond is not None and ctx.needs_input_grad[4]:
        grad_precond = target.t() @ grad_q
    return grad_train, None, None, grad_target, grad_precond


def _group_influence_setup_context(ctx, inputs, output):
    train, ids, _, target, precond = inputs
    ctx.save_for_backward(train, ids, target, precond)


torch.library.register_autograd(
    "tikmix::group_influence", _group_influence_backward, setup_context=_group_influence_setup_context
)


# ---- mixture_scores ---------------------------------------------------------------------------------------------
def mixture_scores(per_sample: Any, ids: Any, candidates: Any, draws: int, seed: int) -> Any:
    """Score candidate mixtures by resampling per-sample rows (TiKMiX-M labels) → ``[C, n]`` in per_sample's dtype.

    ``per_sample``: ``[N, n]`` float32/float64 (e.g. group_influence's second output); ``ids``: ``[N]`` domain of each
    row; ``candidates``: ``[C, G]`` non-negative weights (rows normalised). Candidate ``c`` draws ``draws`` rows:
    largest-remainder counts per domain, rows picked by the documented hash of ``(seed, c, domain, t)``; the score
    is their float64-accumulated mean. Bit-identical on CPU and CUDA (contract: reduce_kernels.h).
    ``draws`` in ``[1, 2^31)``, ``G < 2^20``, ``seed ≥ 0``. Not differentiable: a backward through the scores raises
    NotImplementedError.
    """
    pt, back = as_tensor(per_sample, "per_sample")
    it, _ = as_tensor(ids, "ids")
    ct, _ = as_tensor(candidates, "candidates")
    check_devices("mixture_scores", per_sample=pt, ids=it, candidates=ct)
    draws, seed = int_arg(draws, "draws", "mixture_scores"), int_arg(seed, "seed", "mixture_scores")
    return back(torch.ops.tikmix.mixture_scores.default(pt, it, ct, draws, seed))


def _mixture_scores_backward(ctx, grad):
    raise NotImplementedError(
        "tikmix.mixture_scores has no backward: its scores are labels for a surrogate model, and a gradient would need "
        "the resampling multiplicities of every candidate; detach per_sample and candidates (or score under "
        "torch.no_grad())"
    )


# Registered so that a backward through the scores raises instead of silently giving no gradient.
torch.library.register_autograd("tikmix::mixture_scores", _mixture_scores_backward)

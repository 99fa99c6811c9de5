"""Preconditioners H⁻¹ of the influence ``S_ij = ∇f_iᵀ H⁻¹ G_j`` (sign convention: :mod:`tikmix.influence.result`).

* ``identity``: H = I.
* ``adam``: the diagonal ``D = 1 / (√v̂ + ε)`` of a torch.optim.Adam/AdamW state, with the bias-corrected second moment
  ``v̂ = exp_avg_sq / (1 − β₂^step)`` (``max_exp_avg_sq`` when ``amsgrad``) — exactly the denominator of Adam's own
  update, so ``S`` is the first-order loss change of one Adam-like step ``−lr·D·G``. It acts per coordinate *before*
  projecting: both gradients are multiplied by ``√D`` (``sketch``'s ``scale``), so inner products of sketches estimate
  ``∇fᵀ D G``. A Kronecker per-sample sketch cannot apply a general diagonal (``diag(D)`` does not factor as
  ``R_out ⊗ R_in`` acting on ``Σ_t g_t a_tᵀ``), so ``adam`` defaults to ``factorize=False`` (every parameter in the
  dense block); ``mode="group"`` with ``factorize=True`` is allowed (the whole gradient is scaled, then projected).
* ``gauss_newton``: ``(ΦᵀΦ/N + λI)⁻¹`` in sketch space (TRAK/LoGra style), Φ the training rows of this computation:
  per-sample sketches in per-sample mode; in group mode each micro-batch's summed-gradient sketch divided by
  √(batch size) — an unbiased estimate of the per-sample second moment when per-sample gradients have mean ≈ 0, and
  one that overweights the mean-gradient direction by the batch size otherwise. ``λ = damping · tr(ΦᵀΦ/N) / K``
  (``damping`` times the mean eigenvalue; ``damping`` itself if ΦᵀΦ is zero). Applied to the target rows, ``P·t_i``
  (equivalent to passing ``P`` as ``group_influence``'s ``precond``, as P is symmetric), through the Woodbury identity
  in N×N when N < K, otherwise through a K×K Cholesky solve; always in float64.

  Across ranks: group mode's Φ has one row per micro-batch (on sharded models, per lockstep step: the ranks'
  micro-batches of that step together), so S depends on how samples are grouped into micro-batches — unlike
  ``identity`` and ``adam``, whose S is a plain sum. Ranks that hold the same micro-batches as one process agree with
  it to float32 summation order (the Gram matrix ΦᵀΦ and its row count are all-reduced in float64; tested to 1e-5
  relative); a different grouping of the same samples (e.g. ``samples[rank::world]`` batched per rank instead of
  contiguous batches) changes Φ, and S by up to ~1e-3 relative on small runs — a property of the estimator, not
  rounding. ``mode="per_sample"`` builds Φ from samples and does not depend on the grouping.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .sharding import is_sharded, local_tensor
from .sketch_space import Slot

__all__ = ["PRECONDITIONERS", "adam_scales", "gauss_newton_apply", "gauss_newton_damping"]

PRECONDITIONERS = ("identity", "adam", "gauss_newton")


def adam_scales(optimizer: torch.optim.Optimizer, slots: Sequence[Slot], exact: bool) -> Dict[int, torch.Tensor]:
    """``√D`` per slot (flattened; float32, or float64 in the exact layout) from an Adam/AdamW ``optimizer``."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise TypeError(f"preconditioner='adam' needs a torch.optim.Adam or AdamW optimizer, got "
                        f"{type(optimizer).__name__}")
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    missing_group: List[str] = []
    missing_state: List[str] = []
    scales: Dict[int, torch.Tensor] = {}
    for slot in slots:
        group = group_of.get(id(slot.param))
        if group is None:
            missing_group.append(slot.name)
            continue
        state = optimizer.state.get(slot.param, {})
        if "exp_avg_sq" not in state or "step" not in state:
            missing_state.append(slot.name)
            continue
        v = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
        step = float(state["step"])
        beta2 = float(group["betas"][1])
        eps = float(group["eps"])
        if step <= 0:
            missing_state.append(slot.name)
            continue
        bias_correction2 = 1.0 - beta2 ** step
        v = _local_state(slot, v)
        d = 1.0 / ((v.detach().to(torch.float64) / bias_correction2).sqrt() + eps)
        scales[slot.index] = d.sqrt().reshape(-1).to(torch.float64 if exact else torch.float32).to(v.device)
    if missing_group:
        raise ValueError("preconditioner='adam': the optimizer does not hold these selected parameters: "
                         + ", ".join(missing_group[:8]) + (" ..." if len(missing_group) > 8 else ""))
    if missing_state:
        raise ValueError("preconditioner='adam': no second-moment state (exp_avg_sq/step) for "
                         + ", ".join(missing_state[:8]) + (" ..." if len(missing_state) > 8 else "")
                         + "; take at least one optimizer step first")
    return scales


def _local_state(slot: Slot, v: torch.Tensor) -> torch.Tensor:
    """The part of an optimizer state that matches this rank's part of the parameter: a sharded parameter's state
    (FSDP2 keeps Adam's moments as DTensors with the parameter's placement) is read locally, never gathered."""
    p = slot.param
    if is_sharded(p) != is_sharded(v) or (is_sharded(p) and (tuple(v.placements) != tuple(p.placements)
                                                              or v.device_mesh != p.device_mesh)):
        where = lambda t: f"{tuple(t.placements)}" if is_sharded(t) else "a plain tensor"  # noqa: E731
        raise ValueError(f"preconditioner='adam': the optimizer state of {slot.name!r} is {where(v)}, but the "
                         f"parameter is {where(p)}; create the optimizer after sharding the model")
    v = local_tensor(v)
    if v.shape != local_tensor(p).shape:
        raise ValueError(f"preconditioner='adam': exp_avg_sq of {slot.name!r} has shape {tuple(v.shape)}, the "
                         f"parameter {tuple(local_tensor(p).shape)}")
    return v


def gauss_newton_damping(gram_trace: float, n_rows: int, dim: int, damping: float) -> float:
    """``λ = damping · tr(ΦᵀΦ/N) / K``, or ``damping`` when the trace is zero."""
    if n_rows <= 0:
        raise ValueError("preconditioner='gauss_newton' needs at least one training row")
    mean_eig = gram_trace / n_rows / dim
    return damping * mean_eig if mean_eig > 0 else damping


def gauss_newton_apply(targets: torch.Tensor, *, rows: Optional[torch.Tensor] = None,
                       gram: Optional[torch.Tensor] = None, n_rows: Optional[int] = None,
                       damping: float) -> Tuple[torch.Tensor, float]:
    """``(ΦᵀΦ/N + λI)⁻¹ · targetsᵀ`` as ``[n, K]`` float64 rows, and λ.

    Give either ``rows`` (Φ, ``[N, K]``) or ``gram = ΦᵀΦ`` (``[K, K]``) with ``n_rows = N`` (the distributed path,
    where the Gram matrix is all-reduced).
    """
    t = targets.to(torch.float64)
    k = t.shape[1]
    if rows is not None:
        phi = rows.to(torch.float64)
        n = phi.shape[0]
        lam = gauss_newton_damping(float((phi * phi).sum()), n, k, damping)
        if n < k:  # Woodbury: (λI + ΦᵀΦ/N)⁻¹ t = (t − Φᵀ (NλI + ΦΦᵀ)⁻¹ Φ t) / λ
            small = phi @ phi.t()
            small.diagonal().add_(n * lam)
            inner = torch.linalg.solve(small, phi @ t.t())  # [N, n]
            return (t - (phi.t() @ inner).t()) / lam, lam
        gram, n_rows = phi.t() @ phi, n
    if gram is None or n_rows is None:
        raise ValueError("gauss_newton_apply needs rows, or gram and n_rows")
    n = int(n_rows)
    lam = gauss_newton_damping(float(gram.diagonal().sum()), n, k, damping)
    a = gram.to(torch.float64) / n
    a.diagonal().add_(lam)
    chol = torch.linalg.cholesky(a)
    return torch.cholesky_solve(t.t(), chol).t(), lam

"""Diagnostics of influence results: bootstrap confidence intervals, rank stability, Kendall τ between results.

The paper's "influence ranking invariance" check asks whether the order of domains by influence on a target stays
the same across checkpoints, seeds or sketch sizes. :func:`kendall_tau` measures it between two results (row-wise
``scipy.stats.kendalltau``, τ-b), :func:`rank_stability` across a sequence of results. Within one per-sample result,
``InfluenceResult.rank_stability`` is the mean τ-b between bootstrap replicates and the point estimate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["RankAgreement", "kendall_tau", "rank_stability", "bootstrap", "kendall_tau_b_rows"]


@dataclass(frozen=True)
class RankAgreement:
    """Kendall τ-b between the domain orderings of two results, per target.

    Attributes:
        targets: target names (rows compared).
        tau: τ-b per target (NaN when a row is constant).
        pvalue: two-sided p-value per target (scipy.stats.kendalltau).
        mean_tau: mean of the finite τ values (NaN if none).
    """

    targets: Tuple[str, ...]
    tau: Tuple[float, ...]
    pvalue: Tuple[float, ...]
    mean_tau: float

    def to_dict(self) -> Dict[str, Any]:
        return {"targets": list(self.targets), "tau": list(self.tau), "pvalue": list(self.pvalue),
                "mean_tau": self.mean_tau}


def _as_matrix(x: Any, name: str) -> Tuple[np.ndarray, Optional[Tuple[str, ...]], Optional[Tuple[str, ...]]]:
    from .result import InfluenceResult

    if isinstance(x, InfluenceResult):
        return x.S.detach().cpu().numpy(), tuple(x.domains), tuple(x.targets)
    arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be an InfluenceResult or a [targets, domains] array, got shape {arr.shape}")
    return arr, None, None


def kendall_tau(a: Any, b: Any) -> RankAgreement:
    """Row-wise Kendall τ-b between two influence matrices (the domain order per target).

    ``a``/``b``: :class:`InfluenceResult` or ``[targets, domains]`` arrays. For two results, domains and targets are
    matched by name (the sets must agree; order may differ).
    """
    from scipy.stats import kendalltau

    sa, da, ta = _as_matrix(a, "a")
    sb, db, tb = _as_matrix(b, "b")
    if da is not None and db is not None:
        if set(da) != set(db) or set(ta) != set(tb):
            raise ValueError(f"results cover different domains/targets: {da}/{ta} vs {db}/{tb}")
        sb = sb[[tb.index(t) for t in ta]][:, [db.index(d) for d in da]]
    if sa.shape != sb.shape:
        raise ValueError(f"influence matrices must have the same shape, got {sa.shape} and {sb.shape}")
    if sa.shape[1] < 2:
        raise ValueError("Kendall τ needs at least two domains")
    names = ta if ta is not None else tb if tb is not None else tuple(str(i) for i in range(sa.shape[0]))
    taus, ps = [], []
    for ra, rb in zip(sa, sb):
        res = kendalltau(ra, rb)
        taus.append(float(res.statistic))
        ps.append(float(res.pvalue))
    finite = [t for t in taus if np.isfinite(t)]
    return RankAgreement(tuple(names), tuple(taus), tuple(ps), float(np.mean(finite)) if finite else float("nan"))


def rank_stability(results: Sequence[Any]) -> np.ndarray:
    """Matrix ``M[a, b]`` = mean over targets of Kendall τ-b between results ``a`` and ``b`` (1 on the diagonal).

    Use it across checkpoints/stages (ranking invariance), seeds or sketch sizes.
    """
    results = list(results)
    if len(results) < 2:
        raise ValueError("rank_stability needs at least two results")
    m = np.eye(len(results))
    for i in range(len(results)):
        for j in range(i + 1, len(results)):
            m[i, j] = m[j, i] = kendall_tau(results[i], results[j]).mean_tau
    return m


def kendall_tau_b_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """τ-b between matching rows of ``x[..., G]`` and ``y[..., G]`` (vectorised; NaN for constant rows).

    ``τ_b = Σ_{a<b} sign(x_a−x_b)·sign(y_a−y_b) / √(Σ|sign(x_a−x_b)| · Σ|sign(y_a−y_b)|)``; equals scipy's τ-b.
    """
    sx = torch.sign(x.unsqueeze(-1) - x.unsqueeze(-2))
    sy = torch.sign(y.unsqueeze(-1) - y.unsqueeze(-2))
    num = (sx * sy).sum((-1, -2))
    den = torch.sqrt(sx.abs().sum((-1, -2)) * sy.abs().sum((-1, -2)))
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def bootstrap(
    unit_scores: torch.Tensor,
    unit_domains: torch.Tensor,
    unit_sizes: torch.Tensor,
    num_domains: int,
    point: torch.Tensor,
    *,
    reduction: str,
    n_bootstrap: int,
    confidence: float,
    seed: int,
) -> Dict[str, torch.Tensor]:
    """Percentile bootstrap of ``S`` by resampling units (samples or micro-batches) within each domain.

    ``unit_scores[u, i]``: unit ``u``'s summed contribution to ``S[i, domain(u)]``; ``unit_sizes[u]``: its sample
    count. Replicate ``S*[i, j] = Σ scores*`` (sum) or ``Σ scores* / Σ sizes*`` (mean). Returns ``low``/``high``
    (``[n, G]``, NaN where a domain has fewer than 2 units) and ``rank_stability`` (``[n]``: mean τ-b between each
    replicate's row and the point row). Deterministic for ``seed``.
    """
    n_targets = unit_scores.shape[1]
    gen = torch.Generator().manual_seed(int(seed))
    scores = unit_scores.detach().to("cpu", torch.float64)
    doms = unit_domains.detach().cpu()
    sizes = unit_sizes.detach().to("cpu", torch.float64)
    reps = torch.empty(n_bootstrap, n_targets, num_domains, dtype=torch.float64)
    degenerate = torch.zeros(num_domains, dtype=torch.bool)
    for j in range(num_domains):
        rows = (doms == j).nonzero().flatten()
        m = rows.numel()
        if m < 2:
            degenerate[j] = True
            reps[:, :, j] = point[:, j].cpu()
            continue
        xs, ns = scores[rows], sizes[rows]
        step = max(1, (1 << 22) // m)
        for s in range(0, n_bootstrap, step):
            e = min(n_bootstrap, s + step)
            draw = torch.randint(0, m, (e - s, m), generator=gen)
            counts = torch.zeros(e - s, m, dtype=torch.float64).scatter_add_(1, draw, torch.ones(e - s, m,
                                                                                                 dtype=torch.float64))
            tot = counts @ xs  # [b, n]
            if reduction == "mean":
                tot = tot / (counts @ ns).unsqueeze(1)
            reps[s:e, :, j] = tot
    alpha = (1.0 - confidence) / 2.0
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)
    low, high = torch.quantile(reps, q, dim=0)
    low[:, degenerate] = float("nan")
    high[:, degenerate] = float("nan")
    ref = point.cpu().to(torch.float64).unsqueeze(0)
    step = max(1, (1 << 22) // max(1, n_targets * num_domains * num_domains))
    stab = torch.cat([kendall_tau_b_rows(reps[s : s + step], ref.expand_as(reps[s : s + step]))
                      for s in range(0, n_bootstrap, step)])
    return {"low": low, "high": high, "rank_stability": torch.nanmean(stab, dim=0)}

"""Group Influence of data domains on target tasks (TiKMiX §3), from randomly projected gradients.

Sign convention (S = −I, larger = more helpful) and the mean/sum reductions: :mod:`tikmix.influence.result`.

    >>> gi = GroupInfluence(model, loss_fn, k=1024)
    >>> res = gi.compute(domains={"web": web_batches, "code": code_batches}, targets={"qa": qa_batches})
    >>> res.S            # float64 [n_targets, n_domains]
"""
from .diagnostics import RankAgreement, kendall_tau, rank_stability
from .engine import GroupInfluence
from .result import InfluenceResult

__all__ = ["GroupInfluence", "InfluenceResult", "RankAgreement", "kendall_tau", "rank_stability"]

"""The result of a Group Influence computation, and THE statement of tikmix's sign convention.

Sign convention (referenced everywhere else). For target task i with loss ``f_i`` (the mean
per-sequence loss over its target sequences) and domain j with sampled sequences ``S_j``, the paper's Group
Influence is ``I_ij = −∇f_i(θ)ᵀ H⁻¹ G_j``. tikmix stores its negation::

    S_ij = −I_ij = ∇f_iᵀ H⁻¹ G_j            larger S_ij  ⇔  domain j is more helpful to target i

so a gradient step ``θ ← θ − lr·H⁻¹G_j`` changes ``f_i`` by ``≈ −lr·S_ij`` (first order). Two conventions for G_j:

* ``reduction="mean"`` (default): ``G_j = (1/|S_j|) Σ_{z∈S_j} ∇ℓ(z)``, the mean per-sequence gradient, so domains
  sampled with different sizes compare on equal footing; matches a step on the domain's mean loss.
* ``reduction="sum"``: ``G_j = Σ_{z∈S_j} ∇ℓ(z)``; matches a step on the summed loss, and grows with |S_j| (compare
  domains on equal token budgets then).

``H⁻¹`` is the preconditioner (:mod:`tikmix.influence.preconditioners`). In sketch mode every gradient is replaced
by its random projection (:mod:`tikmix.influence.sketch_space`), so S is an unbiased JL estimate of the above.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

__all__ = ["InfluenceResult"]


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:+.3e}"


@dataclass
class InfluenceResult:
    """Group Influence ``S`` of domains on targets (sign convention: this module's docstring).

    Attributes:
        S: ``torch.float64 [n_targets, n_domains]``; rows are targets, columns domains, in the order given.
        domains, targets: names in the order of S's columns and rows.
        reduction: ``"mean"`` or ``"sum"`` (see the module docstring).
        mode: ``"group"`` or ``"per_sample"``.
        preconditioner: ``"identity"``, ``"adam"`` or ``"gauss_newton"``.
        sketch_dim: columns of the sketch space, or None in the exact (unprojected) setting.
        seed: projection seed.
        domain_samples, domain_tokens, domain_batches: ``int64 [n_domains]`` counts over all ranks
            (tokens: -1 when the batches carry no integer tensor and no ``count_tokens`` was given).
        target_samples, target_tokens: ``int64 [n_targets]``.
        target_loss: ``float64 [n_targets]``: the mean per-sequence loss (``loss_fn``) of each target's examples as
            measured, over all ranks (sum and count reduced like the other counts), from the forward the target
            gradients take (no extra forward); in the model's mode during :meth:`GroupInfluence.compute`.
        unit: what bootstrap resamples: ``"sample"`` (per-sample mode) or ``"micro-batch"`` (group mode).
        unit_scores: ``float64 [U, n_targets]``: each unit's summed contribution to S (before the mean's division);
            in per-sample mode these are the per-sample influence scores (TiKMiX-M labels).
        unit_domains: ``int64 [U]`` domain index of each unit; unit_sizes: ``int64 [U]`` samples per unit. Units are
            ordered by domain, then rank, then local order (one process's order when each rank passed a contiguous
            share of every domain's batches, rank 0 the first).
        ci_low, ci_high: percentile bootstrap interval of S at level ``confidence`` (``[n, G]``; NaN for a domain with
            fewer than 2 units), or None when ``n_bootstrap == 0``.
        rank_stability: ``float64 [n_targets]``: mean Kendall τ-b between bootstrap replicates' domain orders and the
            point estimate's (1 = the ranking never changes), or None.
        domain_sketches: ``[n_domains, K]`` float64 sums of the (preconditioner-scaled for adam) training sketches
            per domain.
        target_sketches: ``[n_targets, K]`` mean target sketches (∇f_i projected, before any Gauss-Newton solve).
        unit_sketches: ``[U, K]`` per-unit sketches, when ``keep_sketches=True`` (else None).
        gauss_newton_damping: λ used by ``gauss_newton`` (else None).
        layout: description of the sketch layout; ``parameter_paths``: parameter name → its sketch block and how
            its gradient was captured, e.g. ``"kronecker <- hook rule 'linear'"``, ``"dense <- torch.func"``,
            ``"dense <- autograd"`` (group mode) (:func:`tikmix.influence.hook_rules.parameter_paths`); per-sample
            mode adds ``per_sample_capture``: name → ``"hooks"`` or ``"func"``. timings: seconds per phase.
    """

    S: torch.Tensor
    domains: Tuple[str, ...]
    targets: Tuple[str, ...]
    reduction: str
    mode: str
    preconditioner: str
    sketch_dim: Optional[int]
    seed: int
    domain_samples: torch.Tensor
    domain_tokens: torch.Tensor
    domain_batches: torch.Tensor
    target_samples: torch.Tensor
    target_tokens: torch.Tensor
    unit: str
    unit_scores: torch.Tensor
    unit_domains: torch.Tensor
    unit_sizes: torch.Tensor
    domain_sketches: torch.Tensor
    target_sketches: torch.Tensor
    target_loss: Optional[torch.Tensor] = None
    ci_low: Optional[torch.Tensor] = None
    ci_high: Optional[torch.Tensor] = None
    confidence: float = 0.95
    n_bootstrap: int = 0
    rank_stability: Optional[torch.Tensor] = None
    unit_sketches: Optional[torch.Tensor] = None
    gauss_newton_damping: Optional[float] = None
    layout: Dict[str, Any] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)

    # -- queries --
    def ranking(self, target: Optional[str] = None) -> Any:
        """Domain names by decreasing S for ``target`` (a list), or a dict target → list when ``target`` is None."""
        if target is None:
            return {t: self.ranking(t) for t in self.targets}
        if target not in self.targets:
            raise KeyError(f"unknown target {target!r}; targets are {list(self.targets)}")
        row = self.S[self.targets.index(target)]
        order = sorted(range(len(self.domains)), key=lambda j: (-float(row[j]), j))
        return [self.domains[j] for j in order]

    def score(self, target: str, domain: str) -> float:
        """``S[target, domain]`` as a float."""
        return float(self.S[self.targets.index(target), self.domains.index(domain)])

    # -- reports --
    def summary(self) -> str:
        """A plain-text table: S with its interval per cell, the ranking and its stability per target."""
        head = (f"Group influence S (mode={self.mode}, preconditioner={self.preconditioner}, reduction={self.reduction}, "
                f"{'exact' if self.sketch_dim is None else f'k={self.sketch_dim}'}, seed={self.seed}); "
                "S = grad f_target . H^-1 G_domain, larger = more helpful")
        lines = [head]
        counts = ", ".join(
            f"{d}: {int(n)} samples" + (f"/{int(t)} tokens" if int(t) >= 0 else "")
            for d, n, t in zip(self.domains, self.domain_samples, self.domain_tokens)
        )
        lines.append(f"domains ({len(self.domains)}): {counts}")
        with_ci = self.ci_low is not None
        width = 32 if with_ci else 12
        tw = max(6, *(len(t) for t in self.targets))
        lines.append(" " * tw + "  " + "  ".join(f"{d[:width]:>{width}}" for d in self.domains) + "  ranking")
        for i, t in enumerate(self.targets):
            cells = []
            for j in range(len(self.domains)):
                cell = _fmt(float(self.S[i, j]))
                if with_ci:
                    cell += f" [{_fmt(float(self.ci_low[i, j]))},{_fmt(float(self.ci_high[i, j]))}]"
                cells.append(f"{cell:>{width}}")
            rank = " > ".join(self.ranking(t))
            if self.rank_stability is not None:
                rank += f"  (tau stability {float(self.rank_stability[i]):.2f})"
            lines.append(f"{t:<{tw}}  " + "  ".join(cells) + "  " + rank)
        if with_ci:
            units = "samples" if self.unit == "sample" else "micro-batches"
            lines.append(f"intervals: {100 * self.confidence:.0f}% percentile bootstrap over {units}, "
                         f"{self.n_bootstrap} replicates")
        if self.timings:
            lines.append("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))
        return "\n".join(lines)

    def to_dict(self, include_scores: bool = False) -> Dict[str, Any]:
        """JSON-friendly dict of the result (sketches left out; per-unit scores only with ``include_scores``)."""

        def lst(t: Optional[torch.Tensor]) -> Any:
            if t is None:
                return None
            return [[None if not math.isfinite(v) else v for v in row] for row in t.tolist()] if t.dim() == 2 else [
                None if isinstance(v, float) and not math.isfinite(v) else v for v in t.tolist()]

        out: Dict[str, Any] = {
            "S": lst(self.S),
            "domains": list(self.domains),
            "targets": list(self.targets),
            "reduction": self.reduction,
            "mode": self.mode,
            "preconditioner": self.preconditioner,
            "sketch_dim": self.sketch_dim,
            "seed": self.seed,
            "domain_samples": self.domain_samples.tolist(),
            "domain_tokens": self.domain_tokens.tolist(),
            "domain_batches": self.domain_batches.tolist(),
            "target_samples": self.target_samples.tolist(),
            "target_tokens": self.target_tokens.tolist(),
            "target_loss": lst(self.target_loss),
            "ranking": self.ranking(),
            "unit": self.unit,
            "ci_low": lst(self.ci_low),
            "ci_high": lst(self.ci_high),
            "confidence": self.confidence,
            "n_bootstrap": self.n_bootstrap,
            "rank_stability": lst(self.rank_stability),
            "gauss_newton_damping": self.gauss_newton_damping,
            "layout": self.layout,
            "timings": dict(self.timings),
        }
        if include_scores:
            out["unit_scores"] = lst(self.unit_scores)
            out["unit_domains"] = self.unit_domains.tolist()
            out["unit_sizes"] = self.unit_sizes.tolist()
        json.dumps(out)  # fail here, not in the caller's writer, if something is not JSON-friendly
        return out

    def __repr__(self) -> str:
        return (f"InfluenceResult(targets={list(self.targets)}, domains={list(self.domains)}, mode={self.mode!r}, "
                f"preconditioner={self.preconditioner!r}, reduction={self.reduction!r}, sketch_dim={self.sketch_dim})")

"""Adaptive sampling of influence rows: measure in rounds until the decision's inputs are stable.

At a stage boundary the fixed mode measures Group Influence on a fixed draw (``samples_per_domain`` rows of every
domain, every target row up to ``target_samples``). In adaptive mode the same draw is taken in rounds: each round
measures the next ``round_samples`` rows of every domain and target still running (in the fixed mode's global
order, so a run that reaches every ceiling measures exactly the fixed mode's rows), merges them with the earlier
rounds exactly (sums of sketches, unit sketches concatenated, so ``S``, the per-unit scores and the bootstrap
interval are those of one measurement on the union of the rows), and stops each domain and target on its own:

* a domain is **stable** when, for every target ``i``, the half-width of the bootstrap interval of ``S[i, j]``,
  relative to ``max_j |S[i, j]|`` (the scale the solvers see), is below ``tolerance``, judged once the domain has
  at least :data:`MIN_UNITS_TO_JUDGE` bootstrap units;
* a target is **stable** when its last round moved its row of ``S`` by less than ``tolerance`` of
  ``max_j |S[i, j]|`` (the change ``(t_new - t_old) . G_j`` of the target's mean sketch against the current domain
  gradients);
* either stops at its **ceiling** (its whole fixed-mode draw); neither stops as stable before ``min_samples`` rows.

Every quantity the rule reads is summed or gathered over the ranks, so every rank stops at the same rows, and the
result (and its unit order: by domain, then round, then rank, then local order) is that of one process.
Each row is measured once: a round runs the backward passes of its new rows only.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import _distributed
from .._validation import check_int, did_you_mean
from ..defaults import ADAPTIVE_SAMPLING
from .diagnostics import bootstrap
from .hook_rules import parameter_paths
from .result import InfluenceResult

__all__ = ["Sampling", "check_influence", "measure_in_rounds"]

STABLE, CEILING = "stable", "ceiling"


@dataclass(frozen=True)
class Sampling:
    """Options of adaptive sampling (see the module docs).

    Attributes:
        tolerance: stop a domain or target once its stability value is below this (``>= 0``; 0 never stops early).
        min_samples: the floor: rows a domain or target takes before it may stop as stable (capped at its ceiling).
        round_samples: rows added per round to every domain and target still running (in group mode rounded up
            to a domain's whole micro-batches, its bootstrap units).
    """

    tolerance: float
    min_samples: int
    round_samples: int

    @classmethod
    def from_options(cls, options: Any, name: str = "sampling") -> "Sampling | None":
        """``None`` (fixed mode) stays None; a mapping fills in :data:`tikmix.defaults.ADAPTIVE_SAMPLING`."""
        if options is None:
            return None
        if isinstance(options, Sampling):
            return options
        if not isinstance(options, Mapping):
            raise TypeError(f"{name} must be None (fixed sampling) or a dict with keys "
                            f"{sorted(ADAPTIVE_SAMPLING)}, got {type(options).__name__}")
        for key in options:
            if key not in ADAPTIVE_SAMPLING:
                raise ValueError(f"{name} has an unknown key {key!r}{did_you_mean(str(key), list(ADAPTIVE_SAMPLING))}; "
                                 f"known keys: {sorted(ADAPTIVE_SAMPLING)}")
        opts = {**ADAPTIVE_SAMPLING, **options}
        tol = opts["tolerance"]
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"{name}['tolerance'] must be a finite number >= 0, got {tol!r}")
        return cls(tolerance=float(tol),
                   min_samples=check_int(opts["min_samples"], f"{name}['min_samples']", minimum=1),
                   round_samples=check_int(opts["round_samples"], f"{name}['round_samples']", minimum=1))

    def as_dict(self) -> dict[str, Any]:
        """The options as a JSON-ready dict."""
        return {"tolerance": self.tolerance, "min_samples": self.min_samples, "round_samples": self.round_samples}


def check_influence(influence: Any, name: str = "sampling") -> None:
    """Refuse, naming the option, an influence measurement whose rounds this module cannot merge or judge."""
    from .engine import GroupInfluence

    if not isinstance(influence, GroupInfluence):
        raise TypeError(f"{name} (adaptive sampling) needs a tikmix.GroupInfluence, got {type(influence).__name__}")
    if influence.preconditioner == "gauss_newton":
        raise ValueError(f"{name} (adaptive sampling) cannot be used with preconditioner='gauss_newton': the "
                         "preconditioner is fitted on every measured row, so a target's stability could not be judged "
                         "round by round; use preconditioner 'identity' or 'adam', or sampling=None")
    if influence.n_bootstrap < 1:
        raise ValueError(f"{name} (adaptive sampling) needs n_bootstrap >= 1: a domain stops when its bootstrap "
                         "interval is narrow enough; set n_bootstrap (e.g. 200) or use sampling=None")
    if influence.units_span_ranks:
        raise ValueError(f"{name} (adaptive sampling) is not available in mode='group' on sharded (FSDP2) "
                         "parameters, where a bootstrap unit spans the ranks; use mode='per_sample' or sampling=None")


def _round_size(rows: int, align: int) -> int:
    return -(-rows // align) * align


class _Rounds:
    """This rank's raw sums and unit sketches of every round so far, merged exactly."""

    def __init__(self, influence: Any, domains: Sequence[str], targets: Sequence[str]) -> None:
        self.infl = influence
        self.domains, self.targets = list(domains), list(targets)
        self.projector: Any = None
        self.tgt_sum: torch.Tensor | None = None
        self.tgt_counts: torch.Tensor | None = None
        self.tgt_loss: torch.Tensor | None = None
        self.dom_counts: torch.Tensor | None = None
        self.rows: list[torch.Tensor] = []
        self.unit_dom: list[int] = []
        self.unit_size: list[int] = []
        self.unit_round: list[int] = []
        self.target_nonzero: set = set()
        self.domain_nonzero: set = set()
        self.capture_source: Any = None
        self.timings: dict[str, float] = {}

    def add(self, raw: Mapping[str, Any], index: int) -> None:
        if self.projector is None:
            self.projector = raw["projector"]
            self.tgt_sum = raw["tgt_sum"].clone()
            self.tgt_counts = raw["tgt_counts"].clone()
            self.tgt_loss = raw["tgt_loss"].clone()
            self.dom_counts = raw["dom_counts"].clone()
            self.capture_source = raw["capture_source"]
        else:
            self.tgt_sum += raw["tgt_sum"]
            self.tgt_counts += raw["tgt_counts"]
            self.tgt_loss += raw["tgt_loss"]
            self.dom_counts += raw["dom_counts"]
        self.rows.extend(raw["rows"])
        self.unit_dom.extend(raw["unit_dom"])
        self.unit_size.extend(raw["unit_size"])
        self.unit_round.extend([index] * len(raw["unit_dom"]))
        self.target_nonzero |= set(raw["target_nonzero"])
        self.domain_nonzero |= set(raw["domain_nonzero"])
        for key, seconds in raw["timings"].items():
            self.timings[key] = self.timings.get(key, 0.0) + seconds

    def result(self) -> InfluenceResult:
        """The measurement on the union of every round's rows (what one ``compute`` on them returns)."""
        t0 = time.perf_counter()
        infl = self.infl
        assert self.tgt_sum is not None and self.tgt_counts is not None and self.dom_counts is not None
        assert self.tgt_loss is not None
        result = infl._finish(self.projector, self.domains, self.targets, self.tgt_sum.clone(),
                              self.tgt_counts.clone(), list(self.rows), list(self.unit_dom), list(self.unit_size),
                              self.dom_counts.clone(), self.tgt_loss.clone())
        # _finish orders units by domain, then rank, then local order; the global order of the rounds is by domain,
        # then round, then rank (one process's draw order), so reorder and redo the bootstrap when they differ
        gathered = _distributed.all_gather_objects((list(self.unit_dom), list(self.unit_round)))
        doms = torch.tensor([d for g in gathered for d in g[0]], dtype=torch.int64)
        rounds = torch.tensor([r for g in gathered for r in g[1]], dtype=torch.int64)
        by_domain = torch.sort(doms, stable=True).indices
        key = doms[by_domain] * (int(rounds.max()) + 1 if rounds.numel() else 1) + rounds[by_domain]
        order = torch.sort(key, stable=True).indices
        if not bool(torch.equal(order, torch.arange(order.numel()))):
            result.unit_scores = result.unit_scores[order]
            result.unit_domains = result.unit_domains[order]
            result.unit_sizes = result.unit_sizes[order]
            if infl.n_bootstrap > 0:
                boot = bootstrap(result.unit_scores, result.unit_domains, result.unit_sizes, len(self.domains),
                                 result.S, reduction=infl.reduction, n_bootstrap=infl.n_bootstrap,
                                 confidence=infl.confidence, seed=infl.bootstrap_seed)
                result.ci_low, result.ci_high, result.rank_stability = boot["low"], boot["high"], boot["rank_stability"]
        self.timings["scores"] = self.timings.get("scores", 0.0) + time.perf_counter() - t0
        return result

    def finish(self, result: InfluenceResult) -> InfluenceResult:
        """The checks and descriptions ``compute`` adds, once for the whole measurement."""
        infl = self.infl
        infl._check_contributions(self.target_nonzero, self.domain_nonzero)
        result.timings.update(self.timings)
        slots = infl.layout.slots
        if self.capture_source is not None:
            result.layout["per_sample_capture"] = {s.name: self.capture_source[s.index] for s in slots}
        result.layout["parameter_paths"] = parameter_paths(slots, infl._owners, self.capture_source)
        return result


def _relative(value: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``value / scale`` row-wise, where 0/0 is 0 and x/0 is inf (a row of S that is exactly 0 has no scale)."""
    out = value / scale.unsqueeze(1)
    out[(value == 0) & (scale.unsqueeze(1) == 0)] = 0.0
    return torch.nan_to_num(out, nan=math.inf)


#: A domain's interval is judged only once it rests on this many bootstrap units (micro-batches in group mode,
#: samples in per-sample mode): an interval from two or three units says little about its own width.
MIN_UNITS_TO_JUDGE = 4


def domain_stability(result: InfluenceResult) -> torch.Tensor:
    """``[n_domains]``: max over targets of the interval's half-width over ``max_j |S[i, j]|`` (inf without one, or
    for a domain with fewer than :data:`MIN_UNITS_TO_JUDGE` units)."""
    S = result.S.to(torch.float64)
    if result.ci_low is None or result.ci_high is None:
        return torch.full((S.shape[1],), math.inf, dtype=torch.float64)
    half = (result.ci_high.to(torch.float64) - result.ci_low.to(torch.float64)) / 2
    out = _relative(half.abs(), S.abs().amax(dim=1)).amax(dim=0)
    units = torch.bincount(result.unit_domains.to(torch.int64), minlength=S.shape[1])[: S.shape[1]]
    out[units < MIN_UNITS_TO_JUDGE] = math.inf
    return out


def target_shift(result: InfluenceResult, previous_means: torch.Tensor) -> torch.Tensor:
    """``[n_targets]``: how far the targets' last rows moved their row of ``S``, relative to ``max_j |S[i, j]|``."""
    S = result.S.to(torch.float64)
    dom = result.domain_sketches.to(torch.float64)
    if result.reduction == "mean":
        dom = dom / result.domain_samples.to(torch.float64).unsqueeze(1)
    moved = (result.target_sketches.to(torch.float64) - previous_means.to(torch.float64)) @ dom.t()
    return _relative(moved.abs(), S.abs().amax(dim=1)).amax(dim=1)


def measure_in_rounds(
    influence: Any,
    sampling: Sampling,
    *,
    domain_rows: Mapping[str, np.ndarray],
    target_rows: Mapping[str, np.ndarray],
    domain_align: Mapping[str, int],
    target_align: int,
    local_batches: Callable[[str, str, np.ndarray], list[Any]],
) -> tuple[InfluenceResult, dict[str, Any]]:
    """Measure Group Influence in rounds until every domain and target is stable or at its ceiling.

    Args:
        influence: the :class:`tikmix.GroupInfluence` (checked by :func:`check_influence`).
        sampling: the round options.
        domain_rows: domain name -> the boundary's global draw of that domain's rows, in order (the ceiling).
        target_rows: target name -> the target's rows to use at most, in order (the ceiling).
        domain_align: domain name -> a domain round's row count is rounded up to a multiple of this (group mode:
            its micro-batch size, so that a round takes whole bootstrap units; 1 otherwise).
        target_align: the same for the targets.
        local_batches: ``(kind, name, rows) -> batches``: this rank's batches of the global ``rows`` of
            ``kind`` (``"domains"`` or ``"targets"``) ``name`` (its contiguous share, rank 0 the first).

    Returns:
        The merged :class:`~tikmix.influence.result.InfluenceResult` and the sampling record: ``rounds``, the
        options, and per domain and target ``rows``, ``ceiling``, ``rounds``, ``stop`` (``"stable"`` or
        ``"ceiling"``) and ``stability`` (its last value; None before it could be judged); per target also
        ``loss_by_rows``: ``[rows, mean loss]`` after each of its rounds (the mean dev loss on its first ``rows``
        rows, so that two boundaries that stopped a target at different rows compare it on their common rows).
    """
    domains, targets = list(domain_rows), list(target_rows)
    sides = {"domains": (domains, domain_rows, {n: _round_size(sampling.round_samples, domain_align[n])
                                                for n in domains}),
             "targets": (targets, target_rows, {n: _round_size(sampling.round_samples, target_align)
                                                for n in targets})}
    state = {kind: {n: {"rows": 0, "ceiling": len(rows[n]), "rounds": 0, "stop": None, "stability": None}
                    for n in names} for kind, (names, rows, _) in sides.items()}
    for s in state["targets"].values():
        s["loss_by_rows"] = []
    rounds = _Rounds(influence, domains, targets)
    previous_means: torch.Tensor | None = None
    result: InfluenceResult | None = None
    index = 0
    while any(s["stop"] is None for side in state.values() for s in side.values()):
        batches: dict[str, dict[str, list[Any]]] = {}
        for kind, (names, rows, step) in sides.items():
            batches[kind] = {}
            for n in names:
                s = state[kind][n]
                if s["stop"] is not None:
                    batches[kind][n] = []
                    continue
                new = rows[n][s["rows"] : s["rows"] + step[n]]
                batches[kind][n] = local_batches(kind, n, new)
                s["rows"] += len(new)
                s["rounds"] += 1
        raw = influence.compute(batches["domains"], batches["targets"], _sketches_only=True)
        rounds.add(raw, index)
        result = rounds.result()
        dom_stab = domain_stability(result)
        tgt_stab = (target_shift(result, previous_means) if previous_means is not None
                    else torch.full((len(targets),), math.inf, dtype=torch.float64))
        previous_means = result.target_sketches.clone()
        losses = None if result.target_loss is None else result.target_loss.to(torch.float64).tolist()
        for n, loss in zip(targets, losses or []):
            s = state["targets"][n]
            if s["stop"] is None:
                s["loss_by_rows"].append([s["rows"], float(loss)])
        for kind, values in (("domains", dom_stab), ("targets", tgt_stab)):
            for n, value in zip(sides[kind][0], values.tolist()):
                s = state[kind][n]
                if s["stop"] is not None:
                    continue
                s["stability"] = value if math.isfinite(value) else None
                floor = min(sampling.min_samples, s["ceiling"])
                if s["rows"] >= s["ceiling"]:
                    s["stop"] = CEILING
                elif s["rows"] >= floor and value < sampling.tolerance:
                    s["stop"] = STABLE
        index += 1
    assert result is not None
    result = rounds.finish(result)
    record = {**sampling.as_dict(), "rounds": index, **state}
    return result, record

"""Noise-aware mixture decisions: what the solver sees of a boundary's Group Influence.

The paper solves for the new mixture from the measured ``S`` as it is. ``S`` is an estimate from a few
dozen samples per domain, and late in training its entries are small next to their sampling error (the
bootstrap intervals and rank stability of :class:`tikmix.influence.InfluenceResult` show it), so the
paper's decision can chase noise. :class:`Decision` holds the documented alternatives; the
:class:`tikmix.Controller` applies it at every boundary.

``objective="paper"`` is the paper's decision exactly: ``S`` unchanged, no added solver constraints.
``objective="robust"`` (the default, chosen by the mixing-quality benchmark: see the docs page "Mixing
quality") turns on, unless given explicitly:

* ``shrink="ci"``: each entry is shrunk toward 0 by its own uncertainty, positive-part James-Stein style,
  ``S_ij * max(0, 1 - (se_ij / S_ij)^2)`` with ``se_ij`` the bootstrap interval's half-width over the
  normal quantile of its level: an entry whose interval is wide compared with its size says little and
  moves the mixture little. Needs ``n_bootstrap > 0`` in the influence options: asked for explicitly
  (``shrink="ci"``) it raises ValueError without intervals; as part of ``"robust"`` it is skipped then, and
  the boundary's record says so (``"shrink": "skipped: ..."``). As part of ``"robust"`` it also applies only
  to intervals resampled over samples (per-sample mode, TiKMiX-M): group mode resamples a few micro-batches,
  whose intervals are too rough to shrink by (on the mixing-quality benchmark, shrinking TiKMiX-D's group-mode
  ``S`` by intervals from 8 micro-batches per domain turned +0.61% into -0.25%). ``shrink="ci"`` given
  explicitly shrinks group-mode estimates too.
* ``ema=0.5``: ``S`` is smoothed across boundaries. Each target's row is divided by its largest absolute
  entry (gradient norms shrink over training, so raw rows are not comparable), averaged with weight ``ema``
  on the previous boundary's smoothed row, and scaled back.
* ``max_shift=0.3``: TiKMiX-D may move the mixture by at most 0.3 in L1 per boundary
  (:func:`tikmix.solve_direct`'s ``max_shift``), unless the solver options set it.
* ``min_r2=0.1``: TiKMiX-M's surrogate must reach this held-out R^2 (:func:`tikmix.solve_regression`'s
  ``min_r2``), else the controller keeps TiKMiX-D's mixture, unless the solver options set it.

Every option can also be set on its own with ``objective="paper"`` (e.g. ``Decision("paper", ema=0.3)``).

Two further options act on the solver's answer and on the stages' outcome; both are off by default (for either
objective) and set explicitly:

* ``safe=tolerance`` (a float >= 0): after the solver chose ``w``, no target may be predicted to get worse than
  ``-tolerance`` (in the units of :func:`predicted_change`: the worst case over the bootstrap box when intervals
  exist, else the central prediction). Otherwise the mixture becomes ``w_prior + t (w - w_prior)`` with the
  largest ``t`` in [0, 1] that satisfies every target (:func:`safe_step`).
* ``trust_region=True`` or a dict ``{grow, shrink, min, max}`` (default 1.5, 0.5, 0.05, 1.0): the solver's L1 step
  limit ``max_shift`` (starting from the solver options' or this decision's ``max_shift``, else 0.3) widens by
  ``grow`` after a stage whose feedback agreed with its prediction (Spearman rho > 0 across targets, see
  :func:`stage_feedback`) and narrows by ``shrink`` after one that did not, clamped to [min, max]
  (:meth:`Decision.trust_region_limit`).

Formulas (one place for each, referenced by the controller, the report and the docs):

* :func:`predicted_change`: the first-order predicted change of each target for a move from ``w_prior`` to ``w``,
  in the solver's units (positive = predicted better);
* :func:`safe_step`: the largest safe step along the segment;
* :func:`stage_feedback`: what a stage realised against what was predicted for it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

import numpy as np

from ._validation import did_you_mean

__all__ = ["Decision", "OBJECTIVES", "ROBUST_DEFAULTS", "TRUST_REGION_DEFAULTS", "predicted_change", "safe_step",
           "stage_feedback", "feedback_summary"]

OBJECTIVES = ("paper", "robust")
ROBUST_DEFAULTS: dict[str, Any] = {"shrink": "ci", "ema": 0.5, "max_shift": 0.3, "min_r2": 0.1}
#: The trust region's factors and clamp (``trust_region=True``); a dict given for ``trust_region`` overrides them.
TRUST_REGION_DEFAULTS: dict[str, float] = {"grow": 1.5, "shrink": 0.5, "min": 0.05, "max": 1.0}
#: The step limit the trust region starts from when neither the solver options nor the decision set ``max_shift``.
TRUST_REGION_START = 0.3
#: Options that act on the solver's answer and the stages' outcome: off unless given, for either objective.
_OFF_DEFAULTS: dict[str, Any] = {"safe": None, "trust_region": False}
_SHRINK = (None, "ci")
#: Predictions (solver units: rows divided by their scale) that differ by no more than this across targets are equal.
_FLAT_PREDICTION = 1e-12


class DecisionOptionError(ValueError):
    """A bad :class:`Decision` option. ``option`` locates it (``("safe",)``, ``("trust_region", "grow")``) and
    ``detail`` is the message without it, so a config loader can name the full key."""

    def __init__(self, option: tuple[str, ...], detail: str) -> None:
        name = option[0] + "".join(f"[{part!r}]" for part in option[1:])
        super().__init__(f"{name} {detail}")
        self.option = option
        self.detail = detail

    def __reduce__(self):  # rebuilt from both arguments, so it survives a worker process (pickling)
        return type(self), (self.option, self.detail)


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _trust_region(value: Any) -> dict[str, float] | None:
    """``trust_region`` resolved: None (off) or the full dict of factors, validated."""
    if value is None or value is False:
        return None
    if value is True:
        return dict(TRUST_REGION_DEFAULTS)
    if not isinstance(value, Mapping):
        raise DecisionOptionError(("trust_region",), f"must be false, true or a mapping with keys "
                                                     f"{list(TRUST_REGION_DEFAULTS)}, got {value!r}")
    unknown = sorted(map(str, set(value) - set(TRUST_REGION_DEFAULTS)))
    if unknown:
        hint = did_you_mean(unknown[0], list(TRUST_REGION_DEFAULTS))
        raise DecisionOptionError(("trust_region", unknown[0]),
                                  f"is not an option{hint}; expected {list(TRUST_REGION_DEFAULTS)}")
    out = {**TRUST_REGION_DEFAULTS, **value}
    for key, v in out.items():
        if not _is_number(v):
            raise DecisionOptionError(("trust_region", key), f"must be a finite number, got {v!r}")
        out[key] = float(v)
    if out["grow"] < 1.0:
        raise DecisionOptionError(("trust_region", "grow"),
                                  f"must be >= 1 (it widens the step limit), got {out['grow']!r}")
    if not 0.0 < out["shrink"] <= 1.0:
        raise DecisionOptionError(("trust_region", "shrink"),
                                  f"must be in (0, 1] (it narrows the step limit), got {out['shrink']!r}")
    if not 0.0 < out["min"] <= out["max"] <= 2.0:
        raise DecisionOptionError(("trust_region",), f"needs 0 < min <= max <= 2 (an L1 step limit), got "
                                                     f"min={out['min']!r}, max={out['max']!r}")
    return out


# ---------------------------------------------------------------------------------------------- formulas
def predicted_change(S: Any, w: Any, w_prior: Any, *, ci_low: Any = None, ci_high: Any = None,
                     normalize: str = "max", eps: float = 1e-8) -> dict[str, Any]:
    """First-order predicted change of every target for the move from ``w_prior`` to ``w``, in the solver's units.

    With ``d = w - w_prior``, ``S`` the *measured* influence ``[targets, domains]`` and ``scale`` the solver's row
    normalisation of that ``S`` (:func:`tikmix.solvers.objective.row_scale` with the solver's ``normalize`` and
    ``eps``, the ``P_hat_i = S_i . w / scale_i`` of TiKMiX-D)::

        central_i = (S_i . d) / scale_i
        worst_i   = (S_i . d - r_i . |d|) / scale_i,      r_ij = (ci_high_ij - ci_low_ij) / 2

    Positive = the target is predicted to get better (its loss to fall). ``worst`` is the minimum of ``X_i . d /
    scale_i`` over the box ``S_ij - r_ij <= X_ij <= S_ij + r_ij``: the box is centred on the measured ``S`` with the
    bootstrap interval's half-widths (a percentile interval need not be symmetric about ``S``; its width is what
    is used). Entries without an interval (NaN: a domain with fewer than 2 bootstrap units) count with ``r = 0``.

    Returns ``{"central": [n], "worst": [n] or None (no intervals), "scale": [n]}`` as float64 arrays.
    """
    from tikmix.solvers.objective import row_scale  # lazily: importing tikmix.solvers loads scipy and LightGBM

    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or not np.isfinite(S).all():
        raise ValueError(f"S must be a finite [targets, domains] matrix, got shape {S.shape}")
    w = np.asarray(w, dtype=np.float64)
    w_prior = np.asarray(w_prior, dtype=np.float64)
    if w.shape != (S.shape[1],) or w_prior.shape != (S.shape[1],):
        raise ValueError(f"w and w_prior must have S's {S.shape[1]} domains, got shapes {w.shape} and {w_prior.shape}")
    scale, _ = row_scale(S, normalize, eps)
    d = w - w_prior
    central = (S @ d) / scale
    worst = None
    if ci_low is not None and ci_high is not None:
        lo, hi = np.asarray(ci_low, dtype=np.float64), np.asarray(ci_high, dtype=np.float64)
        if lo.shape != S.shape or hi.shape != S.shape:
            raise ValueError(f"ci_low/ci_high must have S's shape {S.shape}, got {lo.shape} and {hi.shape}")
        r = np.nan_to_num((hi - lo) / 2.0, nan=0.0, posinf=0.0, neginf=0.0)
        worst = (S @ d - np.abs(r) @ np.abs(d)) / scale
    return {"central": central, "worst": worst, "scale": scale}


def safe_step(change: Any, tolerance: float, *, w: Any = None, w_prior: Any = None, lower: Any = None,
              upper: Any = None) -> dict[str, Any]:
    """The largest step ``t`` in [0, 1] along ``w_prior + t (w - w_prior)`` that keeps every target's predicted
    change at least ``-tolerance``.

    ``change`` is the prediction at ``t = 1`` (:func:`predicted_change`, its ``worst`` or ``central``); both are
    linear in ``t`` along the segment (for ``t >= 0``, ``|t d| = t |d|``), so the prediction at ``t`` is
    ``t * change`` and, closed form::

        t = min(1, min over {i : change_i < -tolerance} of tolerance / (-change_i))

    (``tolerance = 0`` gives ``t = 0`` as soon as one target is predicted worse: the previous mixture).

    Per-domain bounds ``lower``/``upper`` (the solver's ``min_weight``, ``max_weight`` and repetition cap), when
    given with ``w`` and ``w_prior``: ``w`` meets them, and if ``w_prior`` does not, points near it do not either;
    the bounds then need ``t >= t_min`` (closed form per domain). When ``t < t_min`` the bounds win (``t = t_min``)
    and ``"conflict"`` names the domains whose bounds ``w_prior`` violates.

    Returns ``{"t", "violated": [target indices with change < -tolerance], "t_min", "conflict": None or [domains]}``.
    """
    change = np.asarray(change, dtype=np.float64)
    if not _is_number(tolerance) or tolerance < 0:
        raise ValueError(f"safe tolerance must be a finite float >= 0, got {tolerance!r}")
    bad = change < -tolerance
    t = 1.0
    if bad.any():
        t = float(min(1.0, np.min(tolerance / -change[bad])))
    t_min, conflict = 0.0, None
    if w is not None and w_prior is not None and (lower is not None or upper is not None):
        w, wp = np.asarray(w, dtype=np.float64), np.asarray(w_prior, dtype=np.float64)
        d = w - wp
        need = np.zeros_like(w)
        offending = np.zeros(w.shape, dtype=bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            if lower is not None:
                lo = np.asarray(lower, dtype=np.float64)
                below = (wp < lo) & (d > 0)
                need = np.where(below, (lo - wp) / d, need)
                offending |= wp < lo
            if upper is not None:
                hi = np.asarray(upper, dtype=np.float64)
                above = (wp > hi) & (d < 0)
                need = np.maximum(need, np.where(above, (hi - wp) / d, 0.0))
                offending |= wp > hi
        t_min = float(np.clip(need.max(initial=0.0), 0.0, 1.0))
        if t < t_min:
            t = t_min
            conflict = np.flatnonzero(offending).tolist()
    return {"t": t, "violated": np.flatnonzero(bad).tolist(), "t_min": t_min, "conflict": conflict}


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho (average ranks for ties), or None when undefined: fewer than 2 values or a constant side."""
    if x.size < 2:
        return None
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    sx, sy = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float(sx @ sx) * float(sy @ sy))
    return None if den == 0.0 else float(sx @ sy) / den


def stage_feedback(loss_before: Any, loss_after: Any, predicted: Any,
                   predicted_worst: Any = None) -> dict[str, Any]:
    """What a stage realised against what was predicted for it, per target and across targets.

    ``loss_before``/``loss_after``: each target's mean dev loss at the stage's first and last boundary (the same dev
    rows); ``predicted``: the :func:`predicted_change` (central) made for the stage when its mixture was chosen.
    Realised change ``= loss_after - loss_before`` (negative = better), realised gain ``= -change``. Agreement is
    judged across targets only, since every target's loss shares the common training trend:

    * ``spearman_rho``: Spearman's rank correlation between predicted gain and realised gain over the targets
      (None with one target, when the predictions differ by at most 1e-12 across targets -- e.g. the mixture did not
      move -- or when the realised gains are all equal);
    * ``sign_agreement``: the fraction of targets whose centred predicted gain (minus its mean over targets) has the
      sign of the centred realised gain; ``signs_agree``: that fraction > 1/2 (None whenever ``spearman_rho`` is
      for want of two distinct values on a side).

    Returns a JSON-ready dict with those and the inputs.
    """
    before = np.asarray(loss_before, dtype=np.float64)
    after = np.asarray(loss_after, dtype=np.float64)
    pred = None if predicted is None else np.asarray(predicted, dtype=np.float64)
    change = after - before
    gain = -change
    rho = agreement = None
    # predictions equal across targets (e.g. the mixture did not move) rank nothing: rounding noise is no prediction
    flat = pred is None or pred.size == 0 or float(np.ptp(pred)) <= _FLAT_PREDICTION
    if pred is not None and pred.shape == gain.shape and gain.size >= 2 and not flat and np.ptp(gain) > 0:
        rho = _spearman(pred, gain)
        cp, cg = pred - pred.mean(), gain - gain.mean()
        agreement = float(np.mean(np.sign(cp) == np.sign(cg)))
    return {
        "target_loss_before": before.tolist(),
        "target_loss_after": after.tolist(),
        "realised_change": change.tolist(),
        "predicted_change": None if pred is None else pred.tolist(),
        "predicted_change_worst": None if predicted_worst is None else np.asarray(predicted_worst, float).tolist(),
        "spearman_rho": rho,
        "sign_agreement": agreement,
        "signs_agree": None if agreement is None else bool(agreement > 0.5),
    }


def feedback_summary(feedbacks: Any) -> dict[str, Any]:
    """Over a run's stage feedbacks (:func:`stage_feedback`; None entries skipped): ``stages`` (how many),
    ``mean_rho`` (mean of the defined rhos, else None), ``rho_stages`` (how many were defined),
    ``sign_agree_fraction`` (fraction of the stages with a defined sign agreement whose signs agree, else None)."""
    fbs = [f for f in feedbacks or [] if f]
    rhos = [f["spearman_rho"] for f in fbs if f.get("spearman_rho") is not None]
    signs = [f["signs_agree"] for f in fbs if f.get("signs_agree") is not None]
    return {
        "stages": len(fbs),
        "mean_rho": float(np.mean(rhos)) if rhos else None,
        "rho_stages": len(rhos),
        "sign_agree_fraction": float(np.mean(signs)) if signs else None,
    }


class Decision:
    """How a boundary's influence estimate becomes the ``S`` the solver optimises (see the module docstring).

    Args:
        objective: ``"robust"`` (default: the options below default to :data:`ROBUST_DEFAULTS`) or
            ``"paper"`` (nothing changes unless an option below is given).
        shrink: None or ``"ci"`` (shrink each entry by its bootstrap standard error).
        ema: None or a float in [0, 1): weight of the previous boundary's (row-normalised) ``S``.
        max_shift: None or a float in (0, 2]: default L1 step limit added to TiKMiX-D's options.
        min_r2: None or a float <= 1: default held-out R^2 floor added to TiKMiX-M's options.
        safe: None (off, the default) or a tolerance >= 0 in :func:`predicted_change`'s units: the chosen mixture is
            moved back toward the previous one until no target is predicted worse than ``-safe`` (:func:`safe_step`).
        trust_region: False (off, the default), True (:data:`TRUST_REGION_DEFAULTS`) or a dict with keys among
            ``grow``, ``shrink``, ``min``, ``max``: the step limit adapts to the stages' feedback
            (:meth:`trust_region_limit`).
    """

    def __init__(
        self,
        objective: str = "robust",
        *,
        shrink: str | None | object = ...,
        ema: float | None | object = ...,
        max_shift: float | None | object = ...,
        min_r2: float | None | object = ...,
        safe: float | None = None,
        trust_region: bool | Mapping[str, float] | None = False,
    ) -> None:
        if objective not in OBJECTIVES:
            raise DecisionOptionError(("objective",), f"must be one of {OBJECTIVES}, got {objective!r}"
                                                      f"{did_you_mean(str(objective), list(OBJECTIVES))}")
        base = ROBUST_DEFAULTS if objective == "robust" else dict.fromkeys(ROBUST_DEFAULTS)
        pick = lambda value, key: base[key] if value is ... else value  # noqa: E731
        self.objective = objective
        self._shrink_explicit = shrink is not ...
        self.shrink = pick(shrink, "shrink")
        self.ema = pick(ema, "ema")
        self.max_shift = pick(max_shift, "max_shift")
        self.min_r2 = pick(min_r2, "min_r2")
        if self.shrink not in _SHRINK:
            raise DecisionOptionError(("shrink",), f"must be off (None; null in YAML) or 'ci', got {self.shrink!r}")
        if self.ema is not None:
            if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0.0 <= self.ema < 1.0:
                raise DecisionOptionError(("ema",),
                                          f"must be off (None; null in YAML) or a number in [0, 1), got {self.ema!r}")
            self.ema = float(self.ema)
        if self.max_shift is not None and (
            isinstance(self.max_shift, bool) or not isinstance(self.max_shift, (int, float))
            or not 0.0 < self.max_shift <= 2.0
        ):
            raise DecisionOptionError(("max_shift",), f"must be off (None; null in YAML) or a number in (0, 2], got "
                                                      f"{self.max_shift!r}")
        if self.min_r2 is not None and (
            isinstance(self.min_r2, bool) or not isinstance(self.min_r2, (int, float))
            or not math.isfinite(self.min_r2) or self.min_r2 > 1.0
        ):
            raise DecisionOptionError(("min_r2",), f"must be off (None; null in YAML) or a finite number <= 1, got "
                                                   f"{self.min_r2!r}")
        if safe is not None and (not _is_number(safe) or safe < 0):
            raise DecisionOptionError(("safe",), f"must be off (None; null in YAML) or a finite tolerance >= 0, got "
                                                 f"{safe!r}")
        self.safe = None if safe is None else float(safe)
        self.trust_region = _trust_region(trust_region)
        self._smoothed: np.ndarray | None = None  # row-normalised smoothed S of the last boundary

    @classmethod
    def from_options(cls, value: Any) -> Decision:
        """A Decision from None (the default, robust), an objective name, a dict of the constructor's arguments, or
        itself."""
        if value is None:
            return cls()
        if isinstance(value, Decision):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            known = ["objective", *ROBUST_DEFAULTS, *_OFF_DEFAULTS]
            unknown = sorted(map(str, set(value) - set(known)))
            if unknown:
                raise DecisionOptionError((unknown[0],), f"is not a decision option{did_you_mean(unknown[0], known)}; "
                                          f"expected {', '.join(known)}")
            return cls(**dict(value))
        raise TypeError(f"decision must be None, 'paper', 'robust', a dict or a Decision, got {type(value).__name__}")

    def options(self) -> dict[str, Any]:
        """The resolved options (JSON-ready)."""
        return {"objective": self.objective, "shrink": self.shrink, "ema": self.ema,
                "max_shift": self.max_shift, "min_r2": self.min_r2, "safe": self.safe,
                "trust_region": False if self.trust_region is None else dict(self.trust_region)}

    def __repr__(self) -> str:
        return "Decision(" + ", ".join(f"{k}={v!r}" for k, v in self.options().items()) + ")"

    @staticmethod
    def complete_options(options: Any) -> Any:
        """Saved :meth:`options` with the options added since filled in with their off values (so that a state saved
        before them compares equal to a decision that leaves them off)."""
        if isinstance(options, Mapping):
            return {**options, **{k: v for k, v in _OFF_DEFAULTS.items() if k not in options}}
        return options

    # ------------------------------------------------------------------ S
    def shrinks(self, unit: str) -> bool:
        """Whether ``S`` estimated with this bootstrap ``unit`` (``"sample"`` or ``"micro-batch"``) is shrunk."""
        return self.shrink == "ci" and (self._shrink_explicit or unit == "sample")

    def effective_S(self, S: Any, ci_low: Any = None, ci_high: Any = None, confidence: float = 0.95,
                    unit: str = "sample") -> tuple[np.ndarray, dict[str, Any]]:
        """The ``S`` the solver sees at this boundary, and a JSON-ready account of what was done.

        ``S`` is ``[targets, domains]``; ``ci_low``/``ci_high`` the bootstrap interval at ``confidence``,
        resampled over ``unit`` (``"sample"`` or ``"micro-batch"``: see :meth:`shrinks`)
        (needed for ``shrink="ci"``; NaN entries -- too few units to bootstrap -- are left unshrunk, with a
        RuntimeWarning and ``info["shrink"]`` naming their domain columns).
        Updates the smoothing state: call once per boundary, in order.
        """
        S = np.array(S, dtype=np.float64)
        if S.ndim != 2 or not np.isfinite(S).all():
            raise ValueError(f"S must be a finite [targets, domains] matrix, got shape {S.shape}")
        info: dict[str, Any] = {"options": self.options()}
        out = S
        if self.shrink == "ci" and not self.shrinks(unit):
            info["shrink"] = f"skipped: the robust default shrinks per-sample estimates only (unit: {unit})"
        elif self.shrink == "ci" and (ci_low is None or ci_high is None):
            if self._shrink_explicit:
                raise ValueError(
                    "decision shrink='ci' needs bootstrap intervals of S: set influence n_bootstrap > 0 "
                    "(or shrink=None)"
                )
            info["shrink"] = "skipped: no bootstrap intervals of S (influence n_bootstrap = 0)"
        elif self.shrink == "ci":
            lo, hi = np.asarray(ci_low, dtype=np.float64), np.asarray(ci_high, dtype=np.float64)
            if lo.shape != S.shape or hi.shape != S.shape:
                raise ValueError(f"ci_low/ci_high must have S's shape {S.shape}, got {lo.shape} and {hi.shape}")
            z = NormalDist().inv_cdf(0.5 + float(confidence) / 2)
            se = (hi - lo) / (2 * z)
            with np.errstate(divide="ignore", invalid="ignore"):
                factor = np.clip(1.0 - (se / np.abs(S)) ** 2, 0.0, 1.0)
            factor = np.where(np.isfinite(factor), factor, np.where(np.isfinite(se), 0.0, 1.0))
            out = out * factor
            info["shrink_factor"] = factor.tolist()
            missing = sorted(set(np.nonzero(~np.isfinite(se))[1].tolist()))
            if missing:
                info["shrink"] = (f"partial: domain column(s) {missing} have no bootstrap interval (fewer than 2 "
                                  "units) and are left unshrunk")
                warnings.warn(f"tikmix decision: {info['shrink']}; draw more micro-batches per domain (group mode) "
                              "or use mode='per_sample'", RuntimeWarning, stacklevel=2)
        if self.ema is not None:
            scale = np.abs(out).max(axis=1, keepdims=True)
            scale = np.where(scale > 0, scale, 1.0)
            norm = out / scale
            if self._smoothed is not None and self._smoothed.shape == norm.shape:
                norm = self.ema * self._smoothed + (1.0 - self.ema) * norm
            self._smoothed = norm
            out = norm * scale
            info["ema_state"] = norm.tolist()
        info["S_used"] = out.tolist()
        return out, info

    def resume(self, records: Any) -> None:
        """Restore the smoothing state from the controller's history records (the last one's ``decision``)."""
        self._smoothed = None
        for rec in records or []:
            state = (rec.get("decision") or {}).get("ema_state") if isinstance(rec, Mapping) else None
            if state is not None:
                self._smoothed = np.asarray(state, dtype=np.float64)

    # ------------------------------------------------------------------ solver defaults
    def solver_options(self, solver: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` with this decision's defaults added where they are not set."""
        opts = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in options.items()}
        if solver == "direct":
            if self.max_shift is not None:
                opts.setdefault("max_shift", self.max_shift)
            return opts
        d = opts.setdefault("direct", {})
        r = opts.setdefault("regression", {})
        if self.max_shift is not None:
            d.setdefault("max_shift", self.max_shift)
        if self.min_r2 is not None:
            r.setdefault("min_r2", self.min_r2)
        return opts

    # ------------------------------------------------------------------ trust region
    def trust_region_limit(self, previous: float | None, rho: float | None, start: float | None) -> dict[str, Any]:
        """The step limit ``max_shift`` for this boundary, and why (the record's ``decision["trust_region"]``).

        ``previous``: the limit used at the previous boundary (None at the first: the limit is ``start``, the solver
        options' or this decision's ``max_shift``, else 0.3); ``rho``: the feedback of the stage that just ended
        (:func:`stage_feedback`). ``previous * grow`` when ``rho > 0``, ``previous * shrink`` when ``rho <= 0``,
        unchanged when ``rho`` is None; always clamped to ``[min, max]``. A pure function of the history, so a
        resumed run continues exactly.
        """
        tr = self.trust_region
        if tr is None:
            raise ValueError("trust_region_limit needs a Decision with trust_region on")
        if previous is None:
            value = TRUST_REGION_START if start is None else float(start)
            reason = "start"
        elif rho is None:
            value, reason = float(previous), "kept: no rank agreement for the stage (one target or constant values)"
        elif rho > 0:
            value, reason = float(previous) * tr["grow"], f"grew: the stage's feedback agreed (rho={rho:+.3f} > 0)"
        else:
            value = float(previous) * tr["shrink"]
            reason = f"shrank: the stage's feedback disagreed (rho={rho:+.3f} <= 0)"
        clamped = min(max(value, tr["min"]), tr["max"])
        if clamped != value:
            reason += f"; clamped to [{tr['min']:g}, {tr['max']:g}]"
        return {"max_shift": clamped, "reason": reason}

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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = ["Decision", "OBJECTIVES", "ROBUST_DEFAULTS"]

OBJECTIVES = ("paper", "robust")
ROBUST_DEFAULTS: dict[str, Any] = {"shrink": "ci", "ema": 0.5, "max_shift": 0.3, "min_r2": 0.1}
_SHRINK = (None, "ci")


class Decision:
    """How a boundary's influence estimate becomes the ``S`` the solver optimises (see the module docstring).

    Args:
        objective: ``"robust"`` (default: the options below default to :data:`ROBUST_DEFAULTS`) or
            ``"paper"`` (nothing changes unless an option below is given).
        shrink: None or ``"ci"`` (shrink each entry by its bootstrap standard error).
        ema: None or a float in [0, 1): weight of the previous boundary's (row-normalised) ``S``.
        max_shift: None or a float in (0, 2]: default L1 step limit added to TiKMiX-D's options.
        min_r2: None or a float <= 1: default held-out R^2 floor added to TiKMiX-M's options.
    """

    def __init__(
        self,
        objective: str = "robust",
        *,
        shrink: str | None | object = ...,
        ema: float | None | object = ...,
        max_shift: float | None | object = ...,
        min_r2: float | None | object = ...,
    ) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        base = ROBUST_DEFAULTS if objective == "robust" else dict.fromkeys(ROBUST_DEFAULTS)
        pick = lambda value, key: base[key] if value is ... else value  # noqa: E731
        self.objective = objective
        self._shrink_explicit = shrink is not ...
        self.shrink = pick(shrink, "shrink")
        self.ema = pick(ema, "ema")
        self.max_shift = pick(max_shift, "max_shift")
        self.min_r2 = pick(min_r2, "min_r2")
        if self.shrink not in _SHRINK:
            raise ValueError(f"shrink must be None or 'ci', got {self.shrink!r}")
        if self.ema is not None:
            if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0.0 <= self.ema < 1.0:
                raise ValueError(f"ema must be None or a float in [0, 1), got {self.ema!r}")
            self.ema = float(self.ema)
        if self.max_shift is not None and (
            isinstance(self.max_shift, bool) or not isinstance(self.max_shift, (int, float))
            or not 0.0 < self.max_shift <= 2.0
        ):
            raise ValueError(f"max_shift must be None or a float in (0, 2], got {self.max_shift!r}")
        if self.min_r2 is not None and (
            isinstance(self.min_r2, bool) or not isinstance(self.min_r2, (int, float))
            or not math.isfinite(self.min_r2) or self.min_r2 > 1.0
        ):
            raise ValueError(f"min_r2 must be None or a finite float <= 1, got {self.min_r2!r}")
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
            unknown = sorted(set(value) - {"objective", *ROBUST_DEFAULTS})
            if unknown:
                raise ValueError(f"decision: unknown option(s) {unknown}; expected objective, "
                                 f"{', '.join(ROBUST_DEFAULTS)}")
            return cls(**dict(value))
        raise TypeError(f"decision must be None, 'paper', 'robust', a dict or a Decision, got {type(value).__name__}")

    def options(self) -> dict[str, Any]:
        """The resolved options (JSON-ready)."""
        return {"objective": self.objective, "shrink": self.shrink, "ema": self.ema,
                "max_shift": self.max_shift, "min_r2": self.min_r2}

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

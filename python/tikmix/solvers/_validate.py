"""Argument checks shared by the mixture solvers: the influence matrix, mixtures, per-domain options, scalars."""
from __future__ import annotations

import math
from typing import Any, Sequence, Union

import numpy as np

from .._validation import to_float64_array

ArrayLike = Any
PerDomain = Union[float, Sequence[float], np.ndarray]


def check_matrix(S: ArrayLike) -> np.ndarray:
    S = to_float64_array(S, "S")
    if S.ndim == 1:
        S = S[None, :]
    if S.ndim != 2:
        raise ValueError(f"S must be 2-D [n targets, m domains] (or 1-D [m] for one target); got shape {S.shape}")
    if S.shape[0] == 0 or S.shape[1] == 0:
        raise ValueError(f"S must have at least one target row and one domain column; got shape {S.shape}")
    bad = ~np.isfinite(S)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"S contains {int(bad.sum())} NaN/inf entries (first at row, column {first}); "
            "influence scores must be finite (check the influence computation or drop those domains)"
        )
    return S


def check_mixture(w: ArrayLike, m: int, name: str) -> np.ndarray:
    w = to_float64_array(w, name)
    if w.ndim != 1 or w.shape[0] != m:
        raise ValueError(f"{name} must be a vector of {m} domain weights (one per column of S); got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name} contains NaN/inf")
    if np.any(w < 0):
        raise ValueError(f"{name} must be non-negative; entry {int(np.argmin(w))} is {w.min():g}")
    total = w.sum()
    if total <= 0:
        raise ValueError(f"{name} must have a positive sum (it is normalised to sum to 1); got {total:g}")
    return w / total


def per_domain(value: PerDomain, m: int, name: str, lo: float, hi: float) -> np.ndarray:
    arr = to_float64_array(value, name)
    if arr.ndim == 0:
        arr = np.full(m, float(arr))
    if arr.shape != (m,):
        raise ValueError(f"{name} must be a scalar or a vector of {m} values (one per domain); got shape {arr.shape}")
    if np.any(np.isnan(arr)):
        raise ValueError(f"{name} contains NaN")
    if np.any(arr < lo) or np.any(arr > hi):
        j = int(np.flatnonzero((arr < lo) | (arr > hi))[0])
        raise ValueError(f"{name} must lie in [{lo:g}, {hi:g}]; entry {j} is {arr[j]:g}")
    return arr


def nonneg_scalar(value: Any, name: str, *, positive: bool = False, upper: float = math.inf) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}") from exc
    if not math.isfinite(v) and not (v == math.inf and upper == math.inf):
        raise ValueError(f"{name} must be finite; got {v}")
    if v < 0 or (positive and v == 0) or v > upper:
        need = "> 0" if positive else ">= 0"
        extra = f" and <= {upper:g}" if upper != math.inf else ""
        raise ValueError(f"{name} must be {need}{extra}; got {v:g}")
    return v

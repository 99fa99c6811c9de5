"""The one home of the library's argument checks shared across modules: integers, numeric arrays and names.

Errors name the argument and what was expected: a TypeError for a value of the wrong kind, a ValueError for one
out of range.
"""
from __future__ import annotations

import difflib
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["check_int", "to_float64_array", "did_you_mean"]


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int, within ``[minimum, maximum]`` (either bound optional).

    Python and numpy integers are accepted; bools, floats (even integral ones) and strings are not.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def to_float64_array(x: Any, name: str) -> np.ndarray:
    """``x`` (a torch tensor of any dtype or device, a numpy array, a sequence, a number) as a float64 array."""
    if hasattr(x, "detach") and hasattr(x, "double"):  # torch.Tensor, imported lazily by whoever made it
        x = x.detach().double().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array; got {type(x).__name__}") from exc


def did_you_mean(word: str, known: Sequence[str]) -> str:
    """`` (did you mean X?)`` for the closest known word, or ``""``."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""

"""SplitMix64 in Python: the one vectorised copy of the hash behind tikmix's RNG contract.

The contract itself (formulas, limits, golden values) is defined in ``csrc/include/tikmix/rng.h``; this module
restates only its mixing function for the pure-Python parts of the library (the sampler's stream, the solvers'
resampling path, the influence engine's Kronecker tiles). ``tikmix_ext.reference`` keeps an independent scalar
restatement on purpose: tests check the native kernels and this module against it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["MASK64", "GOLDEN", "mix_int", "mix", "mix_inplace"]

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB

# Multipliers as 1-element arrays: numpy multiplies a uint64 array by an array ~10x faster than by a scalar.
_U64_M1 = np.array([_M1], dtype=np.uint64)
_U64_M2 = np.array([_M2], dtype=np.uint64)
_S30, _S27, _S31 = (np.array([k], dtype=np.uint64) for k in (30, 27, 31))


def mix_int(z: int) -> int:
    """SplitMix64 finaliser on a Python int (taken modulo 2**64)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * _M1) & MASK64
    z = ((z ^ (z >> 27)) * _M2) & MASK64
    return z ^ (z >> 31)


def mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, elementwise on a uint64 array (wrapping arithmetic); returns a new array."""
    z = np.array(z, dtype=np.uint64, ndmin=1)  # a copy; array (not scalar) ops wrap silently
    mix_inplace(z, np.empty_like(z))
    return z


def mix_inplace(z: np.ndarray, buf: np.ndarray) -> None:
    """``z = mix(z)`` in place (``buf``: scratch of the same shape). Written as out= calls with distinct
    input and output arrays: numpy's in-place ``z *= c`` is several times slower on uint64."""
    np.right_shift(z, _S30, out=buf)
    np.bitwise_xor(z, buf, out=buf)
    np.multiply(buf, _U64_M1, out=z)
    np.right_shift(z, _S27, out=buf)
    np.bitwise_xor(z, buf, out=buf)
    np.multiply(buf, _U64_M2, out=z)
    np.right_shift(z, _S31, out=buf)
    np.bitwise_xor(z, buf, out=z)

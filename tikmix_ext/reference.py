"""Pure-torch reference implementations (float64 where it matters) of every tikmix op.

They are slow and simple on purpose: tests compare the native kernels against them, and users can use them to
check a build. The RNG follows csrc/include/tikmix/rng.h (the contract); these functions restate it in Python
with independent code (Python integers), never by calling the native kernels.
"""
from __future__ import annotations

import math

import torch

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_ROW_BITS = 44


def mix64_ref(z: int) -> int:
    """SplitMix64 finaliser on a Python int (mod 2^64)."""
    z &= _MASK
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & _MASK
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    return z


def rng_key_ref(seed: int) -> int:
    return mix64_ref(seed + _GOLDEN)


def sign_word_ref(seed: int, row: int, block: int) -> int:
    """W(seed, row, block): 64 sign bits of R[row, 64·block : 64·block + 64] (bit set ⇔ negative)."""
    return mix64_ref(rng_key_ref(seed) + ((block << _ROW_BITS) + row) * _GOLDEN)


def projection_ref(rows: int, k: int, seed: int, offset: int = 0) -> torch.Tensor:
    """R[offset : offset + rows, :k] as float64 (entries ±1/√k), computed with Python integers."""
    key = rng_key_ref(seed)
    blocks = (k + 63) // 64
    out = torch.empty(rows, k, dtype=torch.float64)
    for r in range(rows):
        signs = []
        for b in range(blocks):
            w = mix64_ref(key + ((b << _ROW_BITS) + offset + r) * _GOLDEN)
            signs.extend(-1.0 if (w >> i) & 1 else 1.0 for i in range(64))
        out[r] = torch.tensor(signs[:k], dtype=torch.float64)
    return out / math.sqrt(k)


def sketch_ref(x: torch.Tensor, k: int, seed: int, offset: int = 0, scale: torch.Tensor | None = None) -> torch.Tensor:
    """(x ⊙ scale) · R[offset : offset + d, :] in float64; x: [N, d], scale: [d] or None → [N, k]."""
    x64 = x.to(torch.float64)
    if scale is not None:
        x64 = x64 * scale.to(torch.float64)
    return x64 @ projection_ref(x.shape[1], k, seed, offset)


def kron_seed_ref(seed: int, layer: int, tag: int) -> int:
    """Seed of R_in (tag 0) or R_out (tag 1) of linear layer ``layer`` for sketch_kron."""
    return mix64_ref(seed ^ mix64_ref(2 * layer + tag))

"""numpy implementation of ``torch.ops.tikmix.mixture_scores`` (bit-exact to its contract), for builds without it.

The contract is defined once, in the native headers: the draw hash ``resample_word`` in
``csrc/include/tikmix/rng.h`` and the counts / summation order in ``csrc/include/tikmix/reduce_kernels.h``
(``tikmix_ext.reference.mixture_scores_ref`` restates it as a slow scalar loop). This module vectorises the same
arithmetic so TiKMiX-M can label >= 10,000 candidates without the compiled extension; the tests compare it with
the reference (and with the native op when built), bit for bit. In short, for candidate c:

1. ``w = float64(candidates[c])``, ``s`` = sequential float64 sum of w, ``q_j = (w_j / s) * draws``,
   ``f_j = floor(q_j)``; the ``draws - sum f`` domains with ``w_j > 0`` that come first in the order
   (``q_j - f_j`` descending, ``j`` ascending) get one more draw (largest remainder, ties to the lower index).
2. Draw t of domain j is row ``rows_j[u mod n_j]`` (``rows_j``: the rows with ``ids == j`` in input order) with
   ``u = resample_word(rng_key(seed), c, j, t)``; all arithmetic on uint64 mod 2^64::

       mix(z)  = SplitMix64 finaliser (z ^= z>>30; z *= 0xBF58476D1CE4E5B9; z ^= z>>27; z *= 0x94D049BB133111EB;
                 z ^= z>>31)
       rng_key(seed) = mix(seed + 0x9E3779B97F4A7C15)
       resample_word(key, c, j, t) = mix(mix(key ^ mix(c * 0x9E3779B97F4A7C15 + j)) + t * 0x9E3779B97F4A7C15)

3. ``score[c] = (float64 sum of the drawn rows, j ascending then t ascending, from +0.0) / draws``, cast to
   per_sample's dtype.
"""
from __future__ import annotations

import numpy as np

from .._splitmix import GOLDEN, mix as mix64, mix_int

__all__ = ["mix64", "resample_word", "draw_counts", "mixture_scores_np"]

_G64 = np.uint64(GOLDEN)


def resample_word(seed: int, c: np.ndarray, j: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``resample_word(rng_key(seed), c, j, t)`` of rng.h for arrays of (c, j, t); returns uint64."""
    with np.errstate(over="ignore"):
        key = np.uint64(mix_int(int(seed) + GOLDEN))
        inner = mix64(key ^ mix64(np.asarray(c, dtype=np.uint64) * _G64 + np.asarray(j, dtype=np.uint64)))
        return mix64(inner + np.asarray(t, dtype=np.uint64) * _G64)


def draw_counts(candidates: np.ndarray, draws: int) -> np.ndarray:
    """Largest-remainder draw counts ``[C, G]`` (int64, each row sums to ``draws``) of the contract's step 1."""
    W = np.asarray(candidates, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"candidates must be 2-D [C, G]; got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        raise ValueError("candidates contain NaN/inf")
    if np.any(W < 0):
        c, j = (int(v) for v in np.argwhere(W < 0)[0])
        raise ValueError(f"candidates must be non-negative; candidates[{c}, {j}] = {W[c, j]:g}")
    s = np.cumsum(W, axis=1)[:, -1:]  # sequential float64 sum, as the contract requires (not pairwise)
    if np.any(~(s > 0)) or np.any(~np.isfinite(s)):
        raise ValueError(f"every candidate needs a finite positive sum; row {int(np.argmin(s[:, 0]))} fails")
    q = (W / s) * float(draws)
    f = np.floor(q)
    r = q - f
    counts = f.astype(np.int64)
    remaining = int(draws) - counts.sum(axis=1)
    # rank in the order (positive weight first, r descending, j ascending); lexsort keys: last is primary
    G = W.shape[1]
    j_idx = np.broadcast_to(np.arange(G), W.shape)
    order = np.lexsort((j_idx, -r, ~(W > 0)), axis=1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(G), W.shape), axis=1)
    counts += ((rank < remaining[:, None]) & (W > 0)).astype(np.int64)
    return counts


def mixture_scores_np(
    per_sample: np.ndarray, ids: np.ndarray, candidates: np.ndarray, draws: int, seed: int,
    *, chunk_draws: int = 1 << 20,
) -> np.ndarray:
    """``mixture_scores`` in numpy: ``per_sample [N, n]``, ``ids [N]``, ``candidates [C, G]`` -> ``[C, n]``.

    Same values, bit for bit, as the native op (same counts, hash and float64 summation order); the output has
    per_sample's dtype (float32 or float64). Raises ValueError for bad shapes, ids outside ``[0, G)``,
    ``draws < 1``, bad candidates, or weight on a domain without rows.
    """
    X = np.asarray(per_sample)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    ids = np.asarray(ids)
    W = np.asarray(candidates)
    if X.ndim != 2:
        raise ValueError(f"per_sample must be 2-D [N, n]; got shape {X.shape}")
    if ids.ndim != 1 or ids.shape[0] != X.shape[0]:
        raise ValueError(f"ids must be 1-D with N={X.shape[0]} entries; got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integers; got dtype {ids.dtype}")
    if W.ndim != 2:
        raise ValueError(f"candidates must be 2-D [C, G]; got shape {W.shape}")
    C, G = W.shape
    if ids.size and (ids.min() < 0 or ids.max() >= G):
        raise ValueError(f"ids must lie in [0, {G}) (G = candidates.shape[1]); got [{ids.min()}, {ids.max()}]")
    if int(draws) < 1:
        raise ValueError(f"draws must be >= 1; got {draws}")
    draws = int(draws)
    counts = draw_counts(W, draws)
    n_j = np.bincount(ids.astype(np.int64), minlength=G)
    empty = (counts > 0) & (n_j[None, :] == 0)
    if np.any(empty):
        c, j = (int(v) for v in np.argwhere(empty)[0])
        raise ValueError(f"candidates[{c}] puts weight on domain {j}, which has no rows in ids")
    order = np.argsort(ids, kind="stable")  # rows grouped by domain, input order inside a domain
    start = np.concatenate([[0], np.cumsum(n_j)[:-1]])
    X64 = X.astype(np.float64, copy=False)
    out = np.empty((C, X.shape[1]), dtype=np.float64)
    per_chunk = max(1, chunk_draws // draws)
    for c0 in range(0, C, per_chunk):
        c1 = min(C, c0 + per_chunk)
        cnt = counts[c0:c1].reshape(-1)  # (c, j) pairs, c-major then j ascending
        pair = np.repeat(np.arange(cnt.size), cnt)
        first = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        t_idx = np.arange(cnt.sum()) - first[pair]
        j_idx = pair % G
        u = resample_word(seed, pair // G + c0, j_idx, t_idx)
        rows = order[start[j_idx] + (u % n_j[j_idx].astype(np.uint64)).astype(np.int64)]
        vals = X64[rows].reshape(c1 - c0, draws, X.shape[1])
        # sequential float64 sum over the draws in (j, t) order: cumsum adds left to right, from the first value
        acc = np.cumsum(vals, axis=1)[:, -1, :] + 0.0  # + 0.0: the contract starts from +0.0 (sign of zero)
        out[c0:c1] = acc / float(draws)
    return out.astype(X.dtype, copy=False)

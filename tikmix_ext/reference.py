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


# ---- reduce family (sketch_kron, segments, group influence, mixture scores) ------------------------------------
def sketch_kron_ref(a: torch.Tensor, g: torch.Tensor, k_in: int, k_out: int, seed: int, layer: int) -> torch.Tensor:
    """Dense Kronecker projection of the materialised per-sample gradients, float64.

    a: [N, T, i], g: [N, T, o] → [N, k_out·k_in] = (R_out ⊗ R_in)ᵀ · vec_row(W_n), W_n = Σ_t g_t a_tᵀ ([o, i]).
    """
    w = torch.einsum("nto,nti->noi", g.double(), a.double())  # materialised per-sample gradients
    r_in = projection_ref(a.shape[2], k_in, kron_seed_ref(seed, layer, 0))
    r_out = projection_ref(g.shape[2], k_out, kron_seed_ref(seed, layer, 1))
    return w.reshape(w.shape[0], w.shape[1] * w.shape[2]) @ torch.kron(r_out, r_in)  # explicit: N may be 0


def segment_sum_ref(x: torch.Tensor, ids: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Per-group row sums in float64. x: [N, k], ids: [N] → [num_groups, k]."""
    out = torch.zeros(num_groups, x.shape[1], dtype=torch.float64)
    for z in range(x.shape[0]):
        out[int(ids[z])] += x[z].double()
    return out


def segment_mean_ref(x: torch.Tensor, ids: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Per-group row means in float64 (empty group → 0). x: [N, k], ids: [N] → [num_groups, k]."""
    counts = torch.tensor([(ids == j).sum().item() for j in range(num_groups)], dtype=torch.float64)
    return segment_sum_ref(x, ids, num_groups) / counts.clamp_min(1).unsqueeze(1)


def group_influence_ref(
    train: torch.Tensor, ids: torch.Tensor, num_groups: int, target: torch.Tensor, precond: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (S [n, G], per_sample [N, n]) with per_sample[z, i] = target_i · (P train_z). train: [N, k],
    ids: [N], target: [n, k], precond: [k, k] or None (identity)."""
    p = torch.eye(train.shape[1], dtype=torch.float64) if precond is None else precond.double()
    per_sample = torch.einsum("ia,ab,zb->zi", target.double(), p, train.double())
    return segment_sum_ref(per_sample, ids, num_groups).T, per_sample


def resample_word_ref(seed: int, candidate: int, domain: int, draw: int) -> int:
    """resample_word(key(seed), c, j, t) of rng.h on Python integers."""
    inner = mix64_ref(rng_key_ref(seed) ^ mix64_ref(candidate * _GOLDEN + domain))
    return mix64_ref(inner + draw * _GOLDEN)


def mixture_counts_ref(weights: list[float], draws: int) -> list[int]:
    """Largest-remainder draw counts of one candidate (weights: [G] ≥ 0, sequential float64 sum)."""
    s = 0.0
    for v in weights:
        s += float(v)
    q = [(float(v) / s) * draws for v in weights]
    counts = [math.floor(x) for x in q]
    order = sorted((j for j in range(len(q)) if weights[j] > 0), key=lambda j: (-(q[j] - counts[j]), j))
    for j in order[: draws - sum(counts)]:
        counts[j] += 1
    return counts


def mixture_scores_ref(
    per_sample: torch.Tensor, ids: torch.Tensor, candidates: torch.Tensor, draws: int, seed: int
) -> torch.Tensor:
    """Resampled mean rows per candidate, float64. per_sample: [N, n], ids: [N], candidates: [C, G] → [C, n]."""
    domains = [[z for z in range(len(ids)) if int(ids[z]) == j] for j in range(candidates.shape[1])]
    out = torch.zeros(candidates.shape[0], per_sample.shape[1], dtype=torch.float64)
    for c in range(candidates.shape[0]):
        for j, count in enumerate(mixture_counts_ref(candidates[c].double().tolist(), draws)):
            for t in range(count):
                rows = domains[j]
                out[c] += per_sample[rows[resample_word_ref(seed, c, j, t) % len(rows)]].double()
    return out / draws

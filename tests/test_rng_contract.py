"""The RNG contract of csrc/include/tikmix/rng.h: R[r, c] = ±1/√k, a pure function of (seed, r, c).

Pinned golden values (so the contract cannot drift silently), the native projection against the pure-Python
reference (tikmix_ext.reference, Python integers), the prefix property in k, independence from how rows are
chunked or offset, the limits, and the statistics that make R a Johnson–Lindenstrauss projection.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

import tikmix_ext
from tikmix_ext.reference import mix64_ref, projection_ref, rng_key_ref, sign_word_ref, sketch_ref

# ---- golden values (KERNEL_NOTES §1, rng.h) ---------------------------------------------------------------------
GOLDEN_WORDS = {
    # (seed, row, block): W(seed, row, block)
    (0, 0, 0): 0x48218226FF3CD4BF,
    (0, 1, 0): 0xA706DD2F4D197E6F,
    (0, 0, 1): 0xBBCE8524FE9B79AD,
    (42, 2**40 - 1, 255): 0x7312B94F007F5046,
}
GOLDEN_KEY0 = 0xE220A8397B1DCDAF  # the well-known first SplitMix64 output for seed 0
GOLDEN_SIGNS_ROW0 = "------+-++-+-+--"  # signs of R[0, 0:16], seed 0
# SHA-256 of W for seed 0, rows 0..1023, blocks 0..15, row-major little-endian u64.
GOLDEN_SHA256 = "85ed325cfb451c1b994abdea7355b766a4c99eb428b2409c9b71bb0c02b61873"


def signs_string(row: torch.Tensor) -> str:
    return "".join("-" if v < 0 else "+" for v in row.tolist())


def words_from_projection(R: torch.Tensor) -> np.ndarray:
    """Rebuild the u64 words W(seed, r, b) from the signs of a materialised R (k a multiple of 64)."""
    bits = (R < 0).numpy().astype(np.uint8)
    rows, k = bits.shape
    weights = np.uint64(1) << np.arange(64, dtype=np.uint64)
    return (bits.reshape(rows, k // 64, 64).astype(np.uint64) * weights).sum(axis=2, dtype=np.uint64)


class TestGoldenValues:
    def test_reference_key_and_words(self):
        assert rng_key_ref(0) == GOLDEN_KEY0
        for (seed, row, block), word in GOLDEN_WORDS.items():
            assert sign_word_ref(seed, row, block) == word, f"W{(seed, row, block)}"

    def test_mix64_is_splitmix64_finaliser(self):
        # SplitMix64 with state 0: the first output is mix(0 + G), the second mix(2G).
        assert mix64_ref(0x9E3779B97F4A7C15) == GOLDEN_KEY0
        assert mix64_ref(2 * 0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4

    def test_native_words(self):
        for (seed, row, block), word in GOLDEN_WORDS.items():
            R = tikmix_ext.projection(1, 64 * (block + 1), seed, row)
            assert int(words_from_projection(R)[0, block]) == word, f"W{(seed, row, block)}"

    def test_signs_of_first_row(self):
        assert signs_string(tikmix_ext.projection(1, 16, 0)[0]) == GOLDEN_SIGNS_ROW0
        assert signs_string(projection_ref(1, 16, 0)[0]) == GOLDEN_SIGNS_ROW0

    def test_sha256_native(self):
        W = words_from_projection(tikmix_ext.projection(1024, 1024, 0))
        assert hashlib.sha256(W.astype("<u8").tobytes()).hexdigest() == GOLDEN_SHA256

    def test_sha256_reference(self):
        W = np.array([[sign_word_ref(0, r, b) for b in range(16)] for r in range(1024)], dtype=np.uint64)
        assert hashlib.sha256(W.astype("<u8").tobytes()).hexdigest() == GOLDEN_SHA256

    def test_scale_is_float32_of_inverse_sqrt_k(self):
        for k in (1, 3, 64, 1000):
            R = tikmix_ext.projection(2, k, 5)
            expected = np.float32(1.0 / math.sqrt(k))
            assert set(R.abs().unique().tolist()) == {float(expected)}


class TestProjection:
    @pytest.mark.parametrize(
        "rows,k,seed,offset",
        [
            (3, 1, 0, 0),
            (5, 63, 1, 7),
            (4, 65, 2, 2**32 + 3),  # above 2^32: 64-bit row arithmetic
            (2, 130, 3, 2**44 - 2),  # the last rows of the contract
            (300, 70, 4, 5),  # several parallel row tiles, column tail
            (17, 192, 2**63 - 1, 2**40),
        ],
    )
    def test_matches_reference(self, rows, k, seed, offset):
        native = tikmix_ext.projection(rows, k, seed, offset)
        assert native.dtype == torch.float32 and native.shape == (rows, k)
        assert torch.equal(native, projection_ref(rows, k, seed, offset).to(torch.float32))

    def test_prefix_property_in_k(self):
        big = tikmix_ext.projection(50, 300, 9, 1234)
        for k in (1, 16, 64, 65, 299):
            small = tikmix_ext.projection(50, k, 9, 1234)
            assert torch.equal(torch.sign(small), torch.sign(big[:, :k])), f"k={k}"

    def test_independent_of_row_chunking(self):
        whole = tikmix_ext.projection(1000, 100, 3, 2**33)
        parts = [tikmix_ext.projection(n, 100, 3, 2**33 + s) for s, n in ((0, 1), (1, 255), (256, 513), (769, 231))]
        assert torch.equal(torch.cat(parts), whole)

    def test_independent_of_thread_count(self):
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = tikmix_ext.projection(2000, 77, 1)
            torch.set_num_threads(2)
            two = tikmix_ext.projection(2000, 77, 1)
        finally:
            torch.set_num_threads(before)
        assert torch.equal(one, two)

    def test_seeds_give_different_matrices(self):
        a, b = tikmix_ext.projection(64, 64, 0), tikmix_ext.projection(64, 64, 1)
        agree = (torch.sign(a) == torch.sign(b)).double().mean().item()
        assert 0.45 < agree < 0.55

    def test_sketch_of_one_hot_is_R(self):
        # Every sketch path (fused N ≤ 4, tile + micro-kernel, bf16 kernel) reproduces R exactly on one-hot rows.
        d, k, seed, offset = 300, 130, 6, 2**41
        R = tikmix_ext.projection(d, k, seed, offset)
        for n, dtype in ((3, torch.float32), (7, torch.float32), (7, torch.bfloat16), (9, torch.float16)):
            idx = torch.tensor([0, 1, 63, 64, 150, 298, 299, 5, 77][:n])
            x = torch.zeros(n, d, dtype=dtype)
            x[torch.arange(n), idx] = 1
            assert torch.equal(tikmix_ext.sketch(x, k, seed, offset), R[idx]), f"n={n} {dtype}"


class TestLimits:
    def test_rows_beyond_2_44(self):
        tikmix_ext.projection(1, 8, 0, 2**44 - 1)  # the last row is fine
        with pytest.raises(ValueError, match="offset|2\\^44"):
            tikmix_ext.projection(2, 8, 0, 2**44 - 1)
        with pytest.raises(ValueError, match="offset|2\\^44"):
            tikmix_ext.sketch(torch.ones(1, 4), 8, 0, 2**44 - 3)

    def test_k_limit(self):
        with pytest.raises(ValueError, match="k"):
            tikmix_ext.projection(1, 2**26, 0)
        with pytest.raises(ValueError, match="k"):
            tikmix_ext.projection(1, 0, 0)

    def test_seed_must_be_non_negative(self):
        with pytest.raises(ValueError, match="seed"):
            tikmix_ext.projection(1, 8, -1)
        with pytest.raises(ValueError, match="seed"):
            torch.ops.tikmix.projection(1, 8, -1)  # the kernel's own check, without the wrapper


class TestStatistics:
    """R behaves as a Rademacher JL projection: balanced signs, near-orthogonal columns, norms and inner products
    preserved in expectation with the theoretical spread, relative error shrinking like 1/√k."""

    def test_sign_balance_and_lags(self):
        S = torch.sign(tikmix_ext.projection(4096, 256, 0)).double()
        n = S.numel()
        assert abs(S.mean().item()) < 4 / math.sqrt(n)
        for lag in (1, 2, 64):  # row lags (consecutive outputs of one SplitMix64 stream)
            assert abs((S[:-lag] * S[lag:]).mean().item()) < 4 / math.sqrt(S[lag:].numel())
        for lag in (1, 63, 64, 65):  # column lags, across word boundaries
            assert abs((S[:, :-lag] * S[:, lag:]).mean().item()) < 4 / math.sqrt(S[:, lag:].numel())

    def test_columns_nearly_orthogonal(self):
        S = torch.sign(tikmix_ext.projection(4096, 256, 1)).double()
        G = S.t() @ S / S.shape[0]
        assert torch.equal(G.diagonal(), torch.ones(256, dtype=torch.float64))
        off = G[~torch.eye(256, dtype=torch.bool)]
        assert 0.9 < (off.pow(2).mean().sqrt().item() * math.sqrt(S.shape[0])) < 1.1  # E[g²]·D ≈ 1

    def test_jl_norms_and_inner_products(self):
        d, k, seeds = 256, 256, 300
        x = torch.stack(
            [
                torch.ones(d),
                torch.tensor([1.0, -1.0]).repeat(d // 2),
                torch.nn.functional.one_hot(torch.tensor(3), d).float(),
                torch.randn(d, generator=torch.Generator().manual_seed(0)),
                torch.linspace(-1, 2, d),
            ]
        )
        norms2 = x.double().pow(2).sum(1)
        ratios = {16: [], 256: []}
        inner = []
        for seed in range(seeds):
            y = tikmix_ext.sketch(x, k, seed).double()
            ratios[256].append(y.pow(2).sum(1) / norms2)
            y16 = y[:, :16] * math.sqrt(k / 16)  # prefix property: the k=16 sketch up to its scale
            ratios[16].append(y16.pow(2).sum(1) / norms2)
            inner.append((y[0] * y[3]).sum())
        sds = {}
        for kk, values in ratios.items():
            r = torch.stack(values)  # [seeds, rows]
            kurt = x.double().pow(4).sum(1) / norms2.pow(2)
            sd_theory = torch.sqrt((2.0 / kk) * (1 - kurt))  # Var ‖xR‖²/‖x‖² for Rademacher R
            mean_err = (r.mean(0) - 1).abs()
            assert bool((mean_err <= 4 * sd_theory / math.sqrt(seeds) + 1e-12).all()), (kk, mean_err, sd_theory)
            live = sd_theory > 0  # the one-hot row is preserved exactly
            assert torch.allclose(r[:, ~live], torch.ones_like(r[:, ~live]), atol=1e-6)
            ratio_sd = r.std(0)[live] / sd_theory[live]
            assert bool(((ratio_sd > 0.75) & (ratio_sd < 1.3)).all()), (kk, ratio_sd)
            sds[kk] = r.std(0)[live]
        shrink = sds[16] / sds[256]  # 1/√k: expect √(256/16) = 4
        assert bool(((shrink > 3.0) & (shrink < 5.3)).all()), shrink
        ip = torch.stack(inner)
        exact = (x[0].double() * x[3].double()).sum()
        var = (norms2[0] * norms2[3] + exact**2 - 2 * (x[0].double() ** 2 * x[3].double() ** 2).sum()) / k
        assert abs(ip.mean() - exact) < 4 * math.sqrt(var / seeds)

    def test_sketch_ref_agrees_with_projection_ref(self):
        # The reference sketch is x · projection_ref: one definition of R in Python.
        x = torch.randn(3, 40, dtype=torch.float64)
        torch.testing.assert_close(sketch_ref(x, 70, 2, 9), x @ projection_ref(40, 70, 2, 9), rtol=0, atol=0)

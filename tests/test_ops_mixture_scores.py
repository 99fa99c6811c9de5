"""mixture_scores: bit-exact against the float64 reference of the documented contract (counts, draw hash, order),
largest-remainder counts, statistics, determinism, opcheck, torch.compile, bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_ops_common import DEVICES, assert_bits_equal, assert_close, compiled, opcheck_samples, require_kernel, with_threads

import tikmix_ext
from tikmix_ext.reference import mixture_counts_ref, mixture_scores_ref, resample_word_ref

DTYPES = [torch.float32, torch.float64]
# (N, n, C, G, draws): N=1, n=1, C=1, G=1, odd sizes, draws < G, a zero-weight empty domain (see _inputs)
SHAPES = [(1, 1, 1, 1, 1), (1, 3, 2, 1, 5), (10, 1, 3, 3, 2), (61, 5, 4, 5, 37), (200, 2, 3, 7, 100)]


def _inputs(n, m, c, g, dtype, seed=0, id_dtype=torch.int64, device="cpu"):
    """Random rows; ids cover every domain but the last when g > 2, whose weight is then 0 in every candidate."""
    gen = torch.Generator().manual_seed(seed)
    per_sample = torch.randn(n, m, generator=gen, dtype=torch.float64).to(dtype)
    used = g - 1 if g > 2 else g
    ids = (torch.arange(n) % used)[torch.randperm(n, generator=gen)] if n >= used else torch.zeros(n, dtype=torch.int64)
    cand = torch.rand(c, g, generator=gen, dtype=torch.float64)
    if g > 2:
        cand[:, -1] = 0.0
    if n < used:  # too few rows for every domain: give weight to domain 0 only
        cand = torch.zeros(c, g, dtype=torch.float64)
        cand[:, 0] = 1.0
    return per_sample.to(device), ids.to(id_dtype).to(device), cand.to(device)


def sample_inputs(device, requires_grad=False):
    """(per_sample, ids, candidates, draws, seed); no autograd formula (labels for a surrogate)."""
    out = []
    for shape, dtype, seed in [((20, 3, 4, 3, 17), torch.float64, 0), ((9, 1, 2, 2, 5), torch.float32, 12)]:
        ps, ids, cand = _inputs(*shape[:4], dtype, device=device)
        out.append((ps, ids, cand.to(dtype), shape[4], seed))
    return out


class TestMixtureScores:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("cand_dtype", DTYPES)
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("shape", SHAPES)
    def test_bit_exact_with_reference(self, device, dtype, cand_dtype, shape):
        """The reference follows the contract's order in float64, so the kernel must match it bit for bit."""
        require_kernel("mixture_scores", device)
        n, m, c, g, draws = shape
        ps, ids, cand = _inputs(n, m, c, g, dtype, device=device)
        cand = cand.to(cand_dtype)
        out = tikmix_ext.mixture_scores(ps, ids, cand, draws, 2024)
        assert out.shape == (c, m) and out.dtype == dtype and out.device == ps.device
        expected = mixture_scores_ref(ps.cpu(), ids.cpu(), cand.cpu(), draws, 2024).to(dtype)
        assert_bits_equal(out.cpu(), expected, name="mixture_scores")

    @pytest.mark.parametrize("device", DEVICES)
    def test_counts_are_largest_remainder(self, device):
        """With per_sample = one-hot domain indicators, score[c, j] = count_j / draws exposes the counts."""
        require_kernel("mixture_scores", device)
        g, draws = 6, 64  # power of two: count/draws is exact
        ids = torch.arange(30) % g
        ps = torch.nn.functional.one_hot(ids, g).to(torch.float64)
        cand = torch.tensor(
            [[1, 1, 1, 0, 0, 0], [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.03125], [3, 1, 0, 0, 2, 7], [1e-9, 1, 1, 1, 1, 1e-300]],
            dtype=torch.float64,
        )
        out = tikmix_ext.mixture_scores(ps.to(device), ids.to(device), cand.to(device), draws, 3).cpu()
        counts = (out * draws).round().long()
        assert torch.equal(out * draws, counts.double())
        for c in range(cand.shape[0]):
            assert counts[c].tolist() == mixture_counts_ref(cand[c].tolist(), draws)
        assert counts[0].tolist() == [22, 21, 21, 0, 0, 0]  # 21.33… each: the unit goes to the lowest index

    def test_mean_matches_expectation(self):
        """Resampled score ≈ Σ_j w_j · mean_j (per_sample constant per domain plus noise)."""
        g, n = 4, 400
        ids = torch.arange(n) % g
        means = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
        ps = (means[ids] + 0.1 * torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).unsqueeze(1)
        cand = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1, 0, 0, 0]], dtype=torch.float64)
        out = tikmix_ext.mixture_scores(ps, ids, cand, 20000, 0)
        expected = (cand / cand.sum(1, keepdim=True)) @ means
        assert_close(out[:, 0], expected, atol=0.01, rtol=0, name="resampled mean")

    def test_deterministic_seed_and_threads(self):
        ps, ids, cand = _inputs(500, 16, 64, 6, torch.float32, seed=5)
        one = with_threads(1, lambda: tikmix_ext.mixture_scores(ps, ids, cand, 300, 9))
        two = with_threads(2, lambda: tikmix_ext.mixture_scores(ps, ids, cand, 300, 9))
        assert_bits_equal(two, one, name="2 threads vs 1")
        assert_bits_equal(tikmix_ext.mixture_scores(ps, ids, cand, 300, 9), one, name="rerun")
        assert not torch.equal(tikmix_ext.mixture_scores(ps, ids, cand, 300, 10), one)  # the seed matters

    def test_candidate_scaling_by_power_of_two_changes_nothing(self):
        ps, ids, cand = _inputs(50, 3, 5, 4, torch.float64, seed=1)
        assert_bits_equal(
            tikmix_ext.mixture_scores(ps, ids, cand * 8.0, 33, 4), tikmix_ext.mixture_scores(ps, ids, cand, 33, 4)
        )

    def test_candidate_row_independent_of_other_rows(self):
        """Row c draws with (seed, c, j, t) only: the same weights at the same row index give the same score."""
        ps, ids, cand = _inputs(50, 3, 5, 4, torch.float64, seed=1)
        full = tikmix_ext.mixture_scores(ps, ids, cand, 33, 4)
        assert_bits_equal(tikmix_ext.mixture_scores(ps, ids, cand[:3], 33, 4), full[:3])

    def test_non_contiguous_and_int32_ids(self):
        ps, ids, cand = _inputs(40, 6, 3, 3, torch.float32, seed=2)
        ps_nc, cand_nc = ps.t().contiguous().t()[:, ::2], cand.t().contiguous().t()
        out = tikmix_ext.mixture_scores(ps_nc, ids.to(torch.int32), cand_nc, 21, 1)
        assert_bits_equal(out, mixture_scores_ref(ps_nc, ids, cand_nc, 21, 1).float())

    def test_numpy_in_numpy_out(self):
        ps, ids, cand = _inputs(20, 2, 3, 3, torch.float64)
        out = tikmix_ext.mixture_scores(ps.numpy(), ids.numpy(), cand.numpy(), 10, 0)
        assert isinstance(out, np.ndarray) and out.shape == (3, 2)
        assert np.array_equal(out, mixture_scores_ref(ps, ids, cand, 10, 0).numpy())

    @pytest.mark.parametrize("device", DEVICES)
    def test_opcheck(self, device):
        # Inputs never require grad: no gradient formula (the scores are labels for a surrogate model).
        opcheck_samples("mixture_scores", device, sample_inputs)

    @pytest.mark.parametrize("device", DEVICES)
    def test_compile_fullgraph(self, device):
        require_kernel("mixture_scores", device)
        ps, ids, cand = _inputs(30, 4, 5, 2, torch.float32, device=device)  # every domain has rows
        fn = lambda p, i, c: tikmix_ext.mixture_scores(p * 2.0, i, c.softmax(1), 16, 7).mean(1)  # noqa: E731
        assert_close(compiled(fn, device)(ps, ids, cand), fn(ps, ids, cand), atol=1e-6, rtol=1e-6)

    @pytest.mark.parametrize(
        "change, exc, match",
        [
            (dict(candidates=torch.tensor([[1.0, -0.5, 1.0]])), ValueError, r"candidates must be >= 0, got -0.5 at candidates\[0, 1\]"),
            (dict(candidates=torch.tensor([[1.0, 1.0, 1.0], [1.0, float("nan"), 0.0]])), ValueError, r"candidates must be finite, got nan at candidates\[1, 1\]"),
            (dict(candidates=torch.tensor([[1.0, float("inf"), 0.0]])), ValueError, r"candidates must be finite"),
            (dict(candidates=torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])), ValueError, r"finite sum > 0, row 1"),
            (dict(candidates=torch.tensor([[1e308, 1e308, 1.0]], dtype=torch.float64)), ValueError, r"finite sum > 0, row 0"),
            (dict(candidates=torch.tensor([[1.0, 1.0, 0.0, 0.5]])), ValueError, r"candidates\[0, 3\] > 0 gives domain 3 draws, but ids has no rows"),
            (dict(candidates=torch.ones(1, 2)), ValueError, r"ids\[2\] = 2 is out of range; ids must be in \[0, G = candidates.size\(1\)\)"),
            (dict(candidates=torch.ones(3)), ValueError, r"candidates must be 2-D \[C, G\]"),
            (dict(candidates=torch.ones(1, 0)), ValueError, r"candidates must have G in \[1, 2\^20\)"),
            (dict(candidates=torch.ones(1, 3, dtype=torch.int64)), TypeError, "candidates must be float32 or float64"),
            (dict(per_sample=torch.ones(4, 2, dtype=torch.bfloat16)), TypeError, "per_sample must be float32 or float64"),
            (dict(per_sample=torch.ones(4)), ValueError, r"per_sample must be 2-D \[N, n\]"),
            (dict(per_sample=torch.tensor([[1.0], [2.0], [float("nan")], [0.0]])), ValueError, r"per_sample must be finite, got nan at per_sample\[2, 0\]"),
            (dict(ids=torch.tensor([0, 1, 2])), ValueError, r"ids must have one entry per row of per_sample \(N=4\)"),
            (dict(ids=torch.tensor([0, 1, -1, 0])), ValueError, r"ids\[2\] = -1 is out of range"),
            (dict(ids=torch.zeros(4, dtype=torch.int16)), TypeError, "ids must be int64 or int32"),
            (dict(draws=0), ValueError, r"draws must be in \[1, 2\^31\), got 0"),
            (dict(draws=-5), ValueError, r"draws must be in \[1, 2\^31\), got -5"),
            (dict(draws=2**31), ValueError, r"draws must be in \[1, 2\^31\)"),
            (dict(seed=-1), ValueError, "seed must be a non-negative integer"),
            (dict(seed=2**64), ValueError, "seed must fit in int64"),
            (dict(draws=10.5), TypeError, "draws must be an int, got float"),
            (dict(candidates=torch.ones(1, 3, device="meta")), ValueError, "one device"),
        ],
    )
    def test_bad_inputs(self, change, exc, match):
        args = dict(per_sample=torch.ones(4, 2), ids=torch.tensor([0, 1, 2, 0]), candidates=torch.ones(2, 3), draws=8, seed=0)
        args.update(change)
        with pytest.raises(exc, match=match):
            tikmix_ext.mixture_scores(**args)


@pytest.mark.parametrize("trial", range(3))
def test_reference_counts_properties(trial):
    """The reference counts sum to draws, give zero weight nothing, and stay within 1 of w·draws/Σw."""
    rng = np.random.default_rng(trial)
    for _ in range(200):
        g = int(rng.integers(1, 12))
        w = rng.random(g) * (rng.random(g) > 0.3)
        if w.sum() == 0:
            w[0] = 1.0
        draws = int(rng.integers(1, 1000))
        counts = mixture_counts_ref(list(w), draws)
        assert sum(counts) == draws
        assert all(cnt == 0 for cnt, v in zip(counts, w) if v == 0)
        assert all(abs(cnt - v / w.sum() * draws) < 1 + 1e-9 for cnt, v in zip(counts, w))


# resample_word(rng_key(seed), c, j, t) computed by csrc/include/tikmix/rng.h compiled with g++ (pinned goldens).
RESAMPLE_GOLDEN = [
    (0, 0, 0, 0, 0x33FE8BD4F9C57863),
    (7, 3, 2, 1, 0xFFD9A54EA1489BD6),
    (2**40, 1000, 17, 2**33, 0x8CD0E59277815411),
    (42, 65535, 1023, 999999, 0x4381D1A644432E9D),
]


@pytest.mark.parametrize("seed, c, j, t, word", RESAMPLE_GOLDEN)
def test_reference_draw_hash_golden(seed, c, j, t, word):
    """The Python draw hash agrees with the C++ header on pinned values, so the contract cannot drift silently."""
    assert resample_word_ref(seed, c, j, t) == word


def test_draw_hash_is_uniform_enough():
    words = [resample_word_ref(1, 0, 0, t) % 10 for t in range(5000)]
    counts = np.bincount(words, minlength=10)
    assert counts.min() > 400 and counts.max() < 600  # expected 500 each, sd ≈ 21

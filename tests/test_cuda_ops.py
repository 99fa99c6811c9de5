"""CUDA kernels of every tikmix op against the CPU kernels (and float64 references).

All tests are marked ``cuda``: they skip without a GPU or without CUDA kernels in the build, and fail instead with
``TIKMIX_REQUIRE_CUDA=1`` (benchmarks/gpu_check.sh sets it). What "equal" means follows the contracts:
- R is bit-identical on CPU and CUDA: one-hot x gives y = ±s_k exactly (compared with ``projection``);
- small-integer inputs make every sum exact, so CUDA == CPU bit for bit (sketch with k a power of 4, so that
  s_k is a power of 2; sketch_kron with k_in·k_out a power of 4);
- float inputs agree to fp32 rounding (tolerance from the float64 reference);
- segment_sum/mean and mixture_scores are bit-identical by contract (same summation order);
- every CUDA result is the same bits run to run.
"""
from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.cuda

DEV = "cuda"
OPS = torch.ops.tikmix


@pytest.fixture(scope="module", autouse=True)
def _load_ops():
    import tikmix_ext  # noqa: F401  (registers torch.ops.tikmix and the fakes)

    # Full-precision fp32 GEMMs for group_influence/sketch_kron (cuBLAS); restore afterwards.
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_ints(shape, seed: int, lo: int = -4, hi: int = 4) -> torch.Tensor:
    return torch.randint(lo, hi + 1, shape, generator=_gen(seed)).to(torch.float32)


def assert_bits_equal(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    actual, expected = actual.cpu(), expected.cpu()
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    same = (actual == expected) | (torch.isnan(actual) & torch.isnan(expected))
    if not bool(same.all()):
        bad = (~same).nonzero()[0].tolist()
        raise AssertionError(
            f"{what}: {(~same).sum().item()} entries differ; first at {bad}: "
            f"{actual[tuple(bad)].item()!r} vs {expected[tuple(bad)].item()!r}"
        )


# ---- sketch: R bit-identical ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [1, 37, 64, 65, 1000])
@pytest.mark.parametrize("offset", [0, 2**40 - 70, 2**44 - 150])
def test_sketch_onehot_reproduces_R_bitwise(dtype, k, offset):
    d = 150  # N = d = 150: three sample groups of ≤ 64, a tail tile
    x = torch.eye(d, dtype=dtype)
    got = OPS.sketch(x.to(DEV), k, 5, offset)
    assert_bits_equal(got, OPS.projection(d, k, 5, offset), f"one-hot sketch vs projection (k={k})")
    assert_bits_equal(got, OPS.sketch(x, k, 5, offset), "one-hot sketch CUDA vs CPU")


def test_sketch_onehot_scaled_columns_and_seeds():
    x = torch.zeros(3, 500)
    x[0, 0] = 1.0
    x[1, 499] = 1.0
    x[2, 250] = 1.0
    for seed in (0, 1, 2**63 - 1):
        R = OPS.projection(500, 300, seed, 12345)
        got = OPS.sketch(x.to(DEV), 300, seed, 12345)
        assert_bits_equal(got, R[[0, 499, 250]], f"seed {seed}")


# ---- sketch: exact small-integer inputs, all paths ----------------------------------------------------------
SHAPES = [
    (1, 1, 1),
    (1, 63, 64),
    (7, 1000, 16),
    (64, 4096, 256),
    (65, 5000, 64),       # two sample groups
    (200, 3000, 1024),    # four groups, 16 hash blocks → 2 column CTAs of 8 warps
    (16, 70_000, 64),     # several d-splits (partial sums + reduce kernel)
    (3, 200_000, 4),      # many d-splits, k < 64
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,d,k", SHAPES)
def test_sketch_small_int_bit_exact(dtype, n, d, k):
    # k is a power of 4 (s_k a power of 2) and |Σ| < 2^24: CPU and CUDA sums are exact.
    x = small_ints((n, d), seed=n * 31 + d).to(dtype)
    offset = 2**33 + 17
    assert_bits_equal(OPS.sketch(x.to(DEV), k, 9, offset), OPS.sketch(x, k, 9, offset), f"{dtype} {n}x{d} k={k}")


def test_sketch_fp32_split_is_exact_for_24_bit_integers():
    # Integers up to 2^20 need all 24 mantissa bits of fp32: only an exact hi/mid/lo split keeps them.
    x = small_ints((9, 8), seed=3, lo=-(2**20), hi=2**20)
    assert_bits_equal(OPS.sketch(x.to(DEV), 16, 1), OPS.sketch(x, 16, 1))


def test_sketch_fp16_uses_all_11_bits():
    x = small_ints((9, 16), seed=4, lo=-2000, hi=2000).to(torch.float16)
    assert_bits_equal(OPS.sketch(x.to(DEV), 16, 1), OPS.sketch(x, 16, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sketch_scale_small_int_bit_exact(dtype):
    x = small_ints((33, 3000), seed=5).to(dtype)
    scale = small_ints((3000,), seed=6, lo=-64, hi=64)
    assert_bits_equal(OPS.sketch(x.to(DEV), 64, 2, 0, scale.to(DEV)), OPS.sketch(x, 64, 2, 0, scale))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sketch_strided_and_unaligned_inputs_bit_exact(dtype):
    base_cpu = small_ints((40, 1003), seed=7).to(dtype)
    base_dev = base_cpu.to(DEV)
    views = {
        "contiguous": lambda b: b[:, :1000].contiguous(),
        "row stride 1003 (rows not 16-byte aligned)": lambda b: b[:, :1000],
        "base address off by one element": lambda b: b[:, 1:1001],
        "column stride 2": lambda b: b[:, ::2],
        "transposed view": lambda b: b[:, :40].t(),
        "one row of a wider matrix": lambda b: b[3:4, 5:900],
    }
    for what, view in views.items():
        xd = view(base_dev)
        assert xd.device.type == "cuda"
        assert_bits_equal(OPS.sketch(xd, 16, 3, 11), OPS.sketch(view(base_cpu).contiguous(), 16, 3, 11), what)


def test_sketch_more_than_65535_sample_groups():
    # at most 65535 groups of 64 samples per launch: this needs two launches of the kernel
    x = small_ints((64 * 65535 + 100, 5), seed=12)
    assert_bits_equal(OPS.sketch(x.to(DEV), 4, 1, 3), OPS.sketch(x, 4, 1, 3), "N > 64·65535")


def test_sketch_edge_shapes():
    x = torch.randn(5, 0)
    assert_bits_equal(OPS.sketch(x.to(DEV), 7, 0), torch.zeros(5, 7), "d = 0")
    x = torch.randn(0, 10)
    assert OPS.sketch(x.to(DEV), 7, 0).shape == (0, 7)
    x = small_ints((1, 1), seed=1)
    assert_bits_equal(OPS.sketch(x.to(DEV), 1, 0), OPS.sketch(x, 1, 0), "1x1 k=1")


# ---- sketch: general floats to fp32 rounding --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,d,k", [(64, 20_000, 200), (5, 100_000, 64), (130, 3000, 129)])
def test_sketch_general_floats_match_float64(dtype, n, d, k):
    x = torch.randn(n, d, generator=_gen(n + d + k)).to(dtype)
    scale = torch.rand(d, generator=_gen(1)) + 0.5
    R = OPS.projection(d, k, 4, 77).double()
    for sc in (None, scale):
        xs = x.double() if sc is None else x.float().mul(sc).double()  # the fp32 product x·scale, as the kernel
        ref = xs @ R
        got = OPS.sketch(x.to(DEV), k, 4, 77, None if sc is None else sc.to(DEV)).cpu().double()
        tol = 2.0**-20 * math.sqrt(d) * xs.norm(dim=1, keepdim=True) / math.sqrt(k) * 4 + 1e-30
        assert bool(((got - ref).abs() <= tol).all()), f"max err {(got - ref).abs().max().item()}"
        cpu = OPS.sketch(x, k, 4, 77, sc).double()
        assert bool(((got - cpu).abs() <= 2 * tol).all())


def test_sketch_nonfinite_propagates():
    x = torch.zeros(2, 100)
    x[0, 3] = float("inf")
    x[1, 5] = float("nan")
    got = OPS.sketch(x.to(DEV), 8, 0).cpu()
    assert bool(torch.isinf(got[0]).all()) and bool(torch.isnan(got[1]).all())


def test_sketch_deterministic_run_to_run():
    x = torch.randn(70, 150_000, generator=_gen(2)).to(DEV)
    a = OPS.sketch(x, 512, 1, 0)
    b = OPS.sketch(x, 512, 1, 0)
    assert_bits_equal(a, b, "two runs")
    xb = x.to(torch.bfloat16)
    assert_bits_equal(OPS.sketch(xb, 512, 1, 0), OPS.sketch(xb, 512, 1, 0), "two runs bf16")


# ---- sketch_accumulate_ -------------------------------------------------------------------------------------
def test_sketch_accumulate_segments_equal_whole_bit_exact():
    x = small_ints((20, 9000), seed=9)
    whole = OPS.sketch(x.to(DEV), 256, 8, 1000)
    out = torch.zeros(20, 256, device=DEV)
    for start, stop in ((0, 1), (1, 4097), (4097, 9000)):
        OPS.sketch_accumulate_(out, x[:, start:stop].to(DEV), 8, 1000 + start)
    assert_bits_equal(out, whole, "segments vs whole")


def test_sketch_accumulate_matches_cpu():
    x = torch.randn(9, 5000, generator=_gen(3))
    out0 = torch.randn(9, 100, generator=_gen(4))
    cpu = out0.clone()
    OPS.sketch_accumulate_(cpu, x, 2, 5)
    gpu = out0.to(DEV)
    OPS.sketch_accumulate_(gpu, x.to(DEV), 2, 5)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


# ---- sketch: errors, compile, opcheck --------------------------------------------------------------------------
def test_sketch_mixed_devices_raise():
    x = torch.randn(3, 10, device=DEV)
    with pytest.raises(ValueError, match="scale"):
        OPS.sketch(x, 4, 0, 0, torch.ones(10))
    with pytest.raises(ValueError, match="out"):
        OPS.sketch_accumulate_(torch.zeros(3, 4), x, 0)
    with pytest.raises(ValueError, match="2\\^44"):
        OPS.sketch(x, 4, 0, 2**44 - 5)


def test_sketch_torch_compile():
    import tikmix_ext

    def f(x, s):
        return tikmix_ext.sketch(x * 2, 128, 3, 0, s) + 1

    x = torch.randn(16, 3000, device=DEV)
    s = torch.rand(3000, device=DEV)
    compiled = torch.compile(f, fullgraph=True)
    assert_bits_equal(compiled(x, s), f(x, s), "compiled vs eager")


def test_opcheck_cuda():
    x = torch.randn(5, 300, device=DEV)
    torch.library.opcheck(OPS.sketch.default, (x, 64, 1, 3, None))
    torch.library.opcheck(OPS.sketch.default, (x.to(torch.bfloat16), 64, 1, 3, torch.rand(300, device=DEV)))
    torch.library.opcheck(OPS.sketch_accumulate_.default, (torch.zeros(5, 64, device=DEV), x, 1, 3, None))
    ids = torch.tensor([0, 2, 2, 1, 0], device=DEV)
    y = torch.randn(5, 7, device=DEV)
    torch.library.opcheck(OPS.segment_sum.default, (y, ids, 3))
    torch.library.opcheck(OPS.segment_mean.default, (y, ids, 3))
    torch.library.opcheck(OPS.group_influence.default, (y, ids, 3, torch.randn(2, 7, device=DEV), None))
    cands = torch.rand(4, 3, device=DEV)
    torch.library.opcheck(OPS.mixture_scores.default, (y, ids, cands, 16, 0))
    a = torch.randn(2, 3, 8, device=DEV)
    g = torch.randn(2, 3, 5, device=DEV)
    torch.library.opcheck(OPS.sketch_kron.default, (a, g, 4, 2, 0, 1))


# ---- sketch_kron --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sketch_kron_small_int_bit_exact(dtype):
    a = small_ints((3, 5, 70), seed=10).to(dtype)
    g = small_ints((3, 5, 33), seed=11).to(dtype)
    # k_in·k_out = 64·4 = 256 (a power of 4): the single scale is a power of 2
    assert_bits_equal(OPS.sketch_kron(a.to(DEV), g.to(DEV), 64, 4, 6, 2), OPS.sketch_kron(a, g, 64, 4, 6, 2))


def test_sketch_kron_general_matches_cpu():
    a = torch.randn(4, 17, 300, generator=_gen(5))
    g = torch.randn(4, 17, 130, generator=_gen(6))
    got = OPS.sketch_kron(a.to(DEV), g.to(DEV), 48, 20, 3, 7).cpu()
    torch.testing.assert_close(got, OPS.sketch_kron(a, g, 48, 20, 3, 7), rtol=1e-4, atol=1e-4)
    assert_bits_equal(OPS.sketch_kron(a.to(DEV), g.to(DEV), 48, 20, 3, 7), got, "run to run")


# ---- segment_sum / segment_mean: bit-identical ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,k,groups", [(1, 1, 1), (10, 3, 5), (9000, 33, 7), (20_000, 130, 300)])
def test_segment_bit_identical(dtype, n, k, groups):
    x = torch.randn(n, k, generator=_gen(n + k), dtype=dtype)
    ids = torch.randint(0, groups, (n,), generator=_gen(groups))
    ids[ids == groups - 1] = 0  # leave the last group empty
    for op in (OPS.segment_sum, OPS.segment_mean):
        for id_t in (ids, ids.to(torch.int32)):
            assert_bits_equal(op(x.to(DEV), id_t.to(DEV), groups), op(x, id_t, groups), f"{op} n={n}")
    xt = torch.randn(k, n, generator=_gen(1), dtype=dtype)
    # x.t() views: column stride n on both devices
    assert_bits_equal(OPS.segment_sum(xt.to(DEV).t(), ids.to(DEV), groups), OPS.segment_sum(xt.t(), ids, groups),
                      "strided")


def test_segment_bad_ids_raise():
    x = torch.randn(4, 2, device=DEV)
    with pytest.raises(ValueError, match=r"ids\[2\] = 5"):
        OPS.segment_sum(x, torch.tensor([0, 1, 5, 0], device=DEV), 3)
    with pytest.raises(ValueError, match=r"ids\[0\] = -1"):
        OPS.segment_mean(x, torch.tensor([-1, 1, 0, 0], device=DEV), 3)


def test_segment_sum_deterministic_large():
    x = torch.randn(50_000, 256, device=DEV)
    ids = torch.randint(0, 10, (50_000,), device=DEV)
    assert_bits_equal(OPS.segment_sum(x, ids, 10), OPS.segment_sum(x, ids, 10), "run to run")


# ---- group_influence --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_precond", [False, True])
def test_group_influence_matches_cpu(dtype, with_precond):
    train = torch.randn(5000, 64, generator=_gen(7), dtype=dtype)
    target = torch.randn(3, 64, generator=_gen(8), dtype=dtype)
    ids = torch.randint(0, 6, (5000,), generator=_gen(9))
    p = torch.randn(64, 64, generator=_gen(10), dtype=dtype) if with_precond else None
    S, per = OPS.group_influence(train.to(DEV), ids.to(DEV), 6, target.to(DEV), None if p is None else p.to(DEV))
    S_c, per_c = OPS.group_influence(train, ids, 6, target, p)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(per.cpu(), per_c, rtol=tol, atol=tol)
    torch.testing.assert_close(S.cpu(), S_c, rtol=tol, atol=tol * 100)
    # S is exactly the contract-order segment sum of this device's per_sample
    assert_bits_equal(S, OPS.segment_sum(per, ids.to(DEV), 6).t().contiguous(), "S = segment_sum(per_sample)")


def test_group_influence_nonfinite_raises():
    train = torch.randn(10, 4, device=DEV)
    train[3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"train must be finite.*train\[3, 2\]"):
        OPS.group_influence(train, torch.zeros(10, dtype=torch.long, device=DEV), 1, torch.randn(2, 4, device=DEV))


# ---- mixture_scores: bit-identical --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixture_scores_bit_identical(dtype):
    per = torch.randn(3000, 5, generator=_gen(11), dtype=dtype)
    ids = torch.randint(0, 4, (3000,), generator=_gen(12))
    cands = torch.rand(50, 4, generator=_gen(13), dtype=dtype)
    cands[3, 1] = 0.0
    for draws in (1, 7, 1000):
        got = OPS.mixture_scores(per.to(DEV), ids.to(DEV), cands.to(DEV), draws, 42)
        assert_bits_equal(got, OPS.mixture_scores(per, ids, cands, draws, 42), f"draws={draws}")


def test_mixture_scores_errors_match_cpu():
    per = torch.randn(6, 2)
    ids = torch.tensor([0, 0, 1, 1, 0, 1])
    cands = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    with pytest.raises(ValueError) as cpu_err:
        OPS.mixture_scores(per, ids, cands, 10, 0)
    with pytest.raises(ValueError) as gpu_err:
        OPS.mixture_scores(per.to(DEV), ids.to(DEV), cands.to(DEV), 10, 0)
    assert str(gpu_err.value).splitlines()[0] == str(cpu_err.value).splitlines()[0]


# ---- device guard -------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    x = small_ints((8, 500), seed=1)
    got = OPS.sketch(x.to("cuda:1"), 64, 0)
    assert got.device == torch.device("cuda:1")
    assert_bits_equal(got, OPS.sketch(x, 64, 0), "cuda:1")

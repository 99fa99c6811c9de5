"""segment_sum / segment_mean: float64 reference, the bit-exact chunk-order contract, determinism, autograd,
opcheck, torch.compile, and bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_ops_common import (
    DEVICES,
    assert_bits_equal,
    assert_close,
    compiled,
    require_kernel,
    run_opcheck,
    with_threads,
)

import tikmix_ext
from tikmix_ext.reference import segment_mean_ref, segment_sum_ref

DTYPES = [torch.float32, torch.float64]
ID_DTYPES = [torch.int64, torch.int32]
# (N, k, G): N=1, k=1, odd sizes, empty groups (G > distinct ids), > 1 chunk of 4096 rows, > 1 strip of 256 columns
SHAPES = [(1, 1, 1), (1, 5, 3), (7, 1, 4), (97, 5, 11), (769, 33, 3), (5125, 3, 6), (300, 513, 2)]
OPS = {"segment_sum": (tikmix_ext.segment_sum, segment_sum_ref), "segment_mean": (tikmix_ext.segment_mean, segment_mean_ref)}
# Absolute tolerance per unit of Σ|x| (or its mean): a summation error bound, independent of cancellation.
ABS_SUM_TOL = {torch.float32: 5e-7, torch.float64: 1e-15}


def _inputs(n, k, g, dtype, id_dtype=torch.int64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=gen, dtype=torch.float64).to(dtype)
    ids = torch.randint(0, max(1, g - 1), (n,), generator=gen).to(id_dtype)  # group g-1 stays empty when g > 1
    return x.to(device), ids.to(device)


def contract_segment_ref(x: np.ndarray, ids: np.ndarray, num_groups: int, mean: bool) -> np.ndarray:
    """The summation order of reduce_kernels.h emulated in numpy in x's dtype: per 4096-row chunk, rows added in
    order (np.add.at is sequential), then chunk partials added in chunk order; mean divides by the count."""
    total = np.zeros((num_groups, x.shape[1]), dtype=x.dtype)
    for start in range(0, x.shape[0], 4096):
        part = np.zeros_like(total)
        np.add.at(part, ids[start : start + 4096], x[start : start + 4096])
        total = total + part
    if mean:
        counts = np.bincount(ids, minlength=num_groups).astype(x.dtype)
        total = np.where(counts[:, None] > 0, total / np.maximum(counts, 1)[:, None], 0).astype(x.dtype)
    return total


def sample_inputs(device, requires_grad):
    """(x, ids, num_groups) mixing sizes, dtypes and id dtypes."""
    out = []
    for (n, k, g), dtype, id_dtype in [((5, 3, 4), torch.float64, torch.int64), ((33, 1, 2), torch.float32, torch.int32)]:
        x, ids = _inputs(n, k, g, dtype, id_dtype, device=device)
        out.append((x.requires_grad_(requires_grad), ids, g))
    return out


@pytest.mark.parametrize("op", list(OPS))
class TestSegment:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("shape", SHAPES)
    def test_matches_float64_reference(self, op, device, dtype, shape):
        require_kernel(op, device)
        fn, ref = OPS[op]
        x, ids = _inputs(*shape, dtype, device=device)
        out = fn(x, ids, shape[2])
        assert out.dtype == dtype and out.device == x.device
        scale = ref(x.cpu().abs(), ids.cpu(), shape[2]).max().item()
        assert_close(out, ref(x.cpu(), ids.cpu(), shape[2]), atol=ABS_SUM_TOL[dtype] * scale, rtol=0, name=op)

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_contract_order_bit_exact(self, op, device, dtype):
        """Same bits as the documented chunk order (CPU and CUDA), on values where the order shows."""
        require_kernel(op, device)
        rng = np.random.default_rng(1)
        n, k, g = 10000, 7, 5
        x = (rng.standard_normal((n, k)) * 10.0 ** rng.integers(-4, 5, (n, k))).astype(str(dtype).split(".")[1])
        ids = rng.integers(0, g, n)
        expected = contract_segment_ref(x, ids, g, mean=op == "segment_mean")
        out = OPS[op][0](torch.from_numpy(x).to(device), torch.from_numpy(ids).to(device), g)
        assert_bits_equal(out.cpu(), torch.from_numpy(expected), name=op)

    def test_deterministic_across_threads_and_runs(self, op):
        fn = OPS[op][0]
        x, ids = _inputs(20000, 300, 5, torch.float32, seed=3)
        one = with_threads(1, lambda: fn(x, ids, 5))
        two = with_threads(2, lambda: fn(x, ids, 5))
        assert_bits_equal(two, one, name=f"{op} 2 threads vs 1")
        assert_bits_equal(fn(x, ids, 5), two, name=f"{op} rerun")

    @pytest.mark.parametrize("id_dtype", ID_DTYPES)
    def test_empty_groups_give_zeros_and_int32_ids(self, op, id_dtype):
        fn = OPS[op][0]
        x = torch.randn(6, 4, dtype=torch.float64)
        ids = torch.tensor([0, 2, 2, 0, 5, 2], dtype=id_dtype)
        out = fn(x, ids, 7)
        for j in (1, 3, 4, 6):
            assert torch.equal(out[j], torch.zeros(4, dtype=torch.float64))
        assert_close(out, OPS[op][1](x, ids.long(), 7), atol=1e-12, rtol=1e-12, name=op)

    def test_no_rows(self, op):
        out = OPS[op][0](torch.empty(0, 3), torch.empty(0, dtype=torch.int64), 2)
        assert torch.equal(out, torch.zeros(2, 3))

    def test_non_contiguous(self, op):
        fn, ref = OPS[op]
        base = torch.randn(40, 18, dtype=torch.float64)
        ids_base = torch.randint(0, 3, (80,))
        for x in (base[::2, 1:7], base.t()[:, :40:2], base[:, ::3][:20]):
            ids = ids_base[: 2 * x.shape[0] : 2]
            assert_close(fn(x, ids, 3), ref(x, ids, 3), atol=1e-12, rtol=1e-12, name=f"{op} strides {x.stride()}")
            assert_bits_equal(fn(x, ids, 3), fn(x.contiguous(), ids.contiguous(), 3), name=f"{op} strided vs contiguous")

    def test_numpy_in_numpy_out(self, op):
        x = np.random.default_rng(0).standard_normal((9, 4))
        ids = np.array([0, 1, 1, 0, 2, 2, 2, 0, 1])
        out = OPS[op][0](x, ids, np.int64(3))  # numpy integers are ints too
        assert isinstance(out, np.ndarray) and out.shape == (3, 4) and out.dtype == np.float64
        assert_close(out, OPS[op][1](torch.from_numpy(x), torch.from_numpy(ids), 3), atol=1e-12, rtol=1e-12)

    def test_gradcheck(self, op):
        x = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
        ids = torch.tensor([0, 2, 2, 1, 0, 2, 4, 4, 0, 2, 1])  # group 3 empty
        fn = getattr(torch.ops.tikmix, op)
        assert torch.autograd.gradcheck(lambda t: fn(t, ids, 5), (x,))
        assert torch.autograd.gradgradcheck(lambda t: fn(t, ids, 5), (x,))

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("requires_grad", [False, True])
    def test_opcheck(self, op, device, requires_grad):
        require_kernel(op, device)
        for args in sample_inputs(device, requires_grad):
            run_opcheck(getattr(torch.ops.tikmix, op).default, args)

    @pytest.mark.parametrize("device", DEVICES)
    def test_compile_fullgraph(self, op, device):
        require_kernel(op, device)
        fn = OPS[op][0]
        x, ids = _inputs(50, 6, 4, torch.float32, device=device)
        x.requires_grad_(True)
        f = compiled(lambda t, i: (fn(t, i, 4) ** 2).sum(), device)
        loss = f(x, ids)
        (grad,) = torch.autograd.grad(loss, x)
        x_eager = x.detach().clone().requires_grad_(True)
        loss_eager = (fn(x_eager, ids, 4) ** 2).sum()
        (grad_eager,) = torch.autograd.grad(loss_eager, x_eager)
        assert_close(loss, loss_eager, atol=1e-5, rtol=1e-5, name="compiled loss")
        assert_close(grad, grad_eager, atol=1e-5, rtol=1e-5, name="compiled grad")

    @pytest.mark.parametrize(
        "change, exc, match",
        [
            (dict(x=torch.ones(4, 2, dtype=torch.int64)), TypeError, "x must be float32 or float64"),
            (dict(x=torch.ones(4, 2, dtype=torch.bfloat16)), TypeError, "x must be float32 or float64"),
            (dict(x=torch.ones(4)), ValueError, r"x must be 2-D \[N, k\]"),
            (dict(ids=torch.zeros(4, dtype=torch.float32)), TypeError, "ids must be int64 or int32"),
            (dict(ids=torch.zeros(4, 1, dtype=torch.int64)), ValueError, r"ids must be 1-D"),
            (dict(ids=torch.zeros(5, dtype=torch.int64)), ValueError, r"ids must have one entry per row of x \(N=4\)"),
            (dict(ids=torch.tensor([0, 1, -1, 0])), ValueError, r"ids\[2\] = -1 is out of range"),
            (dict(ids=torch.tensor([0, 3, 1, 0], dtype=torch.int32)), ValueError, r"ids\[1\] = 3 is out of range.*\[0, 3\)"),
            (dict(num_groups=0), ValueError, r"num_groups must be in \[1, 2\^31\), got 0"),
            (dict(num_groups=-2), ValueError, r"num_groups must be in \[1, 2\^31\), got -2"),
            (dict(ids=torch.zeros(4, dtype=torch.int64, device="meta")), ValueError, "one device"),
            (dict(x=[[1.0, 2.0]]), TypeError, "x must be a torch.Tensor or an array supporting DLPack"),
            (dict(num_groups=3.0), TypeError, "num_groups must be an int, got float"),
            (dict(num_groups=2**64), ValueError, "num_groups must fit in int64"),
        ],
    )
    def test_bad_inputs(self, op, change, exc, match):
        args = dict(x=torch.ones(4, 2), ids=torch.tensor([0, 1, 2, 0]), num_groups=3)
        args.update(change)
        with pytest.raises(exc, match=match):
            OPS[op][0](args["x"], args["ids"], args["num_groups"])


def test_reference_matches_index_add():
    """The loop reference agrees with an independent formulation (index_add_ in float64)."""
    x, ids = _inputs(200, 4, 6, torch.float64)
    expected = torch.zeros(6, 4, dtype=torch.float64).index_add_(0, ids, x)
    assert_close(segment_sum_ref(x, ids, 6), expected, atol=1e-12, rtol=1e-12)


def test_contract_emulation_is_not_plain_sequential():
    """The chunk order is observable: the contract emulation differs from a plain sequential sum on these values,
    so test_contract_order_bit_exact really pins the chunking."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((10000, 7)) * 10.0 ** rng.integers(-4, 5, (10000, 7))).astype(np.float32)
    ids = rng.integers(0, 5, 10000)
    plain = np.zeros((5, 7), dtype=np.float32)
    np.add.at(plain, ids, x)
    assert not np.array_equal(plain, contract_segment_ref(x, ids, 5, mean=False))

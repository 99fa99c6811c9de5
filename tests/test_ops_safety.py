"""No silent wrong result from any op: aliasing, read-only outputs, mixed devices, validation under meta /
FakeTensor / torch.compile (the same checks as the real kernels), autograd misuse, float overflow, huge sizes.

Each test here failed before the behaviour it checks was put in place.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tikmix_ext
from tikmix_ext.reference import group_influence_ref, sketch_kron_ref
from test_ops_common import assert_close

META = torch.device("meta")


def _ids(n: int, g: int = 3) -> torch.Tensor:
    return torch.arange(n) % g


# ---- 1. sketch_accumulate_: x or scale overlapping out ----------------------------------------------------------
class TestAccumulateOverlap:
    def test_x_is_a_view_of_out(self):
        out = torch.zeros(4, 16)
        out[:, :8] = torch.randn(4, 8)
        before = out.clone()
        with pytest.raises(ValueError, match=r"sketch_accumulate_: x overlaps out"):
            tikmix_ext.sketch_accumulate_(out, out[:, :8], 0)
        assert torch.equal(out, before)  # nothing written

    def test_x_is_out(self):
        out = torch.randn(3, 8)
        with pytest.raises(ValueError, match=r"x overlaps out"):
            torch.ops.tikmix.sketch_accumulate_(out, out, 1)

    def test_partial_overlap(self):
        buf = torch.randn(64)
        out = buf[:24].view(3, 8)
        x = buf[20:32].view(3, 4)  # shares 4 elements with out
        with pytest.raises(ValueError, match=r"x overlaps out"):
            tikmix_ext.sketch_accumulate_(out, x, 0)

    def test_scale_overlaps_out(self):
        out = torch.randn(2, 8)
        with pytest.raises(ValueError, match=r"scale overlaps out"):
            tikmix_ext.sketch_accumulate_(out, torch.randn(2, 8), 0, 0, out[0])

    def test_numpy_views(self):
        out = np.zeros((4, 16), np.float32)
        with pytest.raises(ValueError, match=r"x overlaps out"):
            tikmix_ext.sketch_accumulate_(out, out[:, :8], 0)

    def test_disjoint_parts_of_one_buffer_are_fine(self):
        buf = torch.randn(64)
        out, x = buf[:24].view(3, 8), buf[24:36].view(3, 4)
        expected = out.clone() + tikmix_ext.sketch(x.clone(), 8, 5)
        tikmix_ext.sketch_accumulate_(out, x, 5)
        assert_close(out, expected, atol=1e-6, rtol=1e-6)


# ---- 2. read-only numpy out -------------------------------------------------------------------------------------
def test_read_only_numpy_out_raises():
    out = np.zeros((3, 8), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match=r"tikmix: out is a read-only numpy array"):
        tikmix_ext.sketch_accumulate_(out, np.ones((3, 5), np.float32), 0)


def test_read_only_numpy_inputs_still_work():
    x = np.ones((3, 5), np.float32)
    x.flags.writeable = False
    out = np.zeros((3, 8), np.float32)
    tikmix_ext.sketch_accumulate_(out, x, 0)
    np.testing.assert_array_equal(out, tikmix_ext.sketch(np.ones((3, 5), np.float32), 8, 0))


# ---- 3. CPU and meta tensors mixed in one raw op call -----------------------------------------------------------
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: torch.ops.tikmix.segment_sum(torch.randn(4, 2), _ids(4).to(META), 3), r"ids is on meta but x is on cpu"),
        (lambda: torch.ops.tikmix.segment_mean(torch.randn(4, 2).to(META), _ids(4), 3), r"ids is on cpu but x is on meta"),
        (lambda: torch.ops.tikmix.sketch(torch.randn(4, 3), 8, 0, 0, torch.ones(3, device=META)),
         r"scale is on meta but x is on cpu"),
        (lambda: torch.ops.tikmix.group_influence(torch.randn(4, 2), _ids(4), 3, torch.randn(2, 2, device=META)),
         r"target is on meta but train is on cpu"),
        (lambda: torch.ops.tikmix.sketch_accumulate_(torch.zeros(4, 8), torch.randn(4, 3, device=META), 0),
         r"out is on cpu but x is on meta"),
        (lambda: torch.ops.tikmix.sketch_kron(torch.randn(2, 3, 4), torch.randn(2, 3, 5, device=META), 2, 2, 0, 0),
         r"g is on meta but a is on cpu"),
        (lambda: torch.ops.tikmix.mixture_scores(torch.randn(4, 2), _ids(4), torch.ones(1, 3, device=META), 8, 0),
         r"candidates is on meta but per_sample is on cpu"),
    ],
)
def test_mixed_cpu_and_meta_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- 4. meta / FakeTensor / torch.compile validate like the real kernels ----------------------------------------
def _bad_calls():
    """(id, function of a device returning the raw op call, exception type, message) — metadata errors only."""
    f = torch.float32
    return [
        ("sketch int x", lambda d: torch.ops.tikmix.sketch(torch.ones(3, 4, dtype=torch.int32, device=d), 8, 0),
         TypeError, r"tikmix\.sketch: x must be float32, bfloat16 or float16, got Int"),
        ("sketch k=0", lambda d: torch.ops.tikmix.sketch(torch.ones(3, 4, device=d), 0, 0),
         ValueError, r"tikmix: k must be in \[1, 2\^26\), got 0"),
        ("sketch seed=-1", lambda d: torch.ops.tikmix.sketch(torch.ones(3, 4, device=d), 8, -1),
         ValueError, r"tikmix: seed must be a non-negative integer, got -1"),
        ("sketch offset", lambda d: torch.ops.tikmix.sketch(torch.ones(3, 4, device=d), 8, 0, 2**44 - 2),
         ValueError, r"x covers rows .* beyond the RNG contract's limit 2\^44"),
        ("accumulate float64 out", lambda d: torch.ops.tikmix.sketch_accumulate_(
            torch.zeros(3, 8, dtype=torch.float64, device=d), torch.ones(3, 4, device=d), 0),
         TypeError, r"sketch_accumulate_: out must be float32"),
        ("accumulate seed=-1", lambda d: torch.ops.tikmix.sketch_accumulate_(
            torch.zeros(3, 8, device=d), torch.ones(3, 4, device=d), -1),
         ValueError, r"seed must be a non-negative integer, got -1"),
        ("accumulate N mismatch", lambda d: torch.ops.tikmix.sketch_accumulate_(
            torch.zeros(2, 8, device=d), torch.ones(3, 4, device=d), 0),
         ValueError, r"out must be \[N, k\] with N=3"),
        ("kron T mismatch", lambda d: torch.ops.tikmix.sketch_kron(
            torch.ones(2, 3, 4, device=d), torch.ones(2, 5, 6, device=d), 2, 2, 0, 0),
         ValueError, r"sketch_kron: g must be \[N, T, out_features\] with a's N=2 and T=3"),
        ("kron int a", lambda d: torch.ops.tikmix.sketch_kron(
            torch.ones(2, 3, 4, dtype=torch.int64, device=d), torch.ones(2, 3, 6, dtype=torch.int64, device=d),
            2, 2, 0, 0), TypeError, r"sketch_kron: a must be float32"),
        ("kron k_out=0", lambda d: torch.ops.tikmix.sketch_kron(
            torch.ones(2, 3, 4, device=d), torch.ones(2, 3, 6, device=d), 2, 0, 0, 0),
         ValueError, r"k_out must be in \[1, 2\^26\)"),
        ("segment_sum ids length", lambda d: torch.ops.tikmix.segment_sum(
            torch.ones(4, 2, device=d), _ids(3).to(d), 3),
         ValueError, r"segment_sum: ids must have one entry per row of x \(N=4\), got length 3"),
        ("segment_mean int x", lambda d: torch.ops.tikmix.segment_mean(
            torch.ones(4, 2, dtype=torch.int32, device=d), _ids(4).to(d), 3),
         TypeError, r"segment_mean: x must be float32 or float64"),
        ("segment_sum num_groups=0", lambda d: torch.ops.tikmix.segment_sum(
            torch.ones(4, 2, device=d), _ids(4).to(d), 0), ValueError, r"num_groups must be in \[1, 2\^31\)"),
        ("segment_sum num_groups=2^40", lambda d: torch.ops.tikmix.segment_sum(
            torch.ones(4, 2, device=d), _ids(4).to(d), 2**40), ValueError, r"num_groups must be in \[1, 2\^31\)"),
        ("group_influence k mismatch", lambda d: torch.ops.tikmix.group_influence(
            torch.ones(4, 2, device=d), _ids(4).to(d), 3, torch.ones(2, 3, device=d)),
         ValueError, r"target must be \[n, k\] with train's k=2"),
        ("group_influence ids length", lambda d: torch.ops.tikmix.group_influence(
            torch.ones(4, 2, device=d), _ids(5).to(d), 3, torch.ones(2, 2, device=d)),
         ValueError, r"ids must have one entry per row of train \(N=4\)"),
        ("mixture_scores draws=2^40", lambda d: torch.ops.tikmix.mixture_scores(
            torch.ones(4, 2, device=d), _ids(4).to(d), torch.ones(2, 3, device=d), 2**40, 0),
         ValueError, r"draws must be in \[1, 2\^31\), got 1099511627776"),
        ("mixture_scores seed=-1", lambda d: torch.ops.tikmix.mixture_scores(
            torch.ones(4, 2, device=d), _ids(4).to(d), torch.ones(2, 3, device=d), 8, -1),
         ValueError, r"seed must be a non-negative integer, got -1"),
        ("mixture_scores float ids", lambda d: torch.ops.tikmix.mixture_scores(
            torch.ones(4, 2, device=d), torch.zeros(4, device=d), torch.ones(2, 3, dtype=f, device=d), 8, 0),
         TypeError, r"ids must be int64 or int32"),
    ]


BAD_CALLS = _bad_calls()


@pytest.mark.parametrize("case", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_real_kernel_raises(case):
    _, call, error, match = case
    with pytest.raises(error, match=match):
        call("cpu")


@pytest.mark.parametrize("case", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_meta_raises_the_same(case):
    _, call, error, match = case
    with pytest.raises(error, match=match):
        call(META)


@pytest.mark.parametrize("case", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_fake_tensor_raises_the_same(case):
    from torch._subclasses.fake_tensor import FakeTensorMode

    _, call, error, match = case
    with FakeTensorMode(), pytest.raises(error, match=match):
        call("cpu")


@pytest.mark.parametrize("case", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_torch_compile_fails_at_trace_time(case):
    _, call, error, match = case
    compiled_graphs = []

    def backend(gm, example_inputs):  # reached only if tracing succeeded
        compiled_graphs.append(gm)
        return gm

    torch._dynamo.reset()
    fn = torch.compile(lambda: call("cpu"), fullgraph=True, backend=backend)
    with pytest.raises(Exception, match=match) as info:
        fn()
    assert not compiled_graphs, "the bad call was traced; the error came from running the real kernel"
    # dynamo wraps the op's error in its own; the op's Python exception type is named in the message.
    assert f"got {error.__name__}(" in str(info.value)


def test_valid_calls_still_trace_and_match():
    x = torch.randn(5, 7)
    ids = _ids(5)

    def fn(x, ids):
        s, per_sample = torch.ops.tikmix.group_influence(x.double(), ids, 3, x[:2].double())
        return torch.ops.tikmix.segment_sum(x, ids, 3), torch.ops.tikmix.sketch(x, 8, 1), s, per_sample

    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=True)(x, ids)
    for a, b in zip(got, fn(x, ids)):
        assert torch.equal(a, b)


# ---- 5. autograd misuse -------------------------------------------------------------------------------------------
def test_mixture_scores_backward_raises():
    ps = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    scores = tikmix_ext.mixture_scores(ps, _ids(6), torch.ones(2, 3, dtype=torch.float64), 8, 0)
    assert scores.requires_grad
    with pytest.raises(NotImplementedError, match=r"tikmix.mixture_scores has no backward"):
        scores.sum().backward()


def test_accumulate_into_leaf_that_requires_grad_raises():
    out = torch.zeros(3, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"a leaf Variable that requires grad is being used in an in-place"):
        tikmix_ext.sketch_accumulate_(out, torch.randn(3, 4), 0)
    with torch.no_grad():  # like torch's in-place ops: allowed without grad mode
        tikmix_ext.sketch_accumulate_(out, torch.randn(3, 4), 0)


def test_accumulate_with_differentiable_inputs_raises():
    with pytest.raises(NotImplementedError, match=r"sketch_accumulate_ is not differentiable: x requires grad"):
        tikmix_ext.sketch_accumulate_(torch.zeros(3, 8), torch.randn(3, 4, requires_grad=True), 0)
    base = torch.zeros(3, 8, requires_grad=True)
    with pytest.raises(NotImplementedError, match=r"not differentiable: out requires grad"):
        tikmix_ext.sketch_accumulate_(base * 1.0, torch.randn(3, 4), 0)


def test_accumulate_bumps_the_version_counter():
    # Autograd must notice that a tensor saved for backward was modified in place.
    w = torch.randn(3, 8, requires_grad=True)
    out = torch.ones(3, 8)
    y = (w * out).sum()  # saves out
    v = out._version
    tikmix_ext.sketch_accumulate_(out, torch.randn(3, 4), 0)
    assert out._version > v
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation"):
        y.backward()


# ---- 6. group_influence overflow ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, big", [(torch.float32, 1e38), (torch.float64, 1e308)])
def test_group_influence_sum_overflow_raises(dtype, big):
    train = torch.full((10, 1), big, dtype=dtype)
    with pytest.raises(ValueError, match=r"group_influence: S overflowed"):
        tikmix_ext.group_influence(train, torch.zeros(10, dtype=torch.long), 1, torch.ones(1, 1, dtype=dtype))


def test_group_influence_large_but_finite_is_exact():
    train = torch.full((4, 1), 1e37)
    s, per_sample = tikmix_ext.group_influence(train, _ids(4, 2), 2, torch.ones(1, 1))
    s_ref, ps_ref = group_influence_ref(train, _ids(4, 2), 2, torch.ones(1, 1))
    assert_close(s, s_ref, atol=0, rtol=1e-6)
    assert_close(per_sample, ps_ref, atol=0, rtol=1e-6)


# ---- 7. sizes and integers beyond the limits ---------------------------------------------------------------------
@pytest.mark.parametrize("op", ["segment_sum", "segment_mean"])
def test_num_groups_too_large_is_a_value_error(op):
    with pytest.raises(ValueError, match=r"num_groups must be in \[1, 2\^31\), got 1099511627776"):
        getattr(tikmix_ext, op)(torch.ones(4, 2), _ids(4), 2**40)


def test_group_influence_num_groups_too_large():
    with pytest.raises(ValueError, match=r"group_influence: num_groups must be in \[1, 2\^31\)"):
        tikmix_ext.group_influence(torch.ones(4, 2), _ids(4), 2**40, torch.ones(1, 2))


_X = torch.ones(3, 4)
_WRAPPER_INT_ARGS = [
    ("sketch", "k", lambda v: tikmix_ext.sketch(_X, v, 0)),
    ("sketch", "seed", lambda v: tikmix_ext.sketch(_X, 8, v)),
    ("sketch", "offset", lambda v: tikmix_ext.sketch(_X, 8, 0, v)),
    ("sketch_accumulate_", "seed", lambda v: tikmix_ext.sketch_accumulate_(torch.zeros(3, 8), _X, v)),
    ("sketch_accumulate_", "offset", lambda v: tikmix_ext.sketch_accumulate_(torch.zeros(3, 8), _X, 0, v)),
    ("projection", "rows", lambda v: tikmix_ext.projection(v, 8, 0)),
    ("projection", "seed", lambda v: tikmix_ext.projection(2, 8, v)),
    ("sketch_kron", "seed", lambda v: tikmix_ext.sketch_kron(torch.ones(1, 2, 3), torch.ones(1, 2, 3), 2, 2, v, 0)),
    ("sketch_kron", "layer", lambda v: tikmix_ext.sketch_kron(torch.ones(1, 2, 3), torch.ones(1, 2, 3), 2, 2, 0, v)),
    ("segment_sum", "num_groups", lambda v: tikmix_ext.segment_sum(_X, _ids(3), v)),
    ("group_influence", "num_groups", lambda v: tikmix_ext.group_influence(_X, _ids(3), v, _X)),
    ("mixture_scores", "draws", lambda v: tikmix_ext.mixture_scores(_X, _ids(3), torch.ones(1, 3), v, 0)),
    ("mixture_scores", "seed", lambda v: tikmix_ext.mixture_scores(_X, _ids(3), torch.ones(1, 3), 8, v)),
]


@pytest.mark.parametrize("value", [2**64, 2**63, -(2**63) - 1])
@pytest.mark.parametrize("op, name, call", _WRAPPER_INT_ARGS, ids=[f"{o}-{n}" for o, n, _ in _WRAPPER_INT_ARGS])
def test_integers_beyond_int64_are_value_errors(op, name, call, value):
    with pytest.raises(ValueError, match=rf"tikmix\.{op}: {name} must"):
        call(value)


# ---- 8. references at size 0 -------------------------------------------------------------------------------------
def test_sketch_kron_ref_with_no_samples():
    a, g = torch.ones(0, 3, 4), torch.ones(0, 3, 5)
    ref = sketch_kron_ref(a, g, 2, 3, 0, 0)
    assert ref.shape == (0, 6) and ref.dtype == torch.float64
    assert tikmix_ext.sketch_kron(a, g, 2, 3, 0, 0).shape == (0, 6)

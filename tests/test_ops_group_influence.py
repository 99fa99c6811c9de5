"""group_influence: float64 reference with and without a preconditioner, S = deterministic segment sum of
per_sample, non-finite inputs rejected, gradients, opcheck, torch.compile, bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_ops_common import DEVICES, assert_bits_equal, assert_close, compiled, require_kernel, run_opcheck, with_threads

import tikmix_ext
from tikmix_ext.reference import group_influence_ref

DTYPES = [torch.float32, torch.float64]
# (N, k, n, G): N=1, k=1, n=1, odd sizes, empty groups, > 1 segment chunk
SHAPES = [(1, 1, 1, 1), (1, 4, 2, 3), (9, 1, 3, 2), (97, 13, 5, 11), (4500, 33, 2, 4)]
REL = {torch.float32: 2e-6, torch.float64: 1e-13}


def _inputs(n, k, m, g, dtype, precond=False, id_dtype=torch.int64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    train = torch.randn(n, k, generator=gen, dtype=torch.float64).to(dtype)
    ids = torch.randint(0, max(1, g - 1), (n,), generator=gen).to(id_dtype)  # last group empty when g > 1
    target = torch.randn(m, k, generator=gen, dtype=torch.float64).to(dtype)
    p = None
    if precond:
        b = torch.randn(k, k, generator=gen, dtype=torch.float64)
        p = (b @ b.T / k + torch.eye(k, dtype=torch.float64)).to(dtype).to(device)
    return train.to(device), ids.to(device), target.to(device), p


def _scale(train, ids, g, target, precond):
    """Σ |terms| of each output, for an absolute error bound that cancellation cannot defeat."""
    abs_p = None if precond is None else precond.cpu().abs()
    return group_influence_ref(train.cpu().abs(), ids.cpu(), g, target.cpu().abs(), abs_p)


def sample_inputs(device, requires_grad):
    """(train, ids, num_groups, target, precond) with and without precond, both dtypes."""
    out = []
    for shape, dtype, with_p in [((6, 4, 2, 3), torch.float64, False), ((5, 3, 2, 2), torch.float64, True), ((7, 5, 1, 4), torch.float32, True)]:
        train, ids, target, p = _inputs(*shape, dtype, precond=with_p, device=device)
        train.requires_grad_(requires_grad)
        target.requires_grad_(requires_grad)
        out.append((train, ids, shape[3], target, p))
    return out


class TestGroupInfluence:
    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("with_precond", [False, True])
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("shape", SHAPES)
    def test_matches_float64_reference(self, device, dtype, with_precond, shape):
        require_kernel("group_influence", device)
        train, ids, target, p = _inputs(*shape, dtype, precond=with_precond, device=device)
        s, per_sample = tikmix_ext.group_influence(train, ids, shape[3], target, p)
        assert s.shape == (shape[2], shape[3]) and per_sample.shape == (shape[0], shape[2])
        assert s.dtype == dtype and per_sample.dtype == dtype and s.device == train.device
        s_ref, ps_ref = group_influence_ref(train.cpu(), ids.cpu(), shape[3], target.cpu(), None if p is None else p.cpu())
        s_abs, ps_abs = _scale(train, ids, shape[3], target, p)
        assert_close(per_sample, ps_ref, atol=REL[dtype] * float(ps_abs.max()), rtol=0, name="per_sample")
        assert_close(s, s_ref, atol=REL[dtype] * float(s_abs.max()), rtol=0, name="S")
        if shape[3] > 1:
            assert torch.equal(s[:, -1].cpu(), torch.zeros(shape[2], dtype=dtype))  # the empty group

    @pytest.mark.parametrize("device", DEVICES)
    def test_s_is_segment_sum_of_per_sample(self, device):
        """S uses exactly the deterministic segment sum (same bits)."""
        require_kernel("group_influence", device)
        train, ids, target, p = _inputs(5000, 16, 3, 5, torch.float32, precond=True, id_dtype=torch.int32, device=device)
        s, per_sample = tikmix_ext.group_influence(train, ids, 5, target, p)
        assert_bits_equal(s.cpu(), tikmix_ext.segment_sum(per_sample, ids, 5).T.cpu(), name="S vs segment_sum")

    def test_deterministic_across_threads(self):
        train, ids, target, p = _inputs(6000, 256, 8, 7, torch.float32, precond=True, seed=4)
        one = with_threads(1, lambda: tikmix_ext.group_influence(train, ids, 7, target, p))
        two = with_threads(2, lambda: tikmix_ext.group_influence(train, ids, 7, target, p))
        for a, b, name in zip(two, one, ("S", "per_sample")):
            assert_bits_equal(a, b, name=f"{name} 2 threads vs 1")

    def test_non_contiguous_and_int32_ids(self):
        train, ids, target, p = _inputs(40, 12, 4, 3, torch.float64, precond=True)
        train_nc, target_nc, p_nc = train.t().contiguous().t()[::2], target[:, ::1].t().contiguous().t(), p.t()
        ids_nc = ids[::2].to(torch.int32)
        s, ps = tikmix_ext.group_influence(train_nc, ids_nc, 3, target_nc, p_nc)
        s_ref, ps_ref = group_influence_ref(train_nc, ids_nc.long(), 3, target_nc, p_nc)
        assert_close(s, s_ref, atol=1e-12, rtol=1e-12, name="S")
        assert_close(ps, ps_ref, atol=1e-12, rtol=1e-12, name="per_sample")

    def test_identity_precond_equals_none(self):
        train, ids, target, _ = _inputs(30, 6, 2, 3, torch.float64)
        with_eye = tikmix_ext.group_influence(train, ids, 3, target, torch.eye(6, dtype=torch.float64))
        without = tikmix_ext.group_influence(train, ids, 3, target)
        for a, b in zip(with_eye, without):
            assert_close(a, b, atol=1e-13, rtol=1e-13)

    def test_no_rows(self):
        s, ps = tikmix_ext.group_influence(torch.empty(0, 4), torch.empty(0, dtype=torch.int64), 3, torch.randn(2, 4))
        assert torch.equal(s, torch.zeros(2, 3)) and ps.shape == (0, 2)

    def test_numpy_in_numpy_out(self):
        train, ids, target, p = _inputs(10, 4, 2, 3, torch.float64, precond=True)
        s, ps = tikmix_ext.group_influence(train.numpy(), ids.numpy(), 3, target.numpy(), p.numpy())
        assert isinstance(s, np.ndarray) and isinstance(ps, np.ndarray) and s.shape == (2, 3)
        s_ref, _ = group_influence_ref(train, ids, 3, target, p)
        assert_close(s, s_ref, atol=1e-12, rtol=1e-12)

    @pytest.mark.parametrize("with_precond", [False, True])
    def test_gradcheck(self, with_precond):
        train, ids, target, p = _inputs(8, 3, 2, 4, torch.float64, precond=with_precond)
        inputs = [train.requires_grad_(True), target.requires_grad_(True)]
        if p is not None:
            inputs.append(p.requires_grad_(True))

        def fn(*args):
            return torch.ops.tikmix.group_influence(args[0], ids, 4, args[1], args[2] if len(args) > 2 else None)

        assert torch.autograd.gradcheck(fn, tuple(inputs))
        assert torch.autograd.gradgradcheck(fn, tuple(inputs))

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("requires_grad", [False, True])
    def test_opcheck(self, device, requires_grad):
        require_kernel("group_influence", device)
        for args in sample_inputs(device, requires_grad):
            run_opcheck(torch.ops.tikmix.group_influence.default, args)

    @pytest.mark.parametrize("device", DEVICES)
    def test_compile_fullgraph(self, device):
        require_kernel("group_influence", device)
        train, ids, target, p = _inputs(40, 8, 3, 4, torch.float32, precond=True, device=device)
        fn = lambda t, i, g, q: tikmix_ext.group_influence(t * 2.0, i, 4, g, q)[0].sum(1)  # noqa: E731
        assert_close(compiled(fn, device)(train, ids, target, p), fn(train, ids, target, p), atol=1e-4, rtol=1e-5)

    @pytest.mark.parametrize("name, index", [("train", (3, 1)), ("target", (1, 4)), ("precond", (2, 0))])
    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
    def test_non_finite_rejected(self, name, index, bad):
        """A NaN in S would silently corrupt a mixture: non-finite inputs raise, naming argument and entry."""
        train, ids, target, p = _inputs(6, 5, 2, 3, torch.float32, precond=True)
        args = dict(train=train, target=target, precond=p)
        args[name] = args[name].clone()
        args[name][index] = bad
        with pytest.raises(ValueError, match=rf"{name} must be finite, got {bad}.* at {name}\[{index[0]}, {index[1]}\]"):
            tikmix_ext.group_influence(args["train"], ids, 3, args["target"], args["precond"])

    def test_non_finite_train_found_without_targets_and_overflow_named(self):
        train, ids, target, _ = _inputs(6, 5, 0, 3, torch.float32)  # n = 0: no output witnesses train
        train[4, 2] = float("nan")
        with pytest.raises(ValueError, match=r"train must be finite, got nan at train\[4, 2\]"):
            tikmix_ext.group_influence(train, ids, 3, target)
        big = torch.full((3, 2), 3e38)
        with pytest.raises(ValueError, match=r"per_sample overflowed to inf at per_sample\[0, 0\].*use float64"):
            tikmix_ext.group_influence(big, torch.zeros(3, dtype=torch.int64), 1, torch.ones(1, 2))

    @pytest.mark.parametrize(
        "change, exc, match",
        [
            (dict(train=torch.ones(4, 3, dtype=torch.float16)), TypeError, "train must be float32 or float64"),
            (dict(train=torch.ones(4)), ValueError, r"train must be 2-D \[N, k\]"),
            (dict(target=torch.ones(2, 4)), ValueError, r"target must be \[n, k\] with train's k=3"),
            (dict(target=torch.ones(3)), ValueError, r"target must be 2-D \[n, k\]"),
            (dict(target=torch.ones(2, 3, dtype=torch.float64)), TypeError, "target must have train's dtype"),
            (dict(precond=torch.eye(4)), ValueError, r"precond must be \[k, k\] with train's k=3"),
            (dict(precond=torch.eye(3, dtype=torch.float64)), TypeError, "precond must have train's dtype"),
            (dict(ids=torch.tensor([0, 1, 5, 0])), ValueError, r"ids\[2\] = 5 is out of range"),
            (dict(ids=torch.tensor([0, -4, 1, 0])), ValueError, r"ids\[1\] = -4 is out of range"),
            (dict(ids=torch.zeros(3, dtype=torch.int64)), ValueError, r"ids must have one entry per row of train"),
            (dict(ids=torch.zeros(4)), TypeError, "ids must be int64 or int32"),
            (dict(num_groups=0), ValueError, r"num_groups must be in \[1, 2\^31\)"),
            (dict(num_groups="3"), TypeError, "num_groups must be an int, got str"),
            (dict(target=torch.ones(2, 3, device="meta")), ValueError, "one device"),
        ],
    )
    def test_bad_inputs(self, change, exc, match):
        args = dict(train=torch.ones(4, 3), ids=torch.tensor([0, 1, 2, 0]), num_groups=3, target=torch.ones(2, 3), precond=None)
        args.update(change)
        with pytest.raises(exc, match=match):
            tikmix_ext.group_influence(args["train"], args["ids"], args["num_groups"], args["target"], args["precond"])


def test_reference_per_sample_is_bilinear_form():
    """The einsum reference equals target_i · (P · train_z) written out as a loop."""
    train, ids, target, p = _inputs(4, 3, 2, 2, torch.float64, precond=True)
    _, ps = group_influence_ref(train, ids, 2, target, p)
    for z in range(4):
        for i in range(2):
            assert abs(float(ps[z, i]) - float(target[i] @ (p @ train[z]))) < 1e-12

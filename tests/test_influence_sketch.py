"""Sketched influence: the projection (RNG contract), the layout and k split, per-sample sums == group mode,
and convergence to the exact S as k grows."""
from __future__ import annotations

import math

import pytest
import torch

from influence_testing import TinyLM, lm_loss, make_data, one_thread  # noqa: F401
from tikmix.influence import GroupInfluence
from tikmix.influence.sketch_space import Layout, Projector, kron_seed, sign_tile

tikmix_ext = pytest.importorskip("tikmix_ext")
from tikmix_ext.reference import kron_seed_ref, projection_ref  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _has(op: str) -> bool:
    return tikmix_ext.has_kernel(op, "cpu")


# ---- projection ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows,k,seed,row0", [(5, 1, 0, 0), (37, 97, 3, 0), (9, 130, 2**62 + 5, 2**40 - 4)])
def test_sign_tile_matches_native_projection(rows, k, seed, row0):
    ref = tikmix_ext.projection(rows, k, seed, row0)
    torch.testing.assert_close(sign_tile(rows, k, seed, row0) / math.sqrt(k), ref, rtol=0, atol=1e-7)


def test_kron_tiles_follow_the_contract_for_u64_seeds():
    for layer, tag in [(0, 0), (0, 1), (7, 1)]:
        s = kron_seed(123, layer, tag)
        assert s == kron_seed_ref(123, layer, tag)
        ref = projection_ref(6, 70, s) * math.sqrt(70)  # Python-int reference accepts the full u64 seed
        assert torch.equal(sign_tile(6, 70, s).double(), ref)


# ---- layout --------------------------------------------------------------------------------------------------------
def _layout(model, k, factorize=True):
    from tikmix.influence.capture import is_factorable, parameter_owners, select_parameters

    named = select_parameters(model, None)
    owners = parameter_owners(model)
    return Layout.build(named, [factorize and is_factorable(p, owners[id(p)]) for _, p in named], k)


def test_layout_uses_exactly_k_columns_and_balanced_blocks():
    torch.manual_seed(0)
    model = TinyLM(d=16)
    for k in (12, 100, 1000, 4096):
        lay = _layout(model, k)
        assert lay.dim == k
        kron = [s for s in lay.slots if s.kind == "kron"]
        assert [s.name for s in kron] == ["tok.weight", "pos.weight", "fc1.weight", "fc2.weight", "mix.weight"]
        assert [s.layer for s in kron] == list(range(5))
        cols = sorted((s.col, s.width) for s in kron)
        assert cols[0][0] == 0 and all(a[0] + a[1] == b[0] for a, b in zip(cols, cols[1:]))
        for s in kron:
            out_f, in_f = s.shape
            assert 1 <= s.k_in <= in_f and 1 <= s.k_out <= out_f and s.width == s.k_in * s.k_out
        dense = [s for s in lay.slots if s.kind == "dense"]
        assert all(s.col == lay.kron_dim and s.width == k - lay.kron_dim for s in dense)
        offsets = [s.offset for s in dense]
        assert offsets == sorted(offsets) and offsets[0] == 0
    with pytest.raises(ValueError, match="smaller than the number of sketch blocks"):
        _layout(model, 5)
    assert _layout(model, 64, factorize=False).kron_dim == 0


# ---- per-sample sums equal group mode ------------------------------------------------------------------------------
@pytest.mark.parametrize("factorize", [True, False])
def test_per_sample_sums_equal_group_mode(factorize):
    torch.manual_seed(0)
    model = TinyLM(d=16).eval()
    doms, tgts = make_data(n_domains=3, n_targets=2)
    kw = dict(k=256, seed=7, progress=False, n_bootstrap=0, factorize=factorize, keep_sketches=True)
    grp = GroupInfluence(model, lm_loss, mode="group", **kw).compute(doms, tgts)
    per = GroupInfluence(model, lm_loss, mode="per_sample", **kw).compute(doms, tgts)
    scale = grp.domain_sketches.abs().max()
    torch.testing.assert_close(per.domain_sketches, grp.domain_sketches, rtol=0, atol=2e-5 * float(scale))
    torch.testing.assert_close(per.S, grp.S, rtol=1e-4, atol=1e-6 * float(grp.S.abs().max()))
    # the group sketch of each micro-batch is the sum of its samples' sketches
    torch.testing.assert_close(per.unit_sketches.view(-1, 3, 256).sum(1), grp.unit_sketches, rtol=0,
                               atol=2e-5 * float(scale))


@pytest.mark.skipif(not _has("sketch_kron"), reason="sketch_kron kernel not built")
def test_native_kron_op_and_torch_path_agree():
    torch.manual_seed(0)
    model = TinyLM(d=16)
    lay = _layout(model, 300)
    slot = next(s for s in lay.slots if s.name == "fc1.weight")
    a, g = torch.randn(4, 5, 16), torch.randn(4, 5, 32)
    native = Projector(lay, 11, torch.device("cpu"))
    native._kron_op = True  # the CPU default is the torch path (faster there); the kernel must agree with it
    torch_path = Projector(lay, 11, torch.device("cpu"))
    assert not torch_path._kron_op
    y1, y2 = native.zeros(4), torch_path.zeros(4)
    native.add_linear(y1, slot, a, g)
    torch_path.add_linear(y2, slot, a, g)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    # and both equal the Kronecker projection of the materialised per-sample gradient (group path)
    y3 = native.zeros(4)
    native.add_grad(y3, slot, torch.einsum("nto,nti->noi", g, a))
    torch.testing.assert_close(y1, y3, rtol=1e-5, atol=1e-5)


def test_add_grads_merges_adjacent_dense_slots_into_one_call(monkeypatch):
    """One kernel call per run of adjacent dense slots, and the same sketch as one call per slot and as the float64
    projection of the whole gradient; a scaled slot, a gap in the offsets or another dtype ends a run."""
    torch.manual_seed(0)
    lay = _layout(TinyLM(d=16), 300)
    dense = [s for s in lay.slots if s.kind == "dense"]
    grads = [(s, torch.randn(2, *s.shape)) for s in lay.slots]
    calls = []
    proj = Projector(lay, 5, torch.device("cpu"))
    real = proj._add_dense
    monkeypatch.setattr(proj, "_add_dense", lambda out, slot, x, *a, **k: (calls.append(x.shape[1]),
                                                                               real(out, slot, x, *a, **k)))
    merged, each = proj.zeros(2), proj.zeros(2)
    proj.add_grads(merged, grads)
    assert calls == [sum(s.numel for s in dense)]
    for slot, g in grads:
        proj.add_grad(each, slot, g)
    torch.testing.assert_close(merged, each, rtol=1e-5, atol=1e-5)
    # the dense block against the float64 reference projection of the concatenated dense gradients
    block = slice(dense[0].col, dense[0].col + dense[0].width)
    flat = torch.cat([g.reshape(2, -1) for s, g in grads if s.kind == "dense"], 1).to(torch.float64)
    ref = flat @ projection_ref(flat.shape[1], dense[0].width, 5, 0)
    torch.testing.assert_close(merged[:, block].to(torch.float64), ref, rtol=1e-5, atol=1e-5)
    # a slot with a diagonal scale, a skipped slot (an offset gap) and a float64 gradient each end a run
    calls.clear()
    scaled = Projector(lay, 5, torch.device("cpu"), {dense[1].index: torch.full((dense[1].numel,), 2.0)})
    monkeypatch.setattr(scaled, "_add_dense", lambda out, slot, x, *a, **k: (calls.append(x.shape[1]),
                                                                                real.__func__(scaled, out, slot, x,
                                                                                              *a, **k)))
    assert len(dense) == 6  # ln.weight, ln.bias, fc1.bias, fc2.bias, ln_f.weight, ln_f.bias
    kept = [(s, g.double() if s is dense[5] else g) for s, g in grads if s is not dense[2]]
    out1, out2 = scaled.zeros(2), scaled.zeros(2)
    scaled.add_grads(out1, kept)
    # the scaled slot at once; ln.weight alone (the gap); fc2.bias with ln_f.weight; the float64 ln_f.bias alone
    assert calls == [dense[1].numel, dense[0].numel, dense[3].numel + dense[4].numel, dense[5].numel]
    for slot, g in kept:
        scaled.add_grad(out2, slot, g)
    torch.testing.assert_close(out1, out2, rtol=1e-5, atol=1e-5)


# ---- convergence to exact ------------------------------------------------------------------------------------------
def test_sketched_S_converges_to_exact_like_one_over_sqrt_k():
    torch.manual_seed(0)
    model = TinyLM(d=8).eval()
    doms, tgts = make_data(n_domains=3, n_targets=2, n_batches=1)
    exact = GroupInfluence(model, lm_loss, k=None, progress=False, n_bootstrap=0).compute(doms, tgts).S
    norm = float(exact.abs().max())

    def err(k: int, seeds) -> float:
        errs = []
        for seed in seeds:
            s = GroupInfluence(model, lm_loss, k=k, seed=seed, progress=False, n_bootstrap=0).compute(doms, tgts).S
            errs.append(float(((s - exact) ** 2).mean()))
        return math.sqrt(sum(errs) / len(errs)) / norm

    seeds = range(12)
    e_small, e_large = err(64, seeds), err(1024, seeds)
    ratio = e_small / e_large  # 1/√k predicts √16 = 4
    assert 2.5 < ratio < 6.5, (e_small, e_large, ratio)
    assert e_large < 0.2


@pytest.mark.cuda
@pytest.mark.parametrize("mode,preconditioner", [("group", "identity"), ("per_sample", "identity"),
                                                 ("per_sample", "gauss_newton")])
def test_cuda_equals_cpu(mode, preconditioner):
    torch.manual_seed(0)
    model = TinyLM(d=16).eval()
    doms, tgts = make_data(n_domains=3, n_targets=2)
    kw = dict(k=512, seed=5, mode=mode, preconditioner=preconditioner, progress=False, n_bootstrap=50)
    cpu = GroupInfluence(model, lm_loss, **kw).compute(doms, tgts)
    gpu = GroupInfluence(model.cuda(), lm_loss, **kw).compute(doms, tgts)  # batches are moved to the model's device
    scale = float(cpu.S.abs().max())
    torch.testing.assert_close(gpu.S, cpu.S, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(gpu.unit_scores, cpu.unit_scores, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(gpu.domain_sketches, cpu.domain_sketches, rtol=1e-4, atol=1e-5)

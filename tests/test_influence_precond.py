"""Preconditioners against dense float64 references: adam (diagonal from the optimizer's second moments, tracked
independently here) and gauss_newton ((ΦᵀΦ/N + λI)⁻¹ formed and inverted explicitly)."""
from __future__ import annotations

import pytest
import torch

from influence_testing import (TinyLM, assert_unchanged, influence_ref, lm_loss, make_data, one_thread,  # noqa: F401
                               params_of, per_sample_grads_ref, snapshot)
from tikmix.influence import GroupInfluence

pytestmark = pytest.mark.usefixtures("one_thread")

BETAS, EPS = (0.9, 0.99), 1e-6


def _adam_trained(steps: int = 3, amsgrad: bool = False, cls=torch.optim.Adam):
    """A model after a few Adam steps, and the reference diagonal D = 1/(√v̂ + ε) tracked independently."""
    torch.manual_seed(0)
    model = TinyLM(d=8).double()
    opt = cls(model.parameters(), lr=1e-2, betas=BETAS, eps=EPS, amsgrad=amsgrad)
    doms, _ = make_data(seed=3)
    params = list(model.parameters())
    v = [torch.zeros_like(p) for p in params]
    vmax = [torch.zeros_like(p) for p in params]
    batches = [b for bs in doms.values() for b in bs][:steps]
    for batch in batches:
        opt.zero_grad()
        lm_loss(model, batch).mean().backward()
        for i, p in enumerate(params):
            v[i] = BETAS[1] * v[i] + (1 - BETAS[1]) * p.grad.double() ** 2
            vmax[i] = torch.maximum(vmax[i], v[i])
        opt.step()
    bc = 1 - BETAS[1] ** len(batches)
    d = torch.cat([(1 / ((vv / bc).sqrt() + EPS)).reshape(-1) for vv in (vmax if amsgrad else v)])
    return model.eval(), opt, d


@pytest.mark.parametrize("mode", ["group", "per_sample"])
@pytest.mark.parametrize("amsgrad,cls", [(False, torch.optim.Adam), (True, torch.optim.AdamW)])
def test_adam_exact_equals_diag_scaled_inner_products(mode, amsgrad, cls):
    model, opt, d = _adam_trained(amsgrad=amsgrad, cls=cls)
    doms, tgts = make_data()
    res = GroupInfluence(model, lm_loss, k=None, mode=mode, preconditioner="adam", optimizer=opt, progress=False,
                         n_bootstrap=0).compute(doms, tgts)
    torch.testing.assert_close(res.S, influence_ref(model, lm_loss, doms, tgts, scale=d), rtol=1e-9, atol=1e-12)


def test_adam_sketched_is_unbiased_and_modes_agree():
    model, opt, _ = _adam_trained()
    doms, tgts = make_data()
    kw = dict(preconditioner="adam", optimizer=opt, progress=False, n_bootstrap=0)
    exact = GroupInfluence(model, lm_loss, k=None, **kw).compute(doms, tgts).S
    grp = GroupInfluence(model, lm_loss, k=1024, **kw).compute(doms, tgts)
    per = GroupInfluence(model, lm_loss, k=1024, mode="per_sample", **kw).compute(doms, tgts)
    assert not grp.layout["kron_blocks"]  # adam defaults to the dense layout
    torch.testing.assert_close(per.S, grp.S, rtol=1e-4, atol=1e-6 * float(grp.S.abs().max()))
    # group mode may keep Kronecker blocks (the whole gradient is scaled, then projected); both layouts are unbiased
    for factorize in (False, True):
        runs = [GroupInfluence(model, lm_loss, k=1024, seed=s, factorize=factorize, **kw).compute(doms, tgts).S
                for s in range(12)]
        assert bool(GroupInfluence(model, lm_loss, k=1024, factorize=factorize, **kw).layout.kron_dim) == factorize
        mean_err = float((torch.stack(runs).mean(0) - exact).abs().max())
        assert mean_err < 0.1 * float(exact.abs().max()), (factorize, mean_err)


def test_adam_input_errors():
    model, opt, _ = _adam_trained()
    doms, tgts = make_data(n_domains=1, n_targets=1)
    with pytest.raises(ValueError, match="factorize=False"):
        GroupInfluence(model, lm_loss, k=64, mode="per_sample", preconditioner="adam", optimizer=opt, factorize=True)
    with pytest.raises(ValueError, match="needs optimizer"):
        GroupInfluence(model, lm_loss, k=64, preconditioner="adam")
    with pytest.raises(TypeError, match="Adam or AdamW"):
        GroupInfluence(model, lm_loss, k=64, preconditioner="adam",
                       optimizer=torch.optim.SGD(model.parameters(), lr=0.1)).compute(doms, tgts)
    fresh = torch.optim.Adam(model.parameters())
    before = snapshot(model)
    with pytest.raises(ValueError, match="no second-moment state"):
        GroupInfluence(model, lm_loss, k=64, preconditioner="adam", optimizer=fresh).compute(doms, tgts)
    partial = torch.optim.Adam([model.fc1.weight])
    with pytest.raises(ValueError, match="does not hold"):
        GroupInfluence(model, lm_loss, k=64, preconditioner="adam", optimizer=partial).compute(doms, tgts)
    assert_unchanged(model, before)


# ---- gauss_newton ----------------------------------------------------------------------------------------------------
def _gn_ref(phi: torch.Tensor, t: torch.Tensor, a: torch.Tensor, damping: float):
    """S = T (ΦᵀΦ/N + λI)⁻¹ Aᵀ, λ = damping · tr(ΦᵀΦ/N) / K — explicit inverse, float64."""
    n, k = phi.shape
    gram = phi.t() @ phi / n
    lam = damping * float(gram.diagonal().sum()) / k
    return t @ torch.linalg.inv(gram + lam * torch.eye(k, dtype=torch.float64)) @ a.t(), lam


@pytest.mark.parametrize("mode", ["group", "per_sample"])
def test_gauss_newton_exact_matches_dense_inverse(mode):
    torch.manual_seed(0)
    model = TinyLM(d=8).double().eval()
    doms, tgts = make_data()
    res = GroupInfluence(model, lm_loss, k=None, mode=mode, preconditioner="gauss_newton", damping=0.3,
                         progress=False, n_bootstrap=0).compute(doms, tgts)
    params = params_of(model)
    t = torch.stack([per_sample_grads_ref(model, lm_loss, b, params).mean(0) for b in tgts.values()])
    per = {name: [per_sample_grads_ref(model, lm_loss, [b], params) for b in bs] for name, bs in doms.items()}
    if mode == "per_sample":
        phi = torch.cat([g for gs in per.values() for g in gs])
    else:  # one row per micro-batch: its summed gradient / √(batch size)
        phi = torch.stack([g.sum(0) / g.shape[0] ** 0.5 for gs in per.values() for g in gs])
    a = torch.stack([torch.cat(gs).mean(0) for gs in per.values()])
    ref, lam = _gn_ref(phi, t, a, 0.3)
    assert res.gauss_newton_damping == pytest.approx(lam, rel=1e-10)
    torch.testing.assert_close(res.S, ref, rtol=1e-7, atol=1e-10 * float(ref.abs().max()))


@pytest.mark.parametrize("k,mode", [(256, "per_sample"), (256, "group"), (8, "per_sample")])  # Woodbury / Cholesky
def test_gauss_newton_sketched_matches_dense_inverse_in_sketch_space(k, mode):
    torch.manual_seed(0)
    model = TinyLM(d=8).eval()
    doms, tgts = make_data(batch_size=4)
    res = GroupInfluence(model, lm_loss, k=k, mode=mode, preconditioner="gauss_newton", keep_sketches=True,
                         progress=False, n_bootstrap=0).compute(doms, tgts)
    phi = res.unit_sketches.double()
    if mode == "group":
        phi = phi / res.unit_sizes.double().sqrt().unsqueeze(1)
    ref, lam = _gn_ref(phi, res.target_sketches.double(), res.domain_sketches.double(), 0.1)
    ref = ref / res.domain_samples.double()
    assert res.gauss_newton_damping == pytest.approx(lam, rel=1e-8)
    torch.testing.assert_close(res.S, ref, rtol=1e-6, atol=1e-9 * float(ref.abs().max()))

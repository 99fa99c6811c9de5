"""No silent zero: computations that cannot measure raise (or warn, naming parameters); torch.compile'd models give the
eager model's S in both modes; per-sample verification covers every domain; Gauss-Newton's dependence on units."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from influence_testing import TinyLM, lm_loss, make_data, one_thread  # noqa: F401
from tikmix.influence import GroupInfluence

pytestmark = pytest.mark.usefixtures("one_thread")


def _gi(model, loss=lm_loss, **kw):
    kw.setdefault("k", 64)
    return GroupInfluence(model, loss, progress=False, n_bootstrap=0, **kw)


def _model(**kw):
    torch.manual_seed(0)
    return TinyLM(d=8, **kw).eval()


@pytest.mark.parametrize("mode,how", [("group", "whole"), ("per_sample", "whole"), ("per_sample", "submodules")])
def test_compiled_model_gives_the_eager_result(mode, how):
    doms, tgts = make_data(n_domains=2, n_targets=1)
    ref = _gi(_model(), mode=mode).compute(doms, tgts).S
    model = _model()
    if how == "whole":
        model = torch.compile(model)
    else:
        model.fc1 = torch.compile(model.fc1)
        model.ln.compile()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback, no zero-gradient warning
        got = _gi(model, mode=mode).compute(doms, tgts).S
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


class _Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.lm = _model()
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        return self.lm(x)


def test_only_parameters_without_gradient_raise():
    model = _Unused()
    doms, tgts = make_data(n_domains=2, n_targets=1)
    for mode in ("group", "per_sample"):
        with pytest.raises(RuntimeError, match="no selected parameter received a nonzero target gradient"):
            _gi(model, mode=mode, params=[model.unused]).compute(doms, tgts)


def test_some_parameters_without_gradient_warn_by_name():
    model = _Unused()
    doms, tgts = make_data(n_domains=2, n_targets=1)
    with pytest.warns(RuntimeWarning, match=r"unused\.weight, unused\.bias"):
        res = _gi(model, mode="group").compute(doms, tgts)
    assert bool(res.S.ne(0).all())


def test_target_with_identically_zero_gradient_raises():
    doms, tgts = make_data(n_domains=2, n_targets=2)
    tgts["t1"] = [torch.full_like(b, 31) for b in tgts["t1"]]

    def loss(model, batch):  # sequences of token 31 carry no loss (a fully masked target)
        return lm_loss(model, batch) * (batch[:, 0] != 31).to(torch.float32)

    for mode in ("group", "per_sample"):
        with pytest.raises(ValueError, match=r"targets \['t1'\] is identically zero"):
            _gi(_model(), loss, mode=mode).compute(doms, tgts)


def test_per_sample_path_hidden_from_hooks_raises_without_verification():
    doms, tgts = make_data(n_domains=2, n_targets=1)
    torch.manual_seed(0)
    model = TinyLM(d=8).eval()
    model.fc1 = nn.Linear(8, 16)  # fc1 keeps its hook; the loss below reaches fc1.weight only functionally

    def loss(m, batch):
        x = m.tok(batch[:, :-1])
        return lm_loss(m, batch) * 0 + (torch.nn.functional.linear(x, m.fc1.weight) ** 2).mean((1, 2))

    with pytest.raises(RuntimeError, match="fc1.weight"):
        _gi(model, loss, mode="per_sample", verify=False).compute(doms, tgts)


def test_per_sample_verifies_every_domain():
    """A penalty on ln.weight in one domain's loss only (outside the module's forward): per-sample S equals group S."""
    doms, tgts = make_data(n_domains=2, n_targets=1)  # d0 and t0 use tokens < 16, d1 tokens up to 22
    assert all(int(b.max()) < 16 for b in doms["d0"] + tgts["t0"]) and all(int(b.max()) >= 16 for b in doms["d1"])

    def loss(model, batch):
        penalised = (batch.max(1).values >= 16).to(torch.float32)  # only d1's samples
        return lm_loss(model, batch) + penalised * 0.5 * (model.ln.weight ** 2).sum()

    group = _gi(_model(), loss, k=None, mode="group").compute(doms, tgts).S
    with pytest.warns(RuntimeWarning, match="ln.weight"):
        per_sample = _gi(_model(), loss, k=None, mode="per_sample").compute(doms, tgts).S
    torch.testing.assert_close(per_sample, group, rtol=1e-5, atol=1e-7)


def test_gauss_newton_group_mode_depends_on_the_micro_batches_only():
    """Group-mode Gauss-Newton estimates ΦᵀΦ/N from micro-batch sums, so re-batching the same samples changes S
    (identity does not); with the same micro-batches, ranks agree with one process (test_influence_distributed)."""
    doms, tgts = make_data(n_domains=2, n_targets=1, n_batches=4)
    rebatched = {k: [torch.cat(v[:2]), torch.cat(v[2:])] for k, v in doms.items()}
    ident = [_gi(_model()).compute(d, tgts).S for d in (doms, rebatched)]
    torch.testing.assert_close(ident[0], ident[1], rtol=1e-5, atol=1e-7)
    gn = [_gi(_model(), preconditioner="gauss_newton").compute(d, tgts).S for d in (doms, rebatched)]
    assert float((gn[0] - gn[1]).abs().max()) > 1e-3 * float(gn[0].abs().max())

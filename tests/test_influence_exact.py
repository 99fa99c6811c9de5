"""Exact setting (k=None): S equals brute-force float64 inner products of full gradients, in both modes."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from influence_testing import (FunctionalTie, TinyLM, assert_unchanged, influence_ref, lm_loss, make_data,  # noqa: F401
                               one_thread, params_of, per_sample_grads_ref, snapshot)
from tikmix.influence import GroupInfluence

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(**kw) -> nn.Module:
    torch.manual_seed(0)
    return TinyLM(**kw).double().eval()


@pytest.mark.parametrize("mode", ["group", "per_sample"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_exact_matches_bruteforce(mode, reduction):
    model = _model()
    doms, tgts = make_data()
    before = snapshot(model)
    res = GroupInfluence(model, lm_loss, k=None, mode=mode, reduction=reduction, progress=False,
                         n_bootstrap=0).compute(doms, tgts)
    assert_unchanged(model, before)
    ref = influence_ref(model, lm_loss, doms, tgts, reduction=reduction)
    assert res.S.dtype == torch.float64 and res.S.shape == (2, 3)
    assert res.domains == ("d0", "d1", "d2") and res.targets == ("t0", "t1")
    torch.testing.assert_close(res.S, ref, rtol=1e-9, atol=1e-12)
    assert res.domain_samples.tolist() == [6, 6, 6] and res.target_samples.tolist() == [4, 4]
    assert res.domain_tokens.tolist() == [54, 54, 54] and res.domain_batches.tolist() == [2, 2, 2]
    assert res.sketch_dim is None


def test_per_sample_scores_are_per_sample_inner_products():
    model = _model()
    doms, tgts = make_data(n_domains=2, n_targets=2)
    res = GroupInfluence(model, lm_loss, k=None, mode="per_sample", progress=False, n_bootstrap=0).compute(doms, tgts)
    params = params_of(model)
    t = torch.stack([per_sample_grads_ref(model, lm_loss, b, params).mean(0) for b in tgts.values()])
    g = torch.cat([per_sample_grads_ref(model, lm_loss, b, params) for b in doms.values()])
    torch.testing.assert_close(res.unit_scores, g @ t.t(), rtol=1e-9, atol=1e-12)
    assert res.unit_domains.tolist() == [0] * 6 + [1] * 6 and res.unit_sizes.tolist() == [1] * 12


@pytest.mark.parametrize("mode", ["group", "per_sample"])
def test_parameter_selection(mode):
    model = _model()
    doms, tgts = make_data(n_domains=2, n_targets=1)
    # patterns and modules mixed; the tied head/tok weight is selected through its alias "head.weight"
    sel = ["fc*.weight", model.ln, "head.weight"]
    res = GroupInfluence(model, lm_loss, k=None, mode=mode, params=sel, progress=False,
                         n_bootstrap=0).compute(doms, tgts)
    names = ["tok.weight", "ln.weight", "ln.bias", "fc1.weight", "fc2.weight"]
    ref = influence_ref(model, lm_loss, doms, tgts, params=params_of(model, names))
    torch.testing.assert_close(res.S, ref, rtol=1e-9, atol=1e-12)


def test_frozen_parameters_can_be_selected_and_stay_frozen():
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    model.fc1.weight.requires_grad_(True)
    doms, tgts = make_data(n_domains=2, n_targets=1)
    before = snapshot(model)
    res = GroupInfluence(model, lm_loss, k=None, params=["fc2.*"], progress=False, n_bootstrap=0).compute(doms, tgts)
    assert_unchanged(model, before)
    for p in model.parameters():
        p.requires_grad_(True)
    ref = influence_ref(model, lm_loss, doms, tgts, params=params_of(model, ["fc2.weight", "fc2.bias"]))
    torch.testing.assert_close(res.S, ref, rtol=1e-9, atol=1e-12)


def test_per_sample_falls_back_to_torch_func_where_hooks_cannot_see_samples():
    # shared positions (looked up once for the whole batch) and a parameter used directly in forward need torch.func
    model = _model(shared_positions=True, extra_param=True)
    doms, tgts = make_data(n_domains=2, n_targets=2)
    res = GroupInfluence(model, lm_loss, k=None, mode="per_sample", progress=False, n_bootstrap=0).compute(doms, tgts)
    capture = res.layout["per_sample_capture"]
    assert capture["pos.weight"] == capture["gate"] == "func" and capture["fc1.weight"] == "hooks"
    torch.testing.assert_close(res.S, influence_ref(model, lm_loss, doms, tgts), rtol=1e-9, atol=1e-12)


def test_functional_weight_use_is_detected_and_handled():
    torch.manual_seed(1)
    model = FunctionalTie().double().eval()
    doms, tgts = make_data(n_domains=2, n_targets=1)
    gi = GroupInfluence(model, lm_loss, k=None, mode="per_sample", progress=False, n_bootstrap=0)
    with pytest.warns(RuntimeWarning, match="lin.weight"):
        res = gi.compute(doms, tgts)
    torch.testing.assert_close(res.S, influence_ref(model, lm_loss, doms, tgts), rtol=1e-9, atol=1e-12)


def test_batchnorm_in_train_mode_makes_per_sample_undefined():
    class BN(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(32, 8)
            self.bn = nn.BatchNorm1d(8)
            self.out = nn.Linear(8, 32)

        def forward(self, idx):
            x = self.emb(idx)
            return self.out(self.bn(x.transpose(1, 2)).transpose(1, 2))

    torch.manual_seed(0)
    model = BN().double().train()
    doms, tgts = make_data(n_domains=1, n_targets=1)
    before = snapshot(model)
    buffers = [b.clone() for b in model.buffers()]
    with pytest.raises(RuntimeError, match="per-sample gradient"):
        GroupInfluence(model, lm_loss, k=None, mode="per_sample", progress=False).compute(doms, tgts)
    assert_unchanged(model, before)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers())), "running statistics changed"
    # excluding the batch-norm parameters does not help: the hooked parameters' per-sample gradients are coupled too
    with pytest.raises(RuntimeError, match="per-sample gradient"), pytest.warns(RuntimeWarning, match="emb.weight"):
        GroupInfluence(model, lm_loss, k=None, mode="per_sample", params=["emb.*", "out.*"],
                       progress=False).compute(doms, tgts)
    assert_unchanged(model, before)


class _Flattening(TinyLM):
    """Applies the head to a flattened [B·T, d] view: the head's input is not sample-major."""

    def forward(self, idx):
        b, t = idx.shape
        pos = torch.arange(t, device=idx.device).expand(b, t)
        x = self.tok(idx) + self.pos(pos)
        x = x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln(x))))
        return self.head(self.ln_f(x).reshape(b * t, -1)).view(b, t, -1)


def test_per_sample_handles_modules_whose_input_is_not_sample_major():
    torch.manual_seed(0)
    model = _Flattening(tied=False).double().eval()
    doms, tgts = make_data(n_domains=2, n_targets=1)
    res = GroupInfluence(model, lm_loss, k=None, mode="per_sample", progress=False, n_bootstrap=0).compute(doms, tgts)
    params = [p for p in model.parameters() if p is not model.mix.weight]  # mix is unused by this forward
    ref = influence_ref(model, lm_loss, doms, tgts, params=params)
    torch.testing.assert_close(res.S, ref, rtol=1e-9, atol=1e-12)


class _HookRules(nn.Module):
    """Every hook rule: Embedding with padding_idx, RMSNorm, LayerNorm without bias, Linear with and without bias,
    a Linear called twice per forward."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(32, 8, padding_idx=0)
        self.rms = nn.RMSNorm(8)
        self.ln = nn.LayerNorm(8, bias=False)
        self.lin = nn.Linear(8, 8)
        self.out = nn.Linear(8, 32, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.add_(0.1 * torch.randn_like(p))

    def forward(self, idx):
        x = self.emb(idx)
        x = x + self.lin(self.rms(x))
        x = x + self.lin(torch.tanh(x))  # the same module twice
        return self.out(self.ln(x))


@pytest.mark.skipif(not hasattr(nn, "RMSNorm"), reason="nn.RMSNorm needs torch >= 2.4")
def test_every_hook_rule_matches_bruteforce():
    torch.manual_seed(2)
    model = _HookRules().double().eval()
    doms, tgts = make_data(n_domains=2, n_targets=2)
    doms["d0"][0][:, :3] = 0  # padding tokens
    gi = GroupInfluence(model, lm_loss, k=None, mode="per_sample", progress=False, n_bootstrap=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every parameter must stay on the hook path
        res = gi.compute(doms, tgts)
    assert set(res.layout["per_sample_capture"].values()) == {"hooks"}
    torch.testing.assert_close(res.S, influence_ref(model, lm_loss, doms, tgts), rtol=1e-9, atol=1e-12)
    params = params_of(model)
    g = torch.cat([per_sample_grads_ref(model, lm_loss, b, params) for b in doms.values()])
    t = torch.stack([per_sample_grads_ref(model, lm_loss, b, params).mean(0) for b in tgts.values()])
    torch.testing.assert_close(res.unit_scores, g @ t.t(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["group", "per_sample"])
def test_backward_stops_at_the_earliest_selected_parameter(mode):
    """Selecting the later layers makes a measured row cheaper: no gradient is formed below the earliest selected
    parameter (the self-check included), and S is that of the selected parameters."""
    from tikmix.models.gpt import GPT, GPTConfig, sequence_loss

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, d_model=32, seq_len=16)).double().eval()
    reached: list[str] = []
    hooks = [p.register_hook(lambda g, n=n: reached.append(n)) for n, p in model.named_parameters()]
    x = torch.randint(0, 256, (8, 17))
    doms, tgts = {"a": [x[:4]], "b": [x[4:]]}, {"t": [x]}
    res = GroupInfluence(model, sequence_loss, k=None, mode=mode, params="blocks.1.*", progress=False,
                         n_bootstrap=0, verify=True).compute(doms, tgts)
    for h in hooks:
        h.remove()
    assert reached and all(n.startswith("blocks.1.") for n in reached), sorted(set(reached))
    names = [n for n, _ in model.named_parameters() if n.startswith("blocks.1.")]
    ref = influence_ref(model, sequence_loss, doms, tgts, params=params_of(model, names))
    torch.testing.assert_close(res.S, ref, rtol=1e-9, atol=1e-12)

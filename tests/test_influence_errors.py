"""Bad input raises a clear error naming the problem, and the model is left exactly as it was (parameters, grads,
hooks, train/eval mode, requires_grad flags), in both modes."""
from __future__ import annotations

import pytest
import torch

from influence_testing import TinyLM, assert_unchanged, lm_loss, make_data, one_thread, snapshot  # noqa: F401
from tikmix.influence import GroupInfluence

pytestmark = pytest.mark.usefixtures("one_thread")

MODES = ["group", "per_sample"]


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = TinyLM(d=8)
    m.train()
    m.ln.eval()  # a mixed mode pattern that must survive
    m.fc1.weight.grad = torch.ones_like(m.fc1.weight)  # a caller's gradient that must survive untouched
    return m


def _run(model, doms, tgts, mode="group", loss_fn=lm_loss, **kw):
    kw.setdefault("k", 64)
    return GroupInfluence(model, loss_fn, mode=mode, progress=False, n_bootstrap=0, **kw).compute(doms, tgts)


@pytest.mark.parametrize("mode", MODES)
def test_success_leaves_model_unchanged(model, mode):
    doms, tgts = make_data()
    before = snapshot(model)
    _run(model, doms, tgts, mode)
    assert_unchanged(model, before)


@pytest.mark.parametrize("mode", MODES)
def test_empty_domain(model, mode):
    doms, tgts = make_data()
    doms["d1"] = []
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"domains\['d1'\] yielded no samples"):
        _run(model, doms, tgts, mode)
    assert_unchanged(model, before)
    tgts["t0"] = iter(())
    doms, _ = make_data()
    with pytest.raises(ValueError, match=r"targets\['t0'\] yielded no samples"):
        _run(model, doms, tgts, mode)
    assert_unchanged(model, before)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad,match", [
    (lambda m, b: lm_loss(m, b).mean(), "per-sequence losses of shape \\[B\\].*scalar"),
    (lambda m, b: lm_loss(m, b).unsqueeze(1), "shape \\[B\\]"),
    (lambda m, b: lm_loss(m, b)[:-1], r"returned \d losses.*holds \d samples"),
    (lambda m, b: lm_loss(m, b).detach(), "do not depend on the selected parameters"),
    (lambda m, b: [lm_loss(m, b)], "must return a torch.Tensor"),
])
def test_loss_fn_protocol_violations(model, mode, bad, match):
    doms, tgts = make_data()
    before = snapshot(model)
    with pytest.raises((ValueError, TypeError), match=match):
        _run(model, doms, tgts, mode, loss_fn=bad)
    assert_unchanged(model, before)


@pytest.mark.parametrize("mode", MODES)
def test_nan_loss_in_a_later_batch(model, mode):
    doms, tgts = make_data()
    calls = {"n": 0}

    def sometimes_nan(m, b):
        calls["n"] += 1
        out = lm_loss(m, b)
        return out * float("nan") if calls["n"] == 4 else out

    before = snapshot(model)
    with pytest.raises(ValueError, match="non-finite loss"):
        _run(model, doms, tgts, mode, loss_fn=sometimes_nan)
    assert_unchanged(model, before)


@pytest.mark.parametrize("mode", MODES)
def test_mismatched_batch_types(model, mode):
    doms, tgts = make_data()
    doms["d2"] = [{"ids": b} for b in doms["d2"]]
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"mismatched batch types: domains\['d2'\] batch 0 is a dict\[ids\]"):
        _run(model, doms, tgts, mode)
    assert_unchanged(model, before)


def test_not_an_iterable_of_batches(model):
    doms, tgts = make_data()
    with pytest.raises(TypeError, match="wrap it in a list"):
        _run(model, {"d0": doms["d0"][0]}, tgts)
    with pytest.raises(TypeError, match="must be a mapping"):
        _run(model, list(doms.values()), tgts)
    with pytest.raises(ValueError, match="at least one entry"):
        _run(model, {}, tgts)
    with pytest.raises(TypeError, match="iterable of batches"):
        _run(model, {"d0": 3}, tgts)


@pytest.mark.parametrize("kw,err,match", [
    (dict(k=0), ValueError, r"k \(the sketch dimension, or None for exact\) must be >= 1"),
    (dict(k=-5), ValueError, r"k \(the sketch dimension, or None for exact\) must be >= 1"),
    (dict(k=2.5), TypeError, r"k \(the sketch dimension, or None for exact\) must be an int"),
    (dict(k=64, preconditioner="fisher"), ValueError, "preconditioner must be one of"),
    (dict(k=64, mode="token"), ValueError, "mode must be one of"),
    (dict(k=64, reduction="max"), ValueError, "reduction must be one of"),
    (dict(k=64, seed=-1), ValueError, "seed must be"),
    (dict(k=64, params="nothing.*"), ValueError, "matches no parameter"),
    (dict(k=64, params=[torch.nn.Linear(2, 2)]), ValueError, "not part of the model"),
    (dict(k=64, confidence=1.5), ValueError, "confidence"),
    (dict(k=2), ValueError, "smaller than the number of sketch blocks"),
])
def test_bad_arguments(model, kw, err, match):
    before = snapshot(model)
    with pytest.raises(err, match=match):
        GroupInfluence(model, lm_loss, **kw)
    assert_unchanged(model, before)


def test_a_pattern_that_matches_nothing_suggests_the_closest_module_and_lists_names():
    from tikmix.models import GPT, GPTConfig, sequence_loss

    gpt = GPT(GPTConfig(n_layer=2))
    with pytest.raises(ValueError) as info:
        GroupInfluence(gpt, sequence_loss, k=64, params="block.1.*")
    message = str(info.value)
    assert message.startswith("params pattern 'block.1.*' matches no parameter of the model (did you mean blocks.1.*?)")
    assert "its parameters include tok_emb.weight, pos_emb.weight, blocks.0.*, blocks.1.*" in message
    with pytest.raises(ValueError, match=r"^params pattern 'zzz' matches no parameter of the model; its parameters"):
        GroupInfluence(gpt, sequence_loss, k=64, params="zzz")
    with pytest.raises(ValueError, match="null in a run config"):
        GroupInfluence(gpt, sequence_loss, k=64, params=[])


def test_computing_under_no_grad_still_works(model):
    doms, tgts = make_data()
    with torch.no_grad():
        res = _run(model, doms, tgts)
    assert torch.isfinite(res.S).all()

"""The first-order check: S predicts the measured change of each target loss after one small SGD step on a domain.

For the mean convention, one SGD step on domain j's mean loss, θ' = θ − lr·G_j, changes target i's loss by
ΔL_i ≈ −lr·S_ij (sign convention: tikmix.influence.result). Step size: lr = 0.005 (float64 model). For the sum
convention the step is on the summed loss (θ' = θ − lr·Σ∇ℓ), lr = 0.005 / |S_j|. The model has D = 6624 parameters;
the sketched cases use k = 2048 (k/D ≈ 0.31). 4 domains × 3 targets = 12 pairs.
"""
from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from influence_testing import TinyLM, domain_batches, lm_loss, one_thread  # noqa: F401
from tikmix.influence import GroupInfluence

pytestmark = pytest.mark.usefixtures("one_thread")

LR = 0.005


def _data(seed: int):
    """4 domains on disjoint token ranges; target i is fresh text from domain i's distribution (i < 3)."""
    doms = {f"d{j}": domain_batches(seed + j, 2, 4, low=8 * j, high=8 * j + 8) for j in range(4)}
    tgts = {f"t{i}": domain_batches(seed + 100 + i, 1, 6, low=8 * i, high=8 * i + 8) for i in range(3)}
    return doms, tgts


def _trained_model() -> TinyLM:
    """A tiny LM a few SGD steps into training on a mixture of all domains."""
    torch.manual_seed(0)
    model = TinyLM(d=32).double()
    doms, _ = _data(seed=50)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(10):
        for batches in doms.values():
            opt.zero_grad()
            lm_loss(model, batches[0]).mean().backward()
            opt.step()
    return model.eval()


def _target_loss(model, batches) -> float:
    with torch.no_grad():
        return float(torch.cat([lm_loss(model, b) for b in batches]).mean())


def _measured(model, doms, tgts, reduction: str) -> torch.Tensor:
    """ΔL[i, j]: change of target i's loss after one SGD step on domain j's mean (or summed) loss."""
    base = [_target_loss(model, b) for b in tgts.values()]
    out = torch.zeros(len(tgts), len(doms), dtype=torch.float64)
    for j, batches in enumerate(doms.values()):
        losses = torch.cat([lm_loss(model, b) for b in batches])
        loss = losses.mean() if reduction == "mean" else losses.sum()
        lr = LR if reduction == "mean" else LR / losses.numel()
        grads = torch.autograd.grad(loss, list(model.parameters()))
        saved = [p.detach().clone() for p in model.parameters()]
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p.sub_(lr * g)
        for i, b in enumerate(tgts.values()):
            out[i, j] = _target_loss(model, b) - base[i]
        with torch.no_grad():
            for p, s in zip(model.parameters(), saved):
                p.copy_(s)
    return out


@pytest.mark.parametrize("k,mode,reduction,min_rho", [
    (None, "group", "mean", 0.97),
    (None, "per_sample", "sum", 0.97),
    (2048, "group", "mean", 0.9),
    (2048, "per_sample", "mean", 0.9),
])
def test_S_predicts_the_loss_change_of_one_sgd_step(k, mode, reduction, min_rho):
    model = _trained_model()
    doms, tgts = _data(seed=5)
    res = GroupInfluence(model, lm_loss, k=k, seed=1, mode=mode, reduction=reduction, progress=False,
                         n_bootstrap=0).compute(doms, tgts)
    measured = _measured(model, doms, tgts, reduction)
    lr = LR if reduction == "mean" else LR / res.domain_samples.double().unsqueeze(0)
    predicted = -lr * res.S
    rho = spearmanr(predicted.flatten().numpy(), measured.flatten().numpy()).statistic
    assert rho >= min_rho, (rho, predicted, measured)
    if k is None:  # first order: exact S predicts the change itself, not just its order
        err = (predicted - measured).abs().max() / measured.abs().max()
        assert err < 0.1, (predicted, measured)

"""Diagnostics: Kendall τ (vectorised τ-b vs scipy; between results), rank stability, bootstrap intervals, the
result's summary/to_dict, and the progress bar."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from influence_testing import TinyLM, lm_loss, make_data, one_thread  # noqa: F401
from tikmix.influence import GroupInfluence, InfluenceResult, kendall_tau, rank_stability
from tikmix.influence.diagnostics import bootstrap, kendall_tau_b_rows

pytestmark = pytest.mark.usefixtures("one_thread")


def test_vectorised_tau_b_equals_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (50, 7), generator=g).double()  # many ties
    y = torch.randint(0, 4, (50, 7), generator=g).double()
    ours = kendall_tau_b_rows(x, y)
    ref = [kendalltau(a.numpy(), b.numpy()).statistic for a, b in zip(x, y)]
    np.testing.assert_allclose(ours.numpy(), np.array(ref), rtol=1e-12, atol=1e-12)
    assert torch.isnan(kendall_tau_b_rows(torch.ones(1, 4), torch.arange(4.0).view(1, 4))).all()


def _result(S, domains=("a", "b", "c"), targets=("x", "y")) -> InfluenceResult:
    S = torch.as_tensor(S, dtype=torch.float64)
    z = torch.zeros(len(domains), dtype=torch.int64)
    return InfluenceResult(S=S, domains=tuple(domains), targets=tuple(targets), reduction="mean", mode="group",
                           preconditioner="identity", sketch_dim=8, seed=0, domain_samples=z + 1, domain_tokens=z,
                           domain_batches=z + 1, target_samples=torch.ones(len(targets), dtype=torch.int64),
                           target_tokens=torch.zeros(len(targets), dtype=torch.int64), unit="micro-batch",
                           unit_scores=torch.zeros(0, len(targets)), unit_domains=z[:0], unit_sizes=z[:0],
                           domain_sketches=torch.zeros(len(domains), 8), target_sketches=torch.zeros(len(targets), 8))


def test_kendall_tau_between_results_matches_domains_by_name():
    a = _result([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    same = _result([[1.0, 3.0, 2.0], [3.0, 1.0, 2.0]], domains=("c", "a", "b"))  # same orders, permuted columns
    rev = _result([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert kendall_tau(a, same).tau == (1.0, 1.0)
    agreement = kendall_tau(a, rev)
    assert agreement.tau == (-1.0, -1.0) and agreement.mean_tau == -1.0 and agreement.targets == ("x", "y")
    json.dumps(agreement.to_dict())
    np.testing.assert_allclose(kendall_tau(a.S.numpy(), rev.S).tau, (-1.0, -1.0))
    m = rank_stability([a, same, rev])
    np.testing.assert_allclose(m, [[1, 1, -1], [1, 1, -1], [-1, -1, 1]])
    with pytest.raises(ValueError, match="different domains"):
        kendall_tau(a, _result([[1.0, 2.0, 3.0]] * 2, domains=("a", "b", "z")))
    with pytest.raises(ValueError, match="at least two results"):
        rank_stability([a])


def test_bootstrap_is_seeded_and_covers_the_truth():
    g = torch.Generator().manual_seed(1)
    n_units, true_mean = 400, torch.tensor([[1.0, -0.5]])
    ids = torch.arange(n_units) % 2
    scores = torch.randn(n_units, 1, generator=g, dtype=torch.float64) + true_mean[0, ids].unsqueeze(1)
    sizes = torch.ones(n_units, dtype=torch.int64)
    point = torch.stack([scores[ids == j].mean(0) for j in range(2)], 1)  # [1, 2]
    kw = dict(reduction="mean", n_bootstrap=500, confidence=0.95)
    b1 = bootstrap(scores, ids, sizes, 2, point, seed=3, **kw)
    b2 = bootstrap(scores, ids, sizes, 2, point, seed=3, **kw)
    assert torch.equal(b1["low"], b2["low"]) and torch.equal(b1["high"], b2["high"])
    assert (b1["low"] <= point).all() and (point <= b1["high"]).all()
    assert (b1["low"] <= true_mean).all() and (true_mean <= b1["high"]).all()
    width = b1["high"] - b1["low"]  # ≈ 2·1.96·1/√200
    assert torch.allclose(width, torch.full_like(width, 2 * 1.96 / 200**0.5), rtol=0.25)
    assert b1["rank_stability"].item() == 1.0  # the two domains are far apart: the ranking never flips
    # sum reduction scales with the unit count; one unit per domain gives no interval
    one = bootstrap(scores[:2], ids[:2], sizes[:2], 2, point, seed=0, **kw)
    assert torch.isnan(one["low"]).all()


def test_result_intervals_summary_and_dict():
    torch.manual_seed(0)
    model = TinyLM(d=8).eval()
    doms, tgts = make_data(n_domains=3, n_targets=2, n_batches=3)
    for mode in ("group", "per_sample"):
        res = GroupInfluence(model, lm_loss, k=128, mode=mode, n_bootstrap=200, progress=False).compute(doms, tgts)
        assert res.ci_low is not None and res.ci_low.shape == res.S.shape
        assert (res.ci_low <= res.ci_high).all()
        assert res.rank_stability.shape == (2,) and ((res.rank_stability >= -1) & (res.rank_stability <= 1)).all()
        assert res.unit == ("sample" if mode == "per_sample" else "micro-batch")
        ranking = res.ranking("t0")
        assert sorted(ranking) == ["d0", "d1", "d2"]
        assert res.score("t0", ranking[0]) == float(res.S[0].max())
        text = res.summary()
        assert "larger = more helpful" in text and "t1" in text and " > ".join(ranking) in text
        d = res.to_dict(include_scores=True)
        json.dumps(d)
        assert d["S"] == res.S.tolist() and len(d["unit_scores"]) == res.unit_scores.shape[0]
        again = GroupInfluence(model, lm_loss, k=128, mode=mode, n_bootstrap=200, progress=False).compute(doms, tgts)
        assert torch.equal(res.S, again.S) and torch.equal(res.ci_low, again.ci_low)  # deterministic for a seed
    with pytest.raises(KeyError, match="unknown target"):
        res.ranking("nope")


def test_progress_bar_counts_micro_batches(capsys):
    torch.manual_seed(0)
    model = TinyLM(d=8).eval()
    doms, tgts = make_data(n_domains=2, n_targets=1, n_batches=2)
    GroupInfluence(model, lm_loss, k=64, progress=True, n_bootstrap=0).compute(doms, tgts)
    err = capsys.readouterr().err
    assert "influence" in err and "0/5" in err  # total = 4 domain + 1 target micro-batches

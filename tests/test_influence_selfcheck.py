"""The per-sample self-check (verify=True): 2-D weights compared through check sketches, the probe samples'
reference from their own forward/backward in eval mode, and its failure paths."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from influence_testing import FunctionalTie, influence_ref, lm_loss, make_data, one_thread  # noqa: F401
from tikmix.influence import GroupInfluence

pytestmark = pytest.mark.usefixtures("one_thread")


class _BatchCoupled(nn.Module):
    """Subtracts the batch mean in eval mode: every sample's loss depends on the others."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(32, 16)
        self.lin = nn.Linear(16, 32)

    def forward(self, idx):
        x = self.emb(idx)
        return self.lin(x - 0.5 * x.mean(0, keepdim=True))


def test_sketched_check_detects_a_weight_used_outside_its_module():
    torch.manual_seed(1)
    model = FunctionalTie(width=32, tie_scale=0.5).double().eval()
    doms, tgts = make_data(n_domains=2, n_targets=1)
    gi = GroupInfluence(model, lm_loss, k=None, mode="per_sample", progress=False, n_bootstrap=0)
    with pytest.warns(RuntimeWarning, match="lin.weight"):
        res = gi.compute(doms, tgts)
    assert res.layout["per_sample_capture"]["lin.weight"] == "func"
    assert res.layout["per_sample_capture"]["out.weight"] == "hooks"  # 1024 entries: a sketched check passed
    torch.testing.assert_close(res.S, influence_ref(model, lm_loss, doms, tgts), rtol=1e-9, atol=1e-12)


def test_samples_coupled_in_eval_mode_are_refused():
    torch.manual_seed(0)
    model = _BatchCoupled().double().eval()
    doms, tgts = make_data(n_domains=2, n_targets=1)
    with pytest.raises(RuntimeError, match="couples the samples"), pytest.warns(RuntimeWarning):
        GroupInfluence(model, lm_loss, k=64, mode="per_sample", progress=False, n_bootstrap=0).compute(doms, tgts)


def test_probe_reference_is_its_own_small_batch_in_eval_mode():
    torch.manual_seed(0)
    model = FunctionalTie(width=32, tie_scale=0.5)
    model.lin.weight.requires_grad_(False)  # no functional use left among the selected parameters
    model.eval()
    doms, tgts = make_data(n_domains=2, n_targets=1, batch_size=4)
    sizes = []

    def counting_loss(m, batch):
        sizes.append(batch.shape[0])
        return lm_loss(m, batch)

    GroupInfluence(model, counting_loss, k=64, mode="per_sample", params=["emb.*", "out.*"], progress=False,
                   n_bootstrap=0).compute(doms, tgts)
    # targets: 1 batch of 5; domains: 2 batches of 4 each, the first of each verified with a probe batch of 2
    assert sizes == [5, 4, 2, 4, 4, 2, 4]
    sizes.clear()
    model.train()  # dropout would draw anew in a second forward: the probe goes through the batch's own graph
    GroupInfluence(model, counting_loss, k=64, mode="per_sample", params=["emb.*", "out.*"], progress=False,
                   n_bootstrap=0).compute(doms, tgts)
    assert sizes == [5, 4, 4, 4, 4]

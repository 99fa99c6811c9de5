"""Group mode on an FSDP2-sharded model, with a decision that shrinks by group-mode intervals: the Controller splits
every global micro-batch over the ranks, so a bootstrap unit (one step of all ranks) is one process's micro-batch and
the intervals, unit sizes and shrink factors at 2 gloo ranks equal one unsharded process's."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_testing import end_worker, free_port
from influence_testing import SEQ, VOCAB, TinyLM, lm_loss

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

DECISION = {"objective": "paper", "shrink": "ci"}


def _measure(model):
    from tikmix.controller import Controller
    from tikmix.data import MixtureSampler

    g = torch.Generator().manual_seed(0)
    # 13 samples per domain in micro-batches of 2: 7 units, the last of one sample (rank 1 has none of it)
    domains = {n: torch.randint(0, VOCAB, (20, SEQ + 1), generator=g) for n in ("a", "b", "c")}
    targets = {"t": torch.randint(0, VOCAB, (5, SEQ + 1), generator=g)}
    sampler = MixtureSampler([20, 20, 20], [1 / 3] * 3, batch_size=4, seed=1, rank=0, world_size=1)
    ctrl = Controller(model, sampler, domains=domains, targets=targets, loss_fn=lm_loss, stages=[4],
                      influence={"k": 48, "n_bootstrap": 50, "mode": "group"}, samples_per_domain=13, batch_size=2,
                      seed=3, decision=DECISION)
    res = ctrl._influence.compute(*ctrl._influence_inputs(0))
    S_used, info = ctrl.decision.effective_S(res.S.numpy(), res.ci_low.numpy(), res.ci_high.numpy(), unit=res.unit)
    return {"S": res.S, "low": res.ci_low, "high": res.ci_high, "sizes": res.unit_sizes, "ids": res.unit_domains,
            "factor": np.asarray(info["shrink_factor"])}


def _model() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(d=8).eval()


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = _model()
    mesh = init_device_mesh("cpu", (world,))
    for block in (model.fc1, model.fc2, model.mix):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    torch.save(_measure(model), os.path.join(out_dir, f"rank{rank}.pt"))
    end_worker()



def test_sharded_group_mode_intervals_equal_one_process(tmp_path):
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ref = _measure(_model())
    assert ref["sizes"].tolist() == [2] * 6 + [1] + [2] * 6 + [1] + [2] * 6 + [1]
    scale = float(ref["S"].abs().max())
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert torch.equal(got["sizes"], ref["sizes"]) and torch.equal(got["ids"], ref["ids"])
        for key in ("S", "low", "high"):
            torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-5 * scale, msg=f"{key}, rank {rank}")
        np.testing.assert_allclose(got["factor"], ref["factor"], atol=1e-3)

"""Distributed: two gloo processes on the CPU, each with its own shard of every domain's and target's batches,
give the same result as one process on the union (S, counts, intervals, Gauss-Newton)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_testing import end_worker, free_port
from influence_testing import TinyLM, lm_loss, make_data, one_thread  # noqa: F401
from tikmix.influence import GroupInfluence

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = [dict(mode="group"), dict(mode="per_sample"), dict(mode="per_sample", preconditioner="gauss_newton"),
           dict(mode="group", preconditioner="gauss_newton")]


def _data():
    doms, tgts = make_data(n_domains=3, n_targets=2, n_batches=3)
    doms["d1"] = doms["d1"][:1]  # one batch only: rank 1 holds no batch of d1
    return doms, tgts


def _shard(batches, rank: int, world: int):
    """Contiguous shards in rank order (rank 0 takes the first ceil(n/world) batches)."""
    per = -(-len(batches) // world)
    return batches[rank * per : (rank + 1) * per]


def _compute(doms, tgts):
    torch.manual_seed(0)
    model = TinyLM(d=8).eval()
    return [GroupInfluence(model, lm_loss, k=64, seed=3, progress=False, n_bootstrap=100, **cfg).compute(doms, tgts)
            for cfg in CONFIGS]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    doms, tgts = _data()
    doms = {k: _shard(v, rank, world) for k, v in doms.items()}
    tgts = {k: _shard(v, rank, world) for k, v in tgts.items()}
    results = _compute(doms, tgts)
    torch.save([{"S": r.S, "samples": r.domain_samples, "tokens": r.domain_tokens, "batches": r.domain_batches,
                 "targets": r.target_samples, "target_loss": r.target_loss, "low": r.ci_low, "high": r.ci_high, "scores": r.unit_scores,
                 "damping": r.gauss_newton_damping} for r in results],
               os.path.join(out_dir, f"rank{rank}.pt"))
    end_worker()



@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_gloo_ranks_equal_one_process_on_the_union(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    single = _compute(*_data())
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for cfg, ref, res in zip(CONFIGS, single, got):
            torch.testing.assert_close(res["S"], ref.S, rtol=1e-5, atol=1e-7 * float(ref.S.abs().max()), msg=str(cfg))
            assert torch.equal(res["samples"], ref.domain_samples) and torch.equal(res["tokens"], ref.domain_tokens)
            assert torch.equal(res["batches"], ref.domain_batches) and torch.equal(res["targets"], ref.target_samples)
            torch.testing.assert_close(res["scores"], ref.unit_scores, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(res["target_loss"], ref.target_loss, rtol=1e-6, atol=0)
            torch.testing.assert_close(res["low"], ref.ci_low, rtol=1e-5, atol=1e-7, equal_nan=True)
            torch.testing.assert_close(res["high"], ref.ci_high, rtol=1e-5, atol=1e-7, equal_nan=True)
            if ref.gauss_newton_damping is not None:
                assert res["damping"] == pytest.approx(ref.gauss_newton_damping, rel=1e-6)

"""MixtureSampler under torch.distributed (gloo, 2 processes): rank/world_size defaults and realised counts
summed over ranks with all_reduce."""

from __future__ import annotations

import sys
from itertools import islice

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_testing import end_worker
from tikmix.data import MixtureSampler

SIZES = [40, 30, 20]
WEIGHTS = [0.5, 0.25, 0.25]
BATCH = 8
TAKE = {0: 2 * 4 + 3, 1: 2 * 4 + 1}  # each rank: 2 full steps, then part of step 2


def _worker(rank: int, world: int, init: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    s = MixtureSampler(SIZES, WEIGHTS, batch_size=BATCH, seed=5, tokens_per_sample=16)
    assert (s.rank, s.world_size, s.local_batch_size) == (rank, world, BATCH // world)
    mine = list(islice(iter(s), TAKE[rank]))
    ref = MixtureSampler(SIZES, WEIGHTS, batch_size=BATCH, seed=5)
    glob = ref.global_indices(0, 3).reshape(3, BATCH)
    per = BATCH // world
    assert mine == glob[:2, rank * per : (rank + 1) * per].ravel().tolist() + \
        glob[2, rank * per : rank * per + TAKE[rank] - 2 * per].tolist()
    rc = s.realised_counts()  # collective: both ranks call it
    taken = list(glob[:2].ravel()) + [
        x for r in range(world) for x in glob[2, r * per : r * per + TAKE[r] - 2 * per]
    ]
    dom, _ = ref.locate(np.asarray(taken))
    expected = np.bincount(dom, minlength=3).tolist()
    assert list(rc.samples) == expected, (rc.samples, expected)
    assert list(rc.tokens) == [16 * x for x in expected]
    assert rc.step == 2
    end_worker()


@pytest.mark.skipif(not dist.is_available() or sys.platform != "linux", reason="needs torch.distributed on Linux")
def test_two_rank_gloo_defaults_and_all_reduced_counts(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_worker, args=(2, init), nprocs=2, start_method="fork", join=True)

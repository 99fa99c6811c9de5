"""Group Influence on an FSDP2-sharded model and on DDP-style replicas (2 processes) vs one process.

Each setup is launched by ``bench_influence_fsdp.py``'s ``_launch`` (torchrun for the two-rank setups); its
workers time one ``GroupInfluence.compute`` and its added peak memory themselves (min over ``rounds``). Those inner
numbers go into ``extra_info`` (``inner_s``: the slowest rank), which ``tables.py`` reports; pytest-benchmark's own
time of the launch (process start-up included) is what ``--benchmark-compare`` compares.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch.distributed as dist

from bench_influence_fsdp import _launch

CONFIGS = {
    "smoke": dict(d_model=32, layers=1, vocab=256, seq=16, batch=2, batches=2, domains=2, k=64, rounds=1),
    "quick": dict(d_model=256, layers=4, vocab=4096, seq=64, batch=4, batches=4, domains=2, k=1024, rounds=2),
    "full": dict(d_model=512, layers=6, vocab=16384, seq=128, batch=4, batches=4, domains=2, k=4096, rounds=2),
}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("setup", ["single", "ddp", "fsdp"])
def test_influence_fsdp_cpu(measure, size: str, setup: str, tmp_path: Path) -> None:
    c = CONFIGS[size]
    args = argparse.Namespace(device="cpu", threads=1, **c)
    rows = measure(lambda: _launch(setup, args, tmp_path), rounds=1, warmup=0,
                   role="baseline" if setup == "single" else "case", setup=setup,
                   group=f"influence FSDP CPU d_model={c['d_model']} layers={c['layers']} k={c['k']}")
    assert len(rows) == (1 if setup == "single" else 2)
    inner = max(r["time_s"] for r in rows)
    peak = max(r["peak_added_bytes"] for r in rows)
    measure.benchmark.extra_info.update(inner_s=inner, peak_added_mib=peak / 2**20, params=rows[0]["params"])

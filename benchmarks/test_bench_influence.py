"""Group Influence (group and per-sample modes) vs one plain forward+backward over the same micro-batches.

Model, data and the phase runners come from ``bench_influence.py``'s ``_setup``.
"""
from __future__ import annotations

import argparse

import pytest

from bench_influence import PHASES, _setup

CONFIGS = {
    "smoke": dict(d_model=32, layers=1, heads=2, seq=16, batch=2, batches=2, domains=2, k=64),
    "quick": dict(d_model=128, layers=2, heads=4, seq=64, batch=8, batches=2, domains=3, k=1024),
    "full": dict(d_model=256, layers=4, heads=4, seq=128, batch=8, batches=4, domains=3, k=2048),
}


@pytest.fixture(scope="module")
def runners(size: str) -> dict:
    args = argparse.Namespace(device="cpu", dtype="fp32", params="all", threads=1, **CONFIGS[size])
    return _setup(args)


@pytest.mark.parametrize("phase", PHASES)
def test_influence_cpu(measure, runners, phase: str, size: str) -> None:
    c = CONFIGS[size]
    measure(runners["runners"][phase], rounds=3, role="baseline" if phase == "fwd+bwd" else "case",
            group=f"influence CPU d_model={c['d_model']} layers={c['layers']} tokens={runners['tokens']} k={c['k']}",
            phase=phase, parameters=runners["parameters"], tokens=runners["tokens"])

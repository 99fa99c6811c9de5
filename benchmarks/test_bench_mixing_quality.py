"""Mixing quality on real text (``mixing_quality.py``): TiKMiX-D and TiKMiX-M vs a uniform mixture, one seed, target set A.

Corpus, settings and runs come from ``mixing_quality.py`` (``build_corpus``, ``write_corpus``, ``settings_for`` via
``_run_one``: one :func:`tikmix.run.train` per run):
``smoke`` and ``quick`` use its ``--quick`` sizes, ``full`` its full run for seed 0. The time is one training run
of the method (after an untimed one); the held-out test losses go into ``extra_info`` (``mean_test_loss``, and per target), which
``tables.py`` shows beside the time. ``python benchmarks/mixing_quality.py`` runs several seeds with paired
bootstrap intervals.
"""
from __future__ import annotations

import argparse
import numpy as np
import pytest

import mixing_quality as mq


@pytest.fixture(scope="module")
def quality_args(size: str, tmp_path_factory) -> argparse.Namespace:
    return argparse.Namespace(quick=size != "full", steps=1200, bytes_per_domain=4_000_000, threads=1,
                              methods=["uniform", "tikmix-d", "tikmix-m"], jobs=1, sets=["A"],
                              proxies=16, proxy_fraction=8, target_samples=0,
                              out=tmp_path_factory.mktemp("mixing_quality"), report_only=False)


@pytest.fixture(scope="module")
def data(quality_args: argparse.Namespace):
    corpus, _ = mq.build_corpus(*mq._corpus_args(quality_args))
    return mq.write_corpus(corpus, quality_args.out / "corpus")


@pytest.mark.parametrize("method", ["uniform", "tikmix-d", "tikmix-m"])
def test_mixing_quality(measure, quality_args, data, method: str) -> None:
    mq._init_worker(data, quality_args.threads)
    # one untimed run first: the first run in a process also pays one-time start-up costs
    run = measure(lambda: mq._run_one((quality_args, method, 0, "all" if method == "uniform" else "A", None)), rounds=1, warmup=1,
                  role="baseline" if method == "uniform" else "case", method=method,
                  group=f"mixing quality on real text, seed 0, {'quick' if quality_args.quick else 'full'} run")
    losses = run["final"]
    assert losses and all(np.isfinite(v) for v in losses.values())
    measure.benchmark.extra_info.update(mean_test_loss=float(np.mean(list(losses.values()))),
                                        **{f"test_loss/{t}": float(v) for t, v in losses.items()})

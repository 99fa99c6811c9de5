"""MixtureIterableDataset / MixtureSampler under torchdata's StatefulDataLoader: exact resume with 0 and 2 workers."""
from __future__ import annotations

import json

import pytest
import torch

stateful = pytest.importorskip("torchdata.stateful_dataloader")
StatefulDataLoader = stateful.StatefulDataLoader

from tikmix import MixtureIterableDataset, MixtureSampler  # noqa: E402

SIZES = (13, 7, 21)


class Seekable:
    """A source with ``iter_from`` (opened at an offset) and ``len``."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def iter_from(self, offset):
        return iter(self.items[offset:])


def _sources(seekable: bool):
    lists = [[1000 * j + i for i in range(n)] for j, n in enumerate(SIZES)]
    return [Seekable(x) for x in lists] if seekable else lists


def _dataset(seekable=False):
    ds = MixtureIterableDataset(_sources(seekable), [0.5, 0.2, 0.3], batch_size=4, seed=11)
    ds.set_weights([0.1, 0.6, 0.3], at_step=5)  # a schedule change inside the resumed part
    return ds


def _take(it, n):
    return [next(it).tolist() for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("cut", [1, 4, 7])
def test_iterable_resumes_exactly(workers, cut):
    total = 12
    ref = _take(iter(StatefulDataLoader(_dataset(), batch_size=4, num_workers=0)), total)
    loader = StatefulDataLoader(_dataset(), batch_size=4, num_workers=workers)
    it = iter(loader)
    first = _take(it, cut)
    state = json.loads(json.dumps(loader.state_dict()))  # what a checkpoint holds
    del it, loader
    again = StatefulDataLoader(_dataset(), batch_size=4, num_workers=workers)
    again.load_state_dict(state)
    rest = _take(iter(again), total - cut)
    assert first + rest == ref  # nothing lost, nothing repeated, same order as one process


def test_iterable_workers_resume_with_seekable_sources():
    ref = _take(iter(StatefulDataLoader(_dataset(True), batch_size=4, num_workers=0)), 10)
    loader = StatefulDataLoader(_dataset(True), batch_size=4, num_workers=2)
    it = iter(loader)
    first = _take(it, 3)
    state = loader.state_dict()
    again = StatefulDataLoader(_dataset(True), batch_size=4, num_workers=2)
    again.load_state_dict(state)
    assert first + _take(iter(again), 7) == ref


def test_worker_state_is_marked_and_validated():
    ds = _dataset()
    plain = ds.state_dict()
    assert "worker" not in plain
    bad = dict(plain, worker={"id": 0})
    with pytest.raises(ValueError, match="'id' and 'num_workers'"):
        ds.load_state_dict(bad)


@pytest.mark.parametrize("workers", [0, 2])
def test_sampler_under_stateful_loader_resumes_exactly(workers):
    data = torch.arange(sum(SIZES))

    def make():
        s = MixtureSampler(SIZES, [0.5, 0.2, 0.3], batch_size=4, seed=11)
        s.set_weights([0.1, 0.6, 0.3], at_step=5)
        return s

    ref = _take(iter(StatefulDataLoader(data, sampler=make(), batch_size=4, num_workers=0)), 12)
    loader = StatefulDataLoader(data, sampler=make(), batch_size=4, num_workers=workers)
    it = iter(loader)
    first = _take(it, 5)
    state = loader.state_dict()
    again = StatefulDataLoader(data, sampler=make(), batch_size=4, num_workers=workers)
    again.load_state_dict(state)
    assert first + _take(iter(again), 7) == ref

"""Interrupt, save, resume (same or different world size, DataLoader workers): the global stream is
reproduced exactly, with no sample lost or repeated."""

from __future__ import annotations

import json
from itertools import islice

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from tikmix.data import MixtureSampler, concat_domains

SIZES = [23, 41, 7, 60]
BATCH = 12  # divisible by 1, 2, 3, 4


def make(rank=0, world_size=1, **kw):
    kw.setdefault("seed", 11)
    return MixtureSampler(SIZES, [0.4, 0.3, 0.1, 0.2], batch_size=BATCH, rank=rank, world_size=world_size, **kw)


def uninterrupted(steps, change=None, **kw):
    s = make(**kw)
    if change is not None:
        s.set_weights(change[1], at_step=change[0])
    it = iter(s)
    return [next(it) for _ in range(steps * BATCH)]


def run_ranks(world, state, steps, change=None, **kw):
    """Global stream of `steps` steps produced by `world` ranks (resumed from `state` if given)."""
    per = BATCH // world
    outs = []
    for r in range(world):
        s = make(rank=r, world_size=world, **kw)
        if state is not None:
            s.load_state_dict(json.loads(json.dumps(state)))  # state survives JSON
        if change is not None and state is None:
            s.set_weights(change[1], at_step=change[0])
        outs.append(list(islice(iter(s), steps * per)))
    glob = []
    for k in range(steps):
        for r in range(world):
            glob += outs[r][k * per : (k + 1) * per]
    return glob


@settings(max_examples=12, deadline=None)
@given(
    worlds=st.sampled_from([(1, 2), (2, 1), (4, 3), (3, 4), (1, 1), (2, 2)]),
    cut=st.integers(0, 25),
    change_at=st.integers(1, 30),
    seed=st.integers(0, 10**6),
)
def test_resume_on_another_world_size_reproduces_the_global_stream(worlds, cut, change_at, seed):
    before, after = worlds
    total = 30
    change = (change_at, [0.1, 0.1, 0.4, 0.4])
    ref = uninterrupted(total, change=change, seed=seed)
    # run `cut` steps on `before` ranks, save rank 0's state at the step boundary
    per = BATCH // before
    first = []
    samplers = [make(rank=r, world_size=before, seed=seed) for r in range(before)]
    for s in samplers:
        s.set_weights(change[1], at_step=change[0])
    iters = [iter(s) for s in samplers]
    for _ in range(cut):
        for it in iters:
            first += [next(it) for _ in range(per)]
    state = samplers[0].state_dict()
    assert state["step"] == cut and state["offset"] == 0
    rest = run_ranks(after, state, total - cut, seed=seed)
    assert first + rest == ref


@settings(max_examples=10, deadline=None)
@given(cut=st.integers(0, 12 * 8 - 1), seed=st.integers(0, 10**6))
def test_resume_mid_step_with_the_same_world_size(cut, seed):
    ref = uninterrupted(8, seed=seed)
    s = make(seed=seed)
    it = iter(s)
    head = [next(it) for _ in range(cut)]
    state = s.state_dict()
    assert (state["step"], state["offset"]) == divmod(cut, BATCH)
    r = make(seed=seed)
    r.load_state_dict(state)
    assert head + list(islice(iter(r), 8 * BATCH - cut)) == ref


def test_mid_step_state_refuses_another_world_size():
    s = make()
    it = iter(s)
    [next(it) for _ in range(5)]
    state = s.state_dict()
    other = make(rank=0, world_size=2)
    with pytest.raises(ValueError, match="same world size"):
        other.load_state_dict(state)
    assert list(islice(iter(other), 6)) == make(rank=0, world_size=2).local_indices(0, 1).tolist()


def test_state_dict_at_explicit_step_and_iterator_restarts_from_position():
    s = make()
    it = iter(s)
    [next(it) for _ in range(BATCH * 5)]
    st5 = s.state_dict(step=3)  # e.g. a prefetching loader ran ahead: training consumed 3 steps
    assert st5["step"] == 3 and st5["offset"] == 0
    r = make()
    r.load_state_dict(st5)
    assert list(islice(iter(r), BATCH)) == make().local_indices(3, 4).tolist()
    # a new iter() continues where the previous one stopped, and the old iterator stops
    it2 = iter(s)
    assert next(it2) == make().local_indices(5, 6)[0]
    assert list(it) == []


def test_load_state_dict_stops_live_iterators_and_seek_moves_the_position():
    s = make()
    it = iter(s)
    next(it)
    s.seek(7)
    assert list(it) == []
    assert list(islice(iter(s), BATCH)) == make().local_indices(7, 8).tolist()


def test_schedule_travels_in_the_state():
    s = make()
    s.set_weights([0, 0, 1, 0], at_step=4)
    st_ = s.state_dict()
    r = make()
    r.load_state_dict(st_)
    assert r.schedule == s.schedule
    assert np.array_equal(r.global_indices(0, 10), s.global_indices(0, 10))


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_with_workers_reproduces_the_stream_and_resumes(workers):
    dss = [TensorDataset(torch.arange(n) + 1000 * j) for j, n in enumerate(SIZES)]
    cat = concat_domains(dss)
    ref = [1000 * d + k for d, k in zip(*cat.locate(np.asarray(uninterrupted(10))))]
    s = make()
    loader = DataLoader(cat, batch_size=BATCH, sampler=s, num_workers=workers)
    got, it = [], iter(loader)
    for _ in range(4):
        got += next(it)[0].tolist()
    state = s.state_dict(step=4)  # the sampler may have run ahead with workers; training took 4 steps
    del it
    r = make()
    r.load_state_dict(state)
    loader2 = DataLoader(cat, batch_size=BATCH, sampler=r, num_workers=workers)
    for batch in islice(loader2, 6):
        got += batch[0].tolist()
    assert got == ref


def test_realised_counts_are_arithmetic_and_count_tokens():
    s = MixtureSampler([100, 100], [0.25, 0.75], batch_size=8, seed=0, tokens_per_sample=[10, 3])
    s.set_weights([1, 0], at_step=4)
    rc = s.realised_counts(step=6)
    assert rc.samples == (2 * 4 + 8 * 2, 6 * 4)
    assert rc.tokens == (10 * rc.samples[0], 3 * rc.samples[1])
    assert rc.requested == (1.0, 0.0)
    assert np.allclose(rc.requested_cumulative, [(2 * 4 + 16) / 48, 24 / 48])
    assert rc.as_dict()["realised"] == [0.5, 0.5]
    it = iter(s)
    [next(it) for _ in range(8 * 6 + 3)]
    assert s.realised_counts().samples[0] + s.realised_counts().samples[1] == 51

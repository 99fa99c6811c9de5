"""MixtureIterableDataset: same composition as MixtureSampler, per-domain stream order, DataLoader workers,
resume on another world size, seekable sources."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from tikmix.data import MixtureIterableDataset, MixtureSampler, TokenFileDataset, write_token_file

SIZES = [5, 9, 4]
WEIGHTS = [0.5, 0.3, 0.2]
BATCH = 12


def sources():
    return [[1000 * j + i for i in range(n)] for j, n in enumerate(SIZES)]


def make(**kw):
    kw.setdefault("seed", 2)
    kw.setdefault("batch_size", BATCH)
    return MixtureIterableDataset(sources(), WEIGHTS, **kw)


def expected_stream(steps, seed=2, change=None):
    """Reference: the sampler's domain for every slot, and each domain's items in source order, cycling."""
    s = MixtureSampler(SIZES, WEIGHTS, batch_size=BATCH, seed=seed)
    if change is not None:
        s.set_weights(change[1], at_step=change[0])
    dom, _ = s.locate(s.global_indices(0, steps))
    nxt = [0] * len(SIZES)
    out = []
    for d in dom.tolist():
        out.append(1000 * d + nxt[d] % SIZES[d])
        nxt[d] += 1
    return out


def test_same_composition_as_the_sampler_and_domains_read_in_order():
    ds = make(with_domain=True)
    got = list(islice(iter(ds), 20 * BATCH))
    assert [x[1] for x in got] == expected_stream(20)
    assert all(item // 1000 == d for d, item in got)


def test_weight_change_applies_from_its_step():
    ds = make()
    ds.set_weights([0, 0, 1], at_step=3)
    assert list(islice(iter(ds), 8 * BATCH)) == expected_stream(8, change=(3, [0, 0, 1]))


@pytest.mark.parametrize("workers", [1, 2])
def test_dataloader_workers_reproduce_the_single_process_stream(workers):
    ds = make(num_steps=7)
    loader = DataLoader(ds, batch_size=BATCH, num_workers=workers)
    got = torch.cat(list(loader)).tolist()
    assert got == expected_stream(7)


def test_workers_with_ranks_and_resume_from_a_step():
    world, steps, cut = 2, 9, 4
    per = BATCH // world
    ref = expected_stream(steps)
    state = make().state_dict(step=cut)  # training consumed `cut` global steps
    outs = []
    for r in range(world):
        ds = make(rank=r, world_size=world, num_steps=steps)
        ds.load_state_dict(state)
        outs.append(torch.cat(list(DataLoader(ds, batch_size=per, num_workers=2))).tolist())
    glob = [x for k in range(steps - cut) for r in range(world) for x in outs[r][k * per : (k + 1) * per]]
    assert glob == ref[cut * BATCH :]


@settings(max_examples=10, deadline=None)
@given(cut=st.integers(0, 9), worlds=st.sampled_from([(1, 2), (2, 1), (4, 3), (1, 1)]))
def test_resume_in_process_on_another_world_size(cut, worlds):
    before, after = worlds
    ref = expected_stream(10)
    per = BATCH // before
    dss = [make(rank=r, world_size=before) for r in range(before)]
    its = [iter(d) for d in dss]
    head = []
    for _ in range(cut):
        for it in its:
            head += [next(it) for _ in range(per)]
    state = dss[0].state_dict()
    assert (state["step"], state["offset"]) == (cut, 0)
    per2 = BATCH // after
    outs = []
    for r in range(after):
        d = make(rank=r, world_size=after)
        d.load_state_dict(state)
        outs.append(list(islice(iter(d), (10 - cut) * per2)))
    rest = [x for k in range(10 - cut) for r in range(after) for x in outs[r][k * per2 : (k + 1) * per2]]
    assert head + rest == ref


@settings(max_examples=10, deadline=None)
@given(cut=st.integers(0, 10 * BATCH - 1))
def test_resume_mid_step_in_process(cut):
    ref = expected_stream(10)
    ds = make()
    it = iter(ds)
    head = [next(it) for _ in range(cut)]
    again = make()
    again.load_state_dict(ds.state_dict())
    assert head + list(islice(iter(again), 10 * BATCH - cut)) == ref


class SeekableRange:
    """A source that can open at an offset, counting how many items it produced in all."""

    def __init__(self, n, base):
        self.n, self.base, self.produced = n, base, 0

    def __len__(self):
        return self.n

    def iter_from(self, start):
        for i in range(start, self.n):
            self.produced += 1
            yield self.base + i

    def __iter__(self):
        return self.iter_from(0)


def test_seekable_sources_are_opened_at_the_needed_offset():
    big = 10**6
    srcs = [SeekableRange(big, 0), SeekableRange(7, 10**7)]
    ds = MixtureIterableDataset(srcs, [0.5, 0.5], batch_size=8, seed=1)
    ds.seek(10**5)  # far into the stream
    got = list(islice(iter(ds), 16))
    s = MixtureSampler([big, 7], [0.5, 0.5], batch_size=8, seed=1)
    dom, _ = s.locate(s.global_indices(10**5, 10**5 + 2))
    expect, drawn = [], [4 * 10**5, 4 * 10**5]  # 4 samples of each domain per step before
    for d in dom.tolist():
        expect.append((0 if d == 0 else 10**7) + drawn[d] % (big if d == 0 else 7))
        drawn[d] += 1
    assert got == expect
    assert srcs[0].produced < 100  # it did not read through 400k items


def test_token_file_as_a_seekable_source(tmp_path):
    p = write_token_file(tmp_path / "a.tokens", np.arange(40) % 7, vocab_size=7)
    tf = TokenFileDataset(p, 4)
    ds = MixtureIterableDataset([tf, [torch.full((4,), -1)] * 3], [0.5, 0.5], batch_size=4, seed=0,
                                with_domain=True)
    got = list(islice(iter(ds), 40))
    firsts = [x[1] for x in got if x[0] == 0]
    assert all(torch.equal(a, tf[i % len(tf)]) for i, a in enumerate(firsts))


def test_exhaustion_with_declared_sizes():
    ds = MixtureIterableDataset(sources(), WEIGHTS, batch_size=BATCH, seed=2, max_epochs=2, exhaustion="redistribute",
                                drop_last=False)
    assert len(ds) == 2 * sum(SIZES)
    got = list(iter(ds))
    assert len(got) == 2 * sum(SIZES) and len(ds) == 0  # len() counts what is still to come
    for j, n in enumerate(SIZES):
        mine = [x for x in got if x // 1000 == j]
        assert mine == [1000 * j + i for i in range(n)] * 2


def test_realised_counts_match_what_was_yielded():
    ds = make(tokens_per_sample=4)
    it = iter(ds)
    got = [next(it) for _ in range(5 * BATCH + 5)]
    rc = ds.realised_counts()
    assert rc.samples == tuple(sum(1 for x in got if x // 1000 == j) for j in range(3))
    assert rc.tokens == tuple(4 * s for s in rc.samples)

"""MixtureSampler stream semantics: exact block counts, per-domain epochs, schedules, exhaustion, ranks.

References here are written independently of the implementation: weights are quantised by a Fraction-based
largest-remainder rule, block counts come from a sample-by-sample largest-deficit simulation in exact
fractions (with explicit per-domain counters for exhaustion), and per-domain order is checked only through
its observable properties (each epoch a permutation).
"""

from __future__ import annotations

import json
import math
import warnings
from fractions import Fraction
from itertools import islice

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tikmix.data import MixtureSampler, concat_domains, locate_index
from tikmix.data._stream import half_bits, largest_remainder, mix, mix_int, permute

FAST = settings(max_examples=25, deadline=None)


# ---------------------------------------------------------------------------------------- references
def reference_counts(weights, total):
    """Largest remainder with exact fractions; ties to the lower index."""
    fr = [Fraction(w) for w in weights]
    s = sum(fr)
    quota = [f * total / s for f in fr]
    base = [q.numerator // q.denominator for q in quota]
    rest = total - sum(base)
    ranked = sorted(range(len(fr)), key=lambda j: (-(quota[j] - base[j]), j))
    for j in ranked[:rest]:
        base[j] += 1
    return base


GRID = 10080  # the documented weight grid: weights are multiples of 1 / lcm(batch_size, GRID)


def reference_quotas(weights, batch):
    """Per-step requested samples of each domain after quantisation to the weight grid (Fractions)."""
    total = math.lcm(batch, GRID)
    units = reference_counts(weights, total)
    return [Fraction(u * batch, total) for u in units]


def reference_stream(stages, batch, steps, caps=None, exhaustion="wrap", drop_last=True):
    """Per-step domain counts, sample by sample: each sample goes to the domain whose cumulative request
    minus draws (plus this step's request) is largest, ties to the lower index; zero-weight domains and
    domains without room never get one. ``stages``: [(start, weights)]. Also returns the lag (request -
    draws) after each step, and the request per step."""
    d = len(stages[0][1])
    lag = [Fraction(0)] * d
    used = [0] * d
    blocks, lags = [], []
    for b in range(steps):
        w = [st[1] for st in stages if st[0] <= b][-1]
        room = [None if caps is None or caps[j] is None else caps[j] - used[j] for j in range(d)]
        if caps is not None and exhaustion == "redistribute":
            w = [w[j] if room[j] is None or room[j] > 0 else 0 for j in range(d)]
            if not any(w):
                break
        q = reference_quotas([Fraction(x) for x in w], batch)
        need = [lag[j] + q[j] for j in range(d)]
        got = [0] * d
        for _ in range(batch):
            ok = [j for j in range(d) if q[j] > 0 and (room[j] is None or got[j] < room[j])]
            if exhaustion == "stop" and caps is not None:
                ok = [j for j in range(d) if q[j] > 0]
            if not ok:
                break
            j = max(ok, key=lambda i: (need[i], -i))
            got[j] += 1
            need[j] -= 1
        if exhaustion == "stop" and any(room[j] is not None and got[j] > room[j] for j in range(d)):
            alloc = [got[j] if room[j] is None else min(got[j], room[j]) for j in range(d)]
            if not drop_last and sum(alloc):
                blocks.append(alloc)
            break
        if sum(got) < batch:
            if not drop_last and sum(got):
                blocks.append(got)
            break
        blocks.append(got)
        used = [u + g for u, g in zip(used, got)]
        lag = need
        lags.append(list(lag))
    return blocks, lags


def block_domains(sampler, start, stop):
    """Domain of every sample of global steps [start, stop), shape [steps, batch]."""
    g = sampler.global_indices(start, stop)
    dom, _ = sampler.locate(g)
    return dom.reshape(stop - start, -1)


def per_domain_sequences(sampler, steps):
    g = sampler.global_indices(0, steps)
    dom, local = sampler.locate(g)
    return [local[dom == j] for j in range(sampler.num_domains)]


def assert_epochs_are_permutations(seq, n, allow_partial_last=True):
    """Every complete run of n consecutive draws is a permutation of range(n); a trailing partial run has
    no repeats."""
    full = len(seq) // n
    for e in range(full):
        assert sorted(seq[e * n : (e + 1) * n].tolist()) == list(range(n)), f"epoch {e} is not a permutation"
    tail = seq[full * n :]
    assert len(set(tail.tolist())) == len(tail), "a partial epoch repeats an index"


# ---------------------------------------------------------------------------------------- hashing
def test_mix_matches_the_rng_contract_golden_value():
    # key(0) = mix(0 + G) is the well-known first SplitMix64 output for seed 0 (KERNEL_NOTES §1)
    g = 0x9E3779B97F4A7C15
    assert mix_int(g) == 0xE220A8397B1DCDAF
    assert int(mix(np.array([g], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF
    xs = np.array([0, 1, 2**63, 2**64 - 1, 12345678901234567], dtype=np.uint64)
    assert [int(v) for v in mix(xs)] == [mix_int(int(v)) for v in xs]


@FAST
@given(n=st.integers(1, 3000), key=st.integers(0, 2**64 - 1))
def test_permute_is_a_bijection_of_range_n(n, key):
    p = permute(np.arange(n, dtype=np.uint64), n, half_bits(n), key)
    assert sorted(p.tolist()) == list(range(n))


def test_permute_depends_on_key_and_is_not_identity():
    n = 1000
    x = np.arange(n, dtype=np.uint64)
    a, b = permute(x, n, half_bits(n), 1), permute(x, n, half_bits(n), 2)
    assert (a != b).mean() > 0.9
    assert (a != x).mean() > 0.9
    # crude uniformity: positions of the first 100 elements spread over the range
    assert np.histogram(a[:500], bins=4, range=(0, n))[0].min() > 80


# ---------------------------------------------------------------------------------------- block counts
@FAST
@given(
    weights=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=6).filter(lambda w: sum(w) > 0),
    total=st.integers(1, 300),
)
def test_largest_remainder_matches_reference(weights, total):
    normalised = [w / math.fsum(weights) for w in weights]  # the sampler stores normalised weights
    assert list(largest_remainder(normalised, total)) == reference_counts(normalised, total)


@FAST
@given(
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=5),
    data=st.data(),
    batch=st.integers(1, 40),
    seed=st.integers(0, 2**40),
)
def test_every_block_follows_the_cumulative_request(sizes, data, batch, seed):
    d = len(sizes)
    weights = st.lists(st.integers(0, 9), min_size=d, max_size=d).filter(any)
    stages = [(0, data.draw(weights))]
    for start in sorted(set(data.draw(st.lists(st.integers(1, 15), max_size=2)))):
        stages.append((start, data.draw(weights)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = MixtureSampler(sizes, stages[0][1], batch_size=batch, seed=seed)
        for start, w in stages[1:]:
            s.set_weights(w, at_step=start)
    norm = [(a, [Fraction(x, sum(w)) for x in w]) for a, w in stages]
    expected, _ = reference_stream(norm, batch, 18)
    doms = block_domains(s, 0, 18)
    for b, row in enumerate(doms):
        assert np.bincount(row, minlength=d).tolist() == expected[b], b
        assert s.block_counts(b).tolist() == expected[b]


@settings(max_examples=60, deadline=None)
@given(
    d=st.integers(1, 7),
    data=st.data(),
    batch=st.integers(1, 48),
)
def test_realised_counts_stay_within_one_sample_of_the_cumulative_request(d, data, batch):
    """The documented bound (MixturePlan): after a step, requested - realised < 1 for every domain when no
    domain entered it more than its quota ahead; > -1 when the domains without weight are owed nothing in
    total; so |requested - realised| < 1 throughout when every weight is >= 1 / batch_size."""
    weights = st.lists(st.sampled_from([0, 0, 1, 1, 2, 3, 7, 50, 1000]), min_size=d, max_size=d).filter(any)
    starts = [0] + sorted(set(data.draw(st.lists(st.integers(1, 40), max_size=4))))
    stages = [(a, data.draw(weights)) for a in starts]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = MixtureSampler([5] * d, stages[0][1], batch_size=batch, seed=1)
        for a, w in stages[1:]:
            s.set_weights(w, at_step=a)
    steps = 60
    requested = np.zeros(d)
    prev_lag = np.zeros(d)
    drawn = np.zeros(d, dtype=np.int64)
    for b in range(steps):
        quota = np.asarray(s.weights_at(b)) * batch
        counts = s.block_counts(b)
        assert counts.sum() == batch and (counts >= 0).all()
        assert (counts[quota == 0] == 0).all(), "a zero-weight domain was drawn"
        drawn += counts
        requested += quota
        lag = requested - drawn
        if prev_lag[quota == 0].sum() <= 1e-9:
            assert (lag > -1 + 1e-9).all(), (b, lag)
        if (prev_lag + quota >= -1e-9).all():
            assert (lag < 1 - 1e-9).all(), (b, lag)
        prev_lag = lag
    rc = s.realised_counts(step=steps)
    assert list(rc.samples) == drawn.tolist()
    assert np.allclose(np.asarray(rc.requested_cumulative) * steps * batch, requested)


@FAST
@given(d=st.integers(1, 6), data=st.data(), batch=st.integers(6, 64))
def test_with_every_weight_at_least_one_sample_per_step_the_bound_is_one_sample(d, data, batch):
    weights = st.lists(st.integers(1, 20), min_size=d, max_size=d).filter(lambda w: min(w) * batch >= sum(w))
    starts = [0] + sorted(set(data.draw(st.lists(st.integers(1, 30), max_size=4))))
    stages = [(a, data.draw(weights)) for a in starts]
    s = MixtureSampler([3] * d, stages[0][1], batch_size=batch, seed=0, world_size=2 if batch % 2 == 0 else 1)
    for a, w in stages[1:]:
        s.set_weights(w, at_step=a)
    requested, drawn = np.zeros(d), np.zeros(d)
    for b in range(40):
        requested += np.asarray(s.weights_at(b)) * batch
        drawn += s.block_counts(b)
        assert np.abs(requested - drawn).max() < 1 - 1e-9, b


@pytest.mark.parametrize("batch", [1, 7, 32, 1000])
def test_a_single_stage_never_drifts_by_a_sample_and_uniform_is_uniform(batch):
    d = 7
    s = MixtureSampler([1000] * d, [1.0] * d, batch_size=batch, seed=0)
    steps = 300
    drawn = np.cumsum([s.block_counts(b) for b in range(steps)], axis=0)
    requested = np.arange(1, steps + 1)[:, None] * batch / d
    assert np.abs(drawn - requested).max() < 1
    s = MixtureSampler([1000] * 3, [0.61, 0.3, 0.09], batch_size=batch, seed=0)
    drawn = np.cumsum([s.block_counts(b) for b in range(steps)], axis=0)
    requested = np.arange(1, steps + 1)[:, None] * np.asarray(s.weights_at(0)) * batch
    assert np.abs(drawn - requested).max() < 1
    assert np.allclose(s.weights_at(0), [0.61, 0.3, 0.09], atol=1.0 / GRID)


def test_the_reported_issue_case_realises_the_requested_mixture():
    s = MixtureSampler([10**6] * 7, [1 / 7] * 7, batch_size=32, seed=0)
    dom, _ = s.locate(s.global_indices(0, 200))
    assert sorted(np.bincount(dom, minlength=7).tolist()) == [914] * 5 + [915] * 2  # 6400 / 7 = 914.29


@FAST
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4), seed=st.integers(0, 10**6))
def test_within_each_epoch_of_a_domain_no_index_repeats_or_is_skipped(sizes, seed):
    s = MixtureSampler(sizes, [1.0] * len(sizes), batch_size=8 * len(sizes), seed=seed)
    seqs = per_domain_sequences(s, 30)
    for j, n in enumerate(sizes):
        assert len(seqs[j]) >= n  # at least one full epoch drawn
        assert_epochs_are_permutations(seqs[j], n)


def test_epochs_use_different_permutations_and_seeds_differ():
    s = MixtureSampler([200], [1.0], batch_size=50, seed=5)
    seq = per_domain_sequences(s, 8)[0]
    assert not np.array_equal(seq[:200], seq[200:400])
    other = per_domain_sequences(MixtureSampler([200], [1.0], batch_size=50, seed=6), 8)[0]
    assert not np.array_equal(seq, other)
    again = per_domain_sequences(MixtureSampler([200], [1.0], batch_size=50, seed=5), 8)[0]
    assert np.array_equal(seq, again)


def test_huge_domains_need_no_memory_and_stay_in_range():
    sizes = [10**12, 3, 10**9 + 7]
    s = MixtureSampler(sizes, [0.5, 0.25, 0.25], batch_size=64, seed=1)
    g = s.global_indices(10**6, 10**6 + 20)  # far into the stream, computed directly
    dom, local = s.locate(g)
    assert ((local >= 0) & (local < np.asarray(sizes)[dom])).all()
    assert np.bincount(dom, minlength=3).tolist() == [32 * 20, 16 * 20, 16 * 20]


def test_block_order_is_shuffled_not_grouped():
    s = MixtureSampler([100, 100], [0.5, 0.5], batch_size=64, seed=3)
    doms = block_domains(s, 0, 20)
    # grouped blocks would have exactly one change of domain per row
    changes = (np.diff(doms, axis=1) != 0).sum(axis=1)
    assert changes.mean() > 10


# ---------------------------------------------------------------------------------------- schedule
def test_weight_change_takes_effect_exactly_at_its_step():
    s = MixtureSampler([50, 50, 50], [0.6, 0.2, 0.2], batch_size=10, seed=0)
    s.set_weights([0.0, 0.3, 0.7], at_step=7)
    doms = block_domains(s, 0, 15)
    for b in range(15):
        counts = np.bincount(doms[b], minlength=3).tolist()
        assert counts == ([6, 2, 2] if b < 7 else [0, 3, 7]), b
    assert s.weights_at(6) == (0.6, 0.2, 0.2)
    assert s.weights_at(7) == (0.0, 0.3, 0.7)


def test_weight_change_keeps_each_domain_continuing_its_epoch():
    sizes = [13, 17]
    s = MixtureSampler(sizes, [0.5, 0.5], batch_size=6, seed=9)
    s.set_weights([0.2, 0.8], at_step=5)
    s.set_weights([0.9, 0.1], at_step=11)
    seqs = per_domain_sequences(s, 40)
    for j, n in enumerate(sizes):
        assert_epochs_are_permutations(seqs[j], n)


def test_default_at_step_is_the_next_step_and_realised_proportions_follow():
    s = MixtureSampler([1000, 1000], [0.5, 0.5], batch_size=20, seed=1)
    it = iter(s)
    taken = [next(it) for _ in range(20 * 10 + 7)]  # 10 steps and part of step 10
    assert (s.step, s.offset, s.next_free_step) == (10, 7, 11)
    s.set_weights([0.1, 0.9])  # from step 11
    assert [st.start for st in s.schedule] == [0, 11]
    taken += [next(it) for _ in range(20 * 30 - 7)]
    dom, _ = locate_index(np.asarray(taken), [1000, 1000])
    dom = dom.reshape(40, 20)
    assert (dom[:11].sum(axis=1) == 10).all()
    assert (dom[11:].sum(axis=1) == 18).all()
    rc = s.realised_counts()
    assert rc.step == 40
    assert rc.samples == (11 * 10 + 29 * 2, 11 * 10 + 29 * 18)
    assert rc.requested == (0.1, 0.9)
    assert np.allclose(rc.requested_cumulative, np.array(rc.samples) / 800)


def test_set_weights_replaces_later_scheduled_stages_and_merges_equal_ones():
    s = MixtureSampler([10, 10], [0.5, 0.5], batch_size=4, seed=0)
    s.set_weights([1, 0], at_step=10)
    s.set_weights([0, 1], at_step=20)
    s.set_weights([0.25, 0.75], at_step=15)
    assert [(x.start, x.weights) for x in s.schedule] == [(0, (0.5, 0.5)), (10, (1.0, 0.0)), (15, (0.25, 0.75))]
    s.set_weights([0.25, 0.75], at_step=30)  # same as the stage in effect: nothing to add
    assert len(s.schedule) == 3


def test_zero_weight_domain_is_never_drawn_and_starved_domain_warns():
    s = MixtureSampler([5, 5, 5], [0.5, 0.0, 0.5], batch_size=4, seed=2)
    assert 1 not in block_domains(s, 0, 10)
    with pytest.warns(UserWarning, match=r"domain\(s\) \[2\] have a nonzero weight below the weight grid"):
        MixtureSampler([5, 5, 5], [0.6, 0.39999, 0.00001], batch_size=4, seed=2)
    with pytest.warns(UserWarning, match="will not be sampled"):
        s.set_weights([0.99998, 0.00001, 0.00001])
    small = MixtureSampler([5, 5, 5], [0.6, 0.39, 0.01], batch_size=4, seed=2)  # 0.04 samples a step
    counts = np.sum([small.block_counts(b) for b in range(100)], axis=0)
    assert counts.tolist() == [240, 156, 4]


# ---------------------------------------------------------------------------------------- exhaustion
def simulate(sizes, weights, batch, max_epochs, exhaustion, drop_last, steps):
    """Step-by-step reference with explicit per-domain counters (see reference_stream)."""
    caps = [max_epochs * n for n in sizes]
    blocks, _ = reference_stream([(0, weights)], batch, steps, caps, exhaustion, drop_last)
    return blocks


@pytest.mark.parametrize("exhaustion", ["stop", "redistribute"])
@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize(
    "sizes,weights,batch,epochs",
    [([5, 12, 40], [0.3, 0.3, 0.4], 10, 2), ([3, 9], [0.5, 0.5], 4, 1), ([7, 7, 7, 50], [0.1, 0.2, 0.3, 0.4], 9, 3)],
)
def test_exhaustion_matches_step_by_step_simulation(exhaustion, drop_last, sizes, weights, batch, epochs):
    s = MixtureSampler(
        sizes, weights, batch_size=batch, seed=4, max_epochs=epochs, exhaustion=exhaustion, drop_last=drop_last
    )
    ref = simulate(sizes, [Fraction(w) for w in weights], batch, epochs, exhaustion, drop_last, 1000)
    assert s.end_step == len(ref)
    g = s.global_indices(0, 10**6)
    dom, local = s.locate(g)
    got, pos = [], 0
    for b in range(len(ref)):
        size = int(s.block_counts(b).sum())
        got.append(np.bincount(dom[pos : pos + size], minlength=len(sizes)).tolist())
        pos += size
    assert pos == len(g)
    assert got == ref
    assert len(list(iter(s))) == len(g) == len(MixtureSampler(
        sizes, weights, batch_size=batch, seed=4, max_epochs=epochs, exhaustion=exhaustion, drop_last=drop_last))
    for j, n in enumerate(sizes):  # the cap is respected and epochs stay permutations
        seq = local[dom == j]
        assert len(seq) <= epochs * n
        assert_epochs_are_permutations(seq, n)


def test_redistribute_uses_every_sample_of_capped_domains():
    sizes = [6, 10, 30]
    s = MixtureSampler(sizes, [1, 1, 1], batch_size=6, seed=0, max_epochs=1, exhaustion="redistribute",
                       drop_last=False)
    dom, local = s.locate(s.global_indices(0, 1000))
    for j, n in enumerate(sizes):
        assert sorted(local[dom == j].tolist()) == list(range(n))


def test_per_domain_max_epochs_and_wrap_forever():
    s = MixtureSampler([4, 6], [0.5, 0.5], batch_size=2, seed=0, max_epochs=[None, 1], exhaustion="stop")
    assert s.end_step == 6  # domain 1 (6 samples, 1 per step) runs out; domain 0 may repeat
    seq0 = per_domain_sequences(s, 6)[0]
    assert_epochs_are_permutations(seq0, 4)
    inf = MixtureSampler([4, 6], [0.5, 0.5], batch_size=2, seed=0)
    assert inf.end_step is None
    with pytest.raises(TypeError, match="infinite"):
        len(inf)
    assert len(list(islice(iter(inf), 1000))) == 1000


def test_num_steps_makes_a_finite_stream_with_len():
    s = MixtureSampler([4, 6], [0.5, 0.5], batch_size=4, seed=0, num_steps=5, world_size=2, rank=1)
    assert len(s) == 10
    out = list(iter(s))
    assert out == s.local_indices(0, 5).tolist()
    assert len(s) == 0


# ---------------------------------------------------------------------------------------- ranks
@pytest.mark.parametrize("world", [1, 2, 3, 4, 6])
def test_ranks_take_disjoint_contiguous_slices_of_every_global_block(world):
    sizes, batch = [30, 20, 10], 12
    glob = MixtureSampler(sizes, [0.5, 0.3, 0.2], batch_size=batch, seed=7).global_indices(0, 9).reshape(9, batch)
    per = batch // world
    for r in range(world):
        s = MixtureSampler(sizes, [0.5, 0.3, 0.2], batch_size=batch, seed=7, rank=r, world_size=world)
        assert s.local_batch_size == per
        mine = np.asarray(list(islice(iter(s), 9 * per))).reshape(9, per)
        assert np.array_equal(mine, glob[:, r * per : (r + 1) * per])


def test_partial_final_block_is_split_across_ranks_without_loss():
    kw = dict(batch_size=8, seed=1, max_epochs=1, exhaustion="redistribute", drop_last=False)
    sizes = [5, 6]  # 11 samples: one full block of 8 and a final block of 3
    glob = MixtureSampler(sizes, [0.5, 0.5], **kw).global_indices(0, 10).tolist()
    assert len(glob) == 11
    parts = [list(MixtureSampler(sizes, [0.5, 0.5], rank=r, world_size=4, **kw)) for r in range(4)]
    assert [len(p) for p in parts] == [3, 3, 3, 2]  # 2 each from the full block, then 1,1,1,0
    rebuilt = sum((p[:2] for p in parts), []) + sum((p[2:] for p in parts), [])
    assert rebuilt == glob


# ---------------------------------------------------------------------------------------- concat helper
def test_concat_domains_and_locate_agree_with_concat_dataset():
    import torch
    from torch.utils.data import TensorDataset

    dss = [TensorDataset(torch.arange(n) + 1000 * j) for j, n in enumerate([3, 5, 2])]
    cat = concat_domains(dss)
    assert cat.domain_sizes == (3, 5, 2)
    for i in range(10):
        d, k = cat.locate(i)
        assert int(cat[i][0]) == 1000 * d + k
    d, k = cat.locate(np.array([0, 3, 9]))
    assert d.tolist() == [0, 1, 2] and k.tolist() == [0, 0, 1]
    with pytest.raises(IndexError):
        cat.locate(10)
    with pytest.raises(ValueError, match=r"datasets\[1\] is empty"):
        concat_domains([dss[0], TensorDataset(torch.arange(0))])


def test_state_dict_is_small_and_json_serialisable():
    s = MixtureSampler([10**9] * 4, [1, 2, 3, 4], batch_size=64, seed=3)
    s.set_weights([4, 3, 2, 1], at_step=100)
    st_ = s.state_dict()
    text = json.dumps(st_)
    assert len(text) < 600
    assert set(st_) == {"format", "step", "offset", "world_size", "schedule", "config"}

"""Bad input raises a clear error naming the argument, and a sampler that refused a call stays usable."""

from __future__ import annotations

import math
from itertools import islice

import numpy as np
import pytest
import torch

from tikmix.data import MixtureIterableDataset, MixtureSampler

SIZES = [10, 20, 30]
W = [0.2, 0.3, 0.5]


def fresh(**kw):
    kw.setdefault("batch_size", 6)
    kw.setdefault("seed", 3)
    return MixtureSampler(SIZES, W, **kw)


@pytest.mark.parametrize(
    "weights,exc,match",
    [
        ([0.2, -0.3, 0.5], ValueError, r"weights\[1\] = -0.3 is negative"),
        ([math.nan, 0.3, 0.5], ValueError, r"weights\[0\] is nan"),
        ([0.2, math.inf, 0.5], ValueError, r"weights\[1\] is inf"),
        ([0, 0, 0], ValueError, "weights are all zero"),
        ([0.5, 0.5], ValueError, r"weights must have length 3 \(one weight per domain\)"),
        ([[0.5, 0.5, 0.0]], ValueError, "weights must have length 3"),
        (["a", "b", "c"], TypeError, "weights must be a sequence of 3 numbers"),
        ("abc", TypeError, "weights must be a sequence"),
    ],
)
def test_bad_weights_are_refused_at_construction_and_in_set_weights(weights, exc, match):
    with pytest.raises(exc, match=match):
        MixtureSampler(SIZES, weights, batch_size=6)
    s = fresh()
    it = iter(s)
    head = [next(it) for _ in range(8)]
    with pytest.raises(exc, match=match):
        s.set_weights(weights)
    # nothing changed: the stream continues exactly as an untouched sampler's
    assert head + [next(it) for _ in range(40)] == fresh().global_indices(0, 8).tolist()


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(domain_sizes=[10, 0, 30]), ValueError, r"domain_sizes\[1\] = 0: domain 1 is empty"),
        (dict(domain_sizes=[]), ValueError, "domain_sizes is empty"),
        (dict(domain_sizes=[10, 2.5, 3]), TypeError, r"domain_sizes\[1\] must be an int"),
        (dict(domain_sizes=5), TypeError, "domain_sizes must be a sequence"),
        (dict(batch_size=0), ValueError, "batch_size must be a positive int"),
        (dict(batch_size=-4), ValueError, "batch_size must be a positive int"),
        (dict(batch_size=True), TypeError, "batch_size must be an int"),
        (dict(batch_size=6.0), TypeError, "batch_size must be an int"),
        (dict(seed="x"), TypeError, "seed must be an int"),
        (dict(rank=2, world_size=2), ValueError, r"rank=2 is out of range for world_size=2"),
        (dict(rank=-1, world_size=2), ValueError, r"rank=-1 is out of range"),
        (dict(world_size=0), ValueError, "world_size must be >= 1"),
        (dict(world_size=4), ValueError, r"batch_size=6 must be divisible by world_size=4"),
        (dict(exhaustion="loop"), ValueError, "exhaustion must be one of"),
        (dict(max_epochs=2), ValueError, "max_epochs has no effect with exhaustion='wrap'"),
        (dict(max_epochs=0, exhaustion="stop"), ValueError, "max_epochs must be >= 1"),
        (dict(max_epochs=[1, 2], exhaustion="stop"), ValueError, "max_epochs must be an int or a sequence of 3"),
        (dict(num_steps=-1), ValueError, "num_steps must be >= 0"),
        (dict(drop_last="yes"), TypeError, "drop_last must be a bool"),
        (dict(tokens_per_sample=[1, 2]), ValueError, "tokens_per_sample must be an int or a sequence of 3"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    args = dict(domain_sizes=SIZES, weights=W, batch_size=6)
    args.update(kwargs)
    sizes, weights = args.pop("domain_sizes"), args.pop("weights")
    if isinstance(sizes, list) and len(sizes) != len(weights) and sizes:
        weights = [1.0] * len(sizes)
    with pytest.raises(exc, match=match):
        MixtureSampler(sizes, weights, **args)


def test_schedule_step_in_the_past_is_refused_and_sampler_stays_usable():
    s = fresh()
    it = iter(s)
    head = [next(it) for _ in range(6 * 4 + 1)]  # 4 steps and one sample of step 4
    with pytest.raises(ValueError, match=r"at_step=4 is in the past: .* earliest step .* is 5"):
        s.set_weights([1, 0, 0], at_step=4)
    with pytest.raises(ValueError, match="at_step must be >= 0"):
        s.set_weights([1, 0, 0], at_step=-1)
    with pytest.raises(TypeError, match="at_step must be an int"):
        s.set_weights([1, 0, 0], at_step=5.0)
    assert head + [next(it) for _ in range(30)] == fresh().global_indices(0, 10).tolist()[:55]
    assert s.next_free_step == 10  # 55 samples: 9 steps and one sample of step 9
    s.set_weights([1, 0, 0], at_step=10)  # the first free step is fine
    assert s.block_counts(9).tolist() == [1, 2, 3] and s.block_counts(10).tolist() == [6, 0, 0]


def test_state_dict_from_another_configuration_is_refused_naming_the_fields():
    other = MixtureSampler(SIZES, W, batch_size=12, seed=4)
    s = fresh()
    it = iter(s)
    head = [next(it) for _ in range(7)]
    with pytest.raises(ValueError, match=r"batch_size: saved 12, this sampler has 6; seed: saved 4"):
        s.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match=r"domain_sizes: saved \[10, 20\]"):
        s.load_state_dict(MixtureSampler([10, 20], [1, 1], batch_size=6, seed=3).state_dict())
    with pytest.raises(ValueError, match="kind: saved 'iterable'"):
        s.load_state_dict(MixtureIterableDataset([range(10), range(20), range(30)], W, batch_size=6, seed=3).state_dict())
    assert head + [next(it) for _ in range(20)] == fresh().global_indices(0, 5).tolist()[:27]


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda d: d.pop("schedule"), ValueError, r"missing key\(s\) \['schedule'\]"),
        (lambda d: d.update(format="other/1"), ValueError, "state_dict\\['format'\\]"),
        (lambda d: d.update(step=-3), ValueError, r"state_dict\['step'\] must be >= 0"),
        (lambda d: d.update(step="3"), TypeError, r"state_dict\['step'\] must be an int"),
        (lambda d: d.update(offset=99), ValueError, r"state_dict\['offset'\] = 99 is not inside step"),
        (lambda d: d["schedule"].append([0, [1, 0, 0], [6, 0, 0]]), ValueError, "stage starts must increase"),
        (lambda d: d["schedule"].__setitem__(0, [2, [0.2, 0.3, 0.5], [1, 2, 3]]), ValueError, "first stage must start at step 0"),
        (lambda d: d["schedule"][0].__setitem__(2, [2, 2, 2]), ValueError, r"units\) = \[2, 2, 2\] do not match"),
        (lambda d: d["schedule"][0].__setitem__(1, [0.2, -0.3, 1.1]), ValueError, r"weights\)\[1\] = -0.3 is negative"),
        (lambda d: d["schedule"][0].__setitem__(1, [2, 3, 5]), ValueError, "normalised to sum 1"),
        (lambda d: d.update(schedule=[]), ValueError, "non-empty list"),
    ],
)
def test_corrupt_state_dicts_are_refused_and_nothing_changes(mutate, exc, match):
    s = fresh()
    it = iter(s)
    head = [next(it) for _ in range(3)]
    state = fresh().state_dict()
    mutate(state)
    with pytest.raises(exc, match=match):
        s.load_state_dict(state)
    assert head + [next(it) for _ in range(9)] == fresh().global_indices(0, 2).tolist()


def test_misc_argument_errors():
    s = fresh()
    with pytest.raises(ValueError, match="stop_step=1 is before start_step=2"):
        s.global_indices(2, 1)
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        s.load_state_dict([1, 2])
    with pytest.raises(ValueError, match="step must be >= 0"):
        s.seek(-1)
    with pytest.raises(ValueError, match="step must be >= 0"):
        s.realised_counts(step=-1)
    with pytest.raises(IndexError, match="out of range"):
        s.locate(60)
    weights_tensor = torch.tensor([1.0, 1.0, 2.0])
    s.set_weights(weights_tensor, at_step=3)
    assert s.weights_at(3) == (0.25, 0.25, 0.5)
    s.set_weights(np.array([0, 1, 0]), at_step=4)
    assert s.block_counts(4).tolist() == [0, 6, 0]


def test_iterable_dataset_argument_errors():
    with pytest.raises(TypeError, match=r"sources\[1\] is a one-shot iterator"):
        MixtureIterableDataset([range(3), iter(range(3))], [1, 1], batch_size=2)
    with pytest.raises(TypeError, match=r"sources\[0\] must be iterable"):
        MixtureIterableDataset([5, range(3)], [1, 1], batch_size=2)
    with pytest.raises(ValueError, match="sources is empty"):
        MixtureIterableDataset([], [], batch_size=2)
    with pytest.raises(ValueError, match="domain_sizes must have length 2"):
        MixtureIterableDataset([range(3), range(3)], [1, 1], batch_size=2, domain_sizes=[3])
    with pytest.raises(ValueError, match="max_epochs needs the size of domain 0"):
        MixtureIterableDataset([_Unsized(), range(3)], [1, 1], batch_size=2, max_epochs=1, exhaustion="stop")
    ds = MixtureIterableDataset([[], range(3)], [1, 1], batch_size=2, domain_sizes=[None, 3])
    with pytest.raises(ValueError, match=r"sources\[0\] yielded no items"):
        list(islice(iter(ds), 4))
    with pytest.raises(ValueError, match=r"domain_sizes\[0\] = 4 but len\(sources\[0\]\) = 5"):
        MixtureIterableDataset([range(5), range(3)], [1, 1], batch_size=2, domain_sizes=[4, 3])
    ds = MixtureIterableDataset([_Unsized(), range(3)], [1, 1], batch_size=2, domain_sizes=[3, 3])
    with pytest.raises(ValueError, match=r"sources\[0\] yielded more than 3 items in a pass"):
        list(islice(iter(ds), 20))
    ds = MixtureIterableDataset([_Unsized(), range(3)], [1, 1], batch_size=2, domain_sizes=[6, 3])
    with pytest.raises(ValueError, match=r"sources\[0\] yielded 4 items in a pass but its size is 6"):
        list(islice(iter(ds), 20))


class _Unsized:
    def __iter__(self):
        return iter(range(4))


def test_sampler_built_before_the_process_group_binds_at_first_use(monkeypatch):
    """No process group at construction: rank/world size are read when first needed; before a group exists under a
    multi-process launcher (WORLD_SIZE > 1) the error says what to do."""
    from tikmix.data import MixtureSampler

    s = MixtureSampler([5, 7], [0.5, 0.5], batch_size=4, seed=0)
    assert s._world_size is None  # unbound until used
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="before torch.distributed is initialised, but WORLD_SIZE=2 .* initialise "
                                           "the process group first"):
        iter(s).__next__()
    monkeypatch.delenv("WORLD_SIZE")
    assert (s.rank, s.world_size) == (0, 1) and len(list(s.local_indices(0, 2))) == 8
    explicit = MixtureSampler([5, 7], [0.5, 0.5], batch_size=4, seed=0, rank=1, world_size=2)
    assert explicit.world_size == 2 and explicit.local_batch_size == 2

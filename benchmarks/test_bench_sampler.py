"""MixtureSampler indices vs torch's WeightedRandomSampler (i.i.d. multinomial draws, no exact per-step
composition, no resume) producing the same number of indices."""
from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from tikmix.data import MixtureSampler

COUNTS = {"smoke": 4_096, "quick": 262_144, "full": 1_048_576}
DOMAIN_SIZE = 10**9


@pytest.mark.parametrize("method", ["WeightedRandomSampler", "MixtureSampler.local_indices", "MixtureSampler iter"])
def test_sampler_indices(measure, size: str, method: str) -> None:
    n, domains, batch = COUNTS[size], 8, 1024
    weights = np.linspace(1, 2, domains)
    if method == "WeightedRandomSampler":
        # per-domain weights spread over the domains' samples; torch caps multinomial at 2^24 categories
        per_domain = 1 << (10 if size == "smoke" else 21)
        per_sample = torch.tensor(weights / weights.sum(), dtype=torch.float64).repeat_interleave(per_domain)
        sampler = WeightedRandomSampler(per_sample, n, replacement=True, generator=torch.Generator().manual_seed(0))
        fn = lambda: list(iter(sampler))  # noqa: E731
    else:
        s = MixtureSampler([DOMAIN_SIZE] * domains, weights, batch_size=batch, seed=1)
        steps = n // batch
        if method == "MixtureSampler.local_indices":
            fn = lambda: s.local_indices(0, steps)  # noqa: E731
        else:
            def fn() -> list:
                s.seek(0)
                return list(islice(iter(s), steps * batch))
    out = measure(fn, group=f"sampler {n} indices, {domains} domains, batch {batch}",
                  role="baseline" if method == "WeightedRandomSampler" else "case", rounds=3, method=method)
    assert len(out) == n

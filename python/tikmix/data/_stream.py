"""The pure-function core shared by :class:`~tikmix.data.MixtureSampler` and
:class:`~tikmix.data.MixtureIterableDataset`.

Everything here is a function of ``(seed, schedule, position)``; nothing depends on what was drawn before.
Per-step domain counts follow the cumulative request (largest deficit first, see :class:`MixturePlan`); the
allocation of each stage is periodic, so it is computed once per stage and read back in O(D) per step.

Hashing follows the project's RNG contract: ``mix`` is the SplitMix64 finaliser, all arithmetic is on
unsigned 64-bit integers modulo 2**64, and the seed key is ``mix(seed + G)``. From it the stream derives

* the block key of global step ``b``: ``mix(mix(key ^ TAG_BLOCK) + b*G)``;
* the epoch key of domain ``j`` in its epoch ``e``: ``mix(mix(mix(key ^ TAG_DOMAIN) + j*G) + e*G)``.

A keyed pseudo-random permutation of ``[0, n)`` is a 4-round balanced Feistel network on ``2*h`` bits
(``4**h >= n``, round function ``mix(right ^ key ^ C_r)`` masked to ``h`` bits) with cycle walking: apply it
again while the value is ``>= n``. It is a bijection computed in O(1) memory per element, vectorised with
numpy over whole blocks.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from .._splitmix import GOLDEN, MASK64, mix, mix_inplace, mix_int  # noqa: F401  (re-exported for tests)

__all__ = [
    "mix",
    "permute",
    "half_bits",
    "largest_remainder",
    "period_steps",
    "quantise",
    "greedy_step",
    "Stage",
    "make_stage",
    "Segment",
    "MixturePlan",
]

G = GOLDEN
TAG_BLOCK = 0x626C6F636B5F6B79  # "block_ky"
TAG_DOMAIN = 0x646F6D61696E5F6B  # "domain_k"
_ROUND_CONSTANTS = (0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89)

# Multipliers as 1-element arrays: numpy multiplies a uint64 array by an array ~10x faster than by a scalar.
_U64_G = np.array([G], dtype=np.uint64)
_U64_ROUNDS = tuple(np.array([c], dtype=np.uint64) for c in _ROUND_CONSTANTS)
_ONE_ARR = np.array([1], dtype=np.uint64)


def half_bits(n: int) -> int:
    """Half-width ``h`` of the Feistel network used for ``[0, n)``: the least ``h`` with ``4**h >= n``."""
    return ((int(n) - 1).bit_length() + 1) // 2


def _feistel(x: np.ndarray, h: np.ndarray, key: np.ndarray) -> np.ndarray:
    """4-round balanced Feistel network on ``2*h``-bit values (a bijection of ``[0, 4**h)``)."""
    h = np.asarray(h, dtype=np.uint64)
    if h.ndim == 0:
        h = h.reshape(1)  # 1-element arrays take numpy's fast broadcasting path, 0-d scalars do not
    mask = np.left_shift(_ONE_ARR, h) - _ONE_ARR
    left = np.right_shift(x, h)
    right = np.bitwise_and(x, mask)
    f = np.empty_like(x)
    buf = np.empty_like(x)
    for c in _U64_ROUNDS:
        np.bitwise_xor(right, key, out=f)
        np.bitwise_xor(f, c, out=f)
        mix_inplace(f, buf)
        np.bitwise_and(f, mask, out=f)
        np.bitwise_xor(f, left, out=f)  # new right = left ^ F(right); new left = right
        left, right, f = right, f, left
    np.left_shift(left, h, out=left)
    np.bitwise_or(left, right, out=left)
    return left


def permute(x: np.ndarray, n: Any, h: Any, key: Any) -> np.ndarray:
    """Keyed pseudo-random permutation of ``[0, n)`` applied to ``x`` (elementwise).

    ``x`` holds values in ``[0, n)``; ``n``, ``h = half_bits(n)`` and ``key`` broadcast against ``x``
    (per-element sizes and keys are allowed). Returns uint64 values in ``[0, n)``; for a fixed ``(n, key)``
    the map is a bijection.
    """
    x = np.asarray(x, dtype=np.uint64)
    shape = x.shape
    x = x.ravel()
    key = np.broadcast_to(np.asarray(key, dtype=np.uint64), shape).ravel()
    if np.ndim(n) == 0 and np.ndim(h) == 0:  # one domain size: keep n, h as 1-element arrays
        n_all = np.array([n], dtype=np.uint64)
        h_all = np.array([h], dtype=np.uint64)
        shared = True
    else:
        n_all = np.broadcast_to(np.asarray(n, dtype=np.uint64), shape).ravel()
        h_all = np.broadcast_to(np.asarray(h, dtype=np.uint64), shape).ravel()
        shared = False
    y = _feistel(x, h_all, key)
    todo = np.flatnonzero(y >= n_all)
    while todo.size:  # cycle walking: the cycle through x returns to [0, n), so this ends
        nt, ht = (n_all, h_all) if shared else (n_all[todo], h_all[todo])
        yt = _feistel(y[todo], ht, key[todo])
        y[todo] = yt
        todo = todo[yt >= nt]
    return y.reshape(shape)


def largest_remainder(weights: Sequence[float], total: int) -> tuple[int, ...]:
    """Integer counts summing to ``total`` in proportion to ``weights`` (largest-remainder rounding).

    Exact rational arithmetic on the float weights: each count is ``floor(total * w_j / sum(w))``, and the
    leftover units go to the largest fractional parts, ties to the lower domain index. Zero weights get 0.
    """
    fr = [Fraction(float(w)) for w in weights]
    s = sum(fr)
    if s <= 0:
        raise ValueError("largest_remainder needs a positive weight sum")
    quotas = [w * total / s for w in fr]
    counts = [math.floor(q) for q in quotas]
    left = total - sum(counts)
    order = sorted(range(len(fr)), key=lambda j: (-(quotas[j] - counts[j]), j))
    for j in order[:left]:
        counts[j] += 1
    return tuple(counts)


WEIGHT_GRID = 10080
"""Weights are quantised to multiples of ``1 / lcm(batch_size, WEIGHT_GRID)`` (1e-4 or finer), so that one
*period* of ``P = lcm(batch_size, WEIGHT_GRID) / batch_size`` steps asks for a whole number of samples of
every domain. 10080 = 2^5 * 3^2 * 5 * 7 makes equal weights over 1-10, 12, 14, 15 or 16 domains exact."""

_MAX_PERIODS = 64  # safety net of the periodicity check in _stage_table (one period suffices in practice)


def period_steps(batch_size: int) -> int:
    """Steps per period ``P = WEIGHT_GRID / gcd(batch_size, WEIGHT_GRID)``."""
    return WEIGHT_GRID // math.gcd(int(batch_size), WEIGHT_GRID)


def quantise(weights: Sequence[float], batch_size: int) -> tuple[int, ...]:
    """Per-step quotas in *units* of ``1/P`` sample: ``largest_remainder(weights, batch_size * P)``.

    A domain with ``u`` units asks for ``u / P`` samples per step, i.e. weight ``u / (batch_size * P)``.
    """
    return largest_remainder(weights, int(batch_size) * period_steps(batch_size))


def greedy_step(
    lag: Sequence[int],
    units: Sequence[int],
    active: Sequence[bool],
    batch: int,
    per: int,
    room: Sequence[int | None] | None = None,
) -> list[int]:
    """One step of largest-deficit-first allocation (the rule of Megatron's blended datasets, per block).

    ``lag[j]`` is domain ``j``'s cumulative requested minus realised count before the step and ``units[j]``
    its per-step quota, both in units of ``1/per`` sample. The ``batch`` samples of the step go one at a
    time to the active domain (with room left, if ``room`` caps it) whose deficit ``lag + units`` minus
    what it already got this step is largest, ties to the lower index. Returns the per-domain counts; their
    sum is below ``batch`` only if every active domain is out of room.

    Computed in O(D) plus O(D) per sample not owed in full: every deficit of at least one sample is served
    first (those are exactly the picks with value >= ``per``), then the rest by value.
    """
    d = len(lag)
    need = [lag[j] + units[j] for j in range(d)]
    cap = [None if room is None else room[j] for j in range(d)]
    c = [0] * d
    for j in range(d):
        if active[j] and need[j] >= per:
            c[j] = need[j] // per if cap[j] is None else min(need[j] // per, cap[j])
    s = sum(c)
    while s < batch:  # next unit of j is worth need - c*per; take the largest, ties to the lower index
        best, best_v = -1, 0
        for j in range(d):
            if active[j] and (cap[j] is None or c[j] < cap[j]):
                v = need[j] - c[j] * per
                if best < 0 or v > best_v:
                    best, best_v = j, v
        if best < 0:
            break
        c[best] += 1
        s += 1
    while s > batch:  # drop the least valuable unit given; on ties the higher index was picked last
        worst, worst_v = -1, 0
        for j in range(d):
            if c[j] > 0:
                v = need[j] - (c[j] - 1) * per
                if worst < 0 or v <= worst_v:
                    worst, worst_v = j, v
        c[worst] -= 1
        s -= 1
    return c


@functools.lru_cache(maxsize=128)
def _stage_table(
    lag0: tuple[int, ...], units: tuple[int, ...], active: tuple[bool, ...], batch: int, per: int
) -> tuple[np.ndarray, int, int]:
    """Cumulative counts of a stage run by :func:`greedy_step` from lag ``lag0``: ``(table, lead, cycle)``.

    ``table[k]`` (int64 [D]) is what the first ``k`` steps drew per domain, for ``k <= lead + cycle``. The
    state (lag vector) after ``lead`` steps recurs after ``lead + cycle`` steps, so the allocation is
    periodic from there: ``A(lead + t + n*cycle) = A(lead + t) + n*(A(lead + cycle) - A(lead))``. Each
    period of ``per`` steps asks for whole samples, so the lag is checked at period ends (in practice it
    returns after the first period: ``lead = 0, cycle = per``).
    """
    d = len(units)
    lag = list(lag0)
    cum = [0] * d
    rows = [list(cum)]
    seen = {lag0: 0}
    for period in range(1, _MAX_PERIODS + 1):
        for _ in range(per):
            c = greedy_step(lag, units, active, batch, per)
            for j in range(d):
                cum[j] += c[j]
                lag[j] += units[j] - per * c[j]
            rows.append(list(cum))
        key = tuple(lag)
        if key in seen:
            table = np.asarray(rows, dtype=np.int64)
            table.setflags(write=False)
            return table, seen[key], period * per - seen[key]
        seen[key] = period * per
    raise RuntimeError(  # pragma: no cover - a safety net: the lag state space is finite
        f"mixture allocation did not become periodic within {_MAX_PERIODS} periods; please report this "
        f"with units={units}, lag={lag0}, batch_size={batch}"
    )


@dataclass(frozen=True)
class Stage:
    """One entry of the mixture schedule: from global step ``start`` on, steps follow ``weights``.

    ``units`` are the per-step quotas in units of ``1/P`` sample (:func:`quantise`); ``weights`` are the
    quantised weights ``units / (batch_size * P)`` -- what the stream is asked to realise.
    """

    start: int
    weights: tuple[float, ...]
    units: tuple[int, ...]


def make_stage(start: int, weights: Sequence[float], batch_size: int) -> Stage:
    """A :class:`Stage` from normalised weights: quantised units, and weights as the units realise them."""
    units = quantise(weights, batch_size)
    total = float(sum(units))
    return Stage(int(start), tuple(u / total for u in units), units)


@dataclass(frozen=True, eq=False)
class Segment:
    """A run of global steps ``[start, stop)`` allocated by one periodic table (see :func:`_stage_table`).

    ``base[j]`` is how many samples of domain ``j`` the global stream drew before ``start``; ``units`` the
    per-step request (units of ``1/P`` sample) during the segment; ``stop`` is None for an unbounded run.
    Stage changes and exhaustion split the stream into segments; a one-step segment holds an explicit
    block (a transition or a final partial block).
    """

    start: int
    stop: int | None
    base: np.ndarray  # int64 [D]
    table: np.ndarray  # int64 [lead + cycle + 1, D]
    lead: int
    cycle: int
    units: tuple[int, ...]
    stage: int
    size: int  # samples per step; < batch_size only for the final partial block

    def drawn_at(self, steps: Any) -> np.ndarray:
        """Samples per domain drawn before each step of ``steps`` (int64 [..., D]); steps in [start, stop]."""
        k = np.asarray(steps, dtype=np.int64) - self.start
        wrap = k > self.lead
        idx = np.where(wrap, self.lead + (k - self.lead) % self.cycle, k)
        rep = np.where(wrap, (k - self.lead) // self.cycle, 0)
        inc = self.table[self.lead + self.cycle] - self.table[self.lead]
        return self.base + self.table[idx] + rep[..., None] * inc

    def counts_at(self, steps: Any) -> np.ndarray:
        """Per-domain samples of each step of ``steps`` (int64 [..., D])."""
        steps = np.asarray(steps, dtype=np.int64)
        return self.drawn_at(steps + 1) - self.drawn_at(steps)


def _explicit(start: int, base: Sequence[int], counts: Sequence[int], units: Sequence[int], stage: int) -> Segment:
    table = np.asarray([[0] * len(counts), list(counts)], dtype=np.int64)
    return Segment(start, start + 1, np.asarray(base, dtype=np.int64), table, 0, 1, tuple(units), stage,
                   int(sum(counts)))


class MixturePlan:
    """Stage list + exhaustion rule → segments, and the per-block layout of the global stream.

    **Allocation.** Each step's per-domain counts follow the *cumulative* request: with ``lag_j`` = samples
    of domain ``j`` requested so far (each step adds ``w_j * batch_size`` of the stage in effect) minus
    samples drawn, a step's ``batch_size`` samples go one at a time to the domain with the largest
    ``lag_j + w_j * batch_size`` still unserved, ties to the lower index (:func:`greedy_step`). Domains with
    weight 0 (or exhausted) get nothing. Since weights are quantised so that a period of ``P`` steps asks for
    whole samples, the allocation of a stage is periodic and computed once per stage (a table of at most a
    few periods): the counts of any step are O(D) arithmetic, no replay, and the stream stays a pure
    function of (seed, schedule, position).

    **Bound.** Write ``e_j = requested_j - realised_j`` (samples) after a step and ``q_j = w_j * batch_size``
    for the step's request; a domain is *inactive* in a step if its weight is 0 or it is exhausted.

    1. If no domain starts the step more than its quota ahead (``e_j + q_j >= 0`` for all ``j``), every
       ``e_j < 1`` after it. Proof: the inactive domains are then owed ``>= 0`` in total, so the active
       deficits sum to at most ``batch_size`` and the greedy first hands every active domain
       ``floor(e_j + q_j)`` samples; what is left of a deficit is ``< 1``; inactive ``e_j`` do not change.
    2. If the inactive domains are owed nothing in total (``sum of their e_j <= 0``), every ``e_j > -1``
       after the step. Proof: before each sample the active deficits sum to ``>= 1``, so the largest one,
       which gets the sample, is ``> 0`` and stays ``> -1``; the others only grow.

    So when every weight is at least ``1 / batch_size`` (or 0 in no stage), ``|requested - realised| < 1``
    for every domain after every step, across any number of weight changes. Otherwise a domain with less
    than one sample per step may get up to one sample ahead, and a domain switched off keeps its
    (``|e| < 1``) balance forever; the other domains then carry that balance between them, so one of them
    can be slightly more than one sample off (about 1.1 at worst in random schedules of the tests).
    Immutable once built; the owning sampler builds a new plan when its schedule changes.
    Immutable once built; the owning sampler builds a new plan when its schedule changes.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        batch_size: int,
        seed: int,
        caps: Sequence[int | None] | None,
        exhaustion: str,
        drop_last: bool,
        num_steps: int | None,
    ) -> None:
        self.stages = tuple(stages)
        self.batch_size = int(batch_size)
        self.per = period_steps(self.batch_size)
        self.num_domains = len(self.stages[0].weights)
        key = mix_int(int(seed) + G)
        self.block_base = np.uint64(mix_int(key ^ TAG_BLOCK))
        dom_root = mix_int(key ^ TAG_DOMAIN)
        self.domain_base = np.array(
            [mix_int(dom_root + j * G) for j in range(self.num_domains)], dtype=np.uint64
        )
        segments, end = self._build(caps, exhaustion, drop_last)
        if num_steps is not None:
            end = num_steps if end is None else min(end, num_steps)
            clipped = []
            for seg in segments:
                if seg.start >= num_steps:
                    break
                stop = num_steps if seg.stop is None else min(seg.stop, num_steps)
                clipped.append(dataclasses.replace(seg, stop=stop))
            segments = clipped
        self.segments = tuple(segments)
        self.end_step = end
        self._starts = [s.start for s in self.segments]

    # ------------------------------------------------------------------ construction
    def _segment(self, start: int, stop: int | None, drawn: list[int], req: list[int], units: Sequence[int],
                 active: Sequence[bool], stage: int) -> Segment:
        lag = tuple(req[j] - self.per * drawn[j] for j in range(self.num_domains))
        table, lead, cycle = _stage_table(lag, tuple(units), tuple(active), self.batch_size, self.per)
        return Segment(start, stop, np.asarray(drawn, dtype=np.int64), table, lead, cycle, tuple(units), stage,
                       self.batch_size)

    @staticmethod
    def _first_over(seg: Segment, j: int, room: int) -> int:
        """Least ``k >= 0`` with domain ``j`` drawing more than ``room`` samples in steps [start, start+k]."""

        def over(k: int) -> bool:
            return int(seg.drawn_at(seg.start + k + 1)[j] - seg.base[j]) > room

        if over(0):
            return 0
        hi = 1
        while not over(hi):  # an active domain draws at least one sample per period, so this ends
            hi *= 2
        lo = hi // 2  # over(lo) is False
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if over(mid) else (mid, hi)
        return hi

    def _build(
        self, caps: Sequence[int | None] | None, exhaustion: str, drop_last: bool
    ) -> tuple[list[Segment], int | None]:
        d, bsz, per = self.num_domains, self.batch_size, self.per
        drawn = [0] * d  # samples drawn before step s
        req = [0] * d  # units requested before step s
        segs: list[Segment] = []
        capped = caps is not None and exhaustion != "wrap" and any(c is not None for c in caps)

        def advance(seg: Segment, stop: int) -> None:
            after = seg.drawn_at(stop)
            for j in range(d):
                drawn[j] = int(after[j])
                req[j] += (stop - seg.start) * seg.units[j]

        for k, st in enumerate(self.stages):
            stop = self.stages[k + 1].start if k + 1 < len(self.stages) else None
            s = st.start
            while stop is None or s < stop:
                units = list(st.units)
                room = [None] * d if not capped else [None if caps[j] is None else caps[j] - drawn[j] for j in range(d)]  # type: ignore[index]
                if capped and exhaustion == "redistribute":
                    w = [st.weights[j] if (room[j] is None or room[j] > 0) else 0.0 for j in range(d)]
                    if sum(w) <= 0:
                        return segs, s
                    units = list(quantise(w, bsz))
                active = [u > 0 for u in units]
                seg = self._segment(s, stop, drawn, req, units, active, k)
                hit = None
                if capped:
                    for j in range(d):
                        if active[j] and room[j] is not None:
                            h = s + self._first_over(seg, j, room[j])  # type: ignore[arg-type]
                            hit = h if hit is None else min(hit, h)
                if hit is None or (stop is not None and hit >= stop):
                    segs.append(seg)
                    if stop is None:
                        return segs, None
                    advance(seg, stop)
                    break
                if hit > s:  # the steps before the one that cannot be filled as requested
                    seg = dataclasses.replace(seg, stop=hit)
                    segs.append(seg)
                    advance(seg, hit)
                    s = hit
                room = [None if caps[j] is None else caps[j] - drawn[j] for j in range(d)]  # type: ignore[index]
                if exhaustion == "stop":
                    want = self._segment(s, s + 1, drawn, req, units, active, k).counts_at(s).tolist()
                    alloc = [want[j] if room[j] is None else min(want[j], room[j]) for j in range(d)]
                else:
                    lag = [req[j] - per * drawn[j] for j in range(d)]
                    alloc = greedy_step(lag, units, active, bsz, per, room)
                    if sum(alloc) == bsz:  # a full transition block; exhausted domains drop out after it
                        seg = _explicit(s, drawn, alloc, units, k)
                        segs.append(seg)
                        advance(seg, s + 1)
                        s += 1
                        continue
                if not drop_last and sum(alloc) > 0:
                    segs.append(_explicit(s, drawn, alloc, units, k))
                    return segs, s + 1
                return segs, s
        raise AssertionError("unreachable: the last stage is unbounded")  # pragma: no cover

    # ------------------------------------------------------------------ queries
    def segment_at(self, step: int) -> Segment | None:
        """The segment containing global step ``step``, or None past the end of the stream."""
        if self.end_step is not None and step >= self.end_step:
            return None
        i = bisect.bisect_right(self._starts, step) - 1
        if i < 0:
            return None
        seg = self.segments[i]
        if seg.stop is not None and step >= seg.stop:
            return None
        return seg

    def drawn_before(self, step: int) -> np.ndarray:
        """Per-domain samples in the global stream before global step ``step`` (int64 [D])."""
        i = bisect.bisect_right(self._starts, step) - 1
        if i < 0:
            return np.zeros(self.num_domains, dtype=np.int64)
        seg = self.segments[i]  # segments are contiguous, so past its stop we are past the end
        return seg.drawn_at(step if seg.stop is None or step < seg.stop else seg.stop)

    def stage_at(self, step: int) -> Stage:
        i = bisect.bisect_right([s.start for s in self.stages], step) - 1
        return self.stages[max(i, 0)]

    def requested_samples(self, stop: int) -> np.ndarray:
        """Σ over steps < stop of the per-step request (weights × samples of a full step), in samples."""
        out = np.zeros(self.num_domains, dtype=np.float64)
        for seg in self.segments:
            b = stop if seg.stop is None else min(seg.stop, stop)
            if b > seg.start:
                out += (b - seg.start) * np.asarray(seg.units, dtype=np.float64) / self.per
        return out

    @staticmethod
    def slice_bounds(size: int, rank: int, world_size: int) -> tuple[int, int]:
        """Rank ``rank``'s contiguous share ``[lo, hi)`` of a block of ``size`` samples.

        Shares differ by at most one sample; with ``size % world_size == 0`` (every full block) they are
        equal: ``[rank*size/W, (rank+1)*size/W)``.
        """
        q, r = divmod(size, world_size)
        lo = rank * q + min(rank, r)
        return lo, lo + q + (1 if rank < r else 0)

    def layout(
        self, seg: Segment, steps: np.ndarray, lo: int, hi: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Domain and per-domain draw number of slots ``[lo, hi)`` of each step in ``steps``.

        All steps must lie in ``seg``. Step ``b`` holds ``counts_j(b)`` samples of domain ``j`` (see the
        class docstring). Slot ``s`` of step ``b`` belongs to the domain owning position ``perm_b(s)`` of the
        domain-sorted block (domain ``j`` owns ``counts_j(b)`` consecutive positions), so the block's
        domains appear in a keyed random order. The ``r``-th slot of domain ``j`` in slot order gets draw
        number ``drawn_j(b) + r``: a domain's draws appear in the stream in increasing order. Returns two
        int64 arrays of shape ``[len(steps), hi - lo]``. The whole block's labels are computed
        (O(batch_size) per block) to rank the slice's slots.
        """
        steps = np.asarray(steps, dtype=np.int64)
        nb, size, d = steps.size, seg.size, self.num_domains
        before = seg.drawn_at(steps)  # [nb, D]
        counts = (seg.drawn_at(steps + 1) - before).ravel()
        # the domain-sorted blocks, all rows at once: row b holds counts_j(b) copies of j, in domain order
        # int16 labels where they fit: numpy's stable sort is a radix sort for them (the argsort below)
        dtype = np.int16 if d < 2**15 else np.int64
        sorted_dom = np.repeat(np.tile(np.arange(d, dtype=dtype), nb), counts).reshape(nb, size)
        keys = mix(self.block_base + steps.astype(np.uint64) * _U64_G)
        slots = np.broadcast_to(np.arange(size, dtype=np.uint64), (nb, size))
        pos = permute(slots, size, half_bits(size), keys[:, None]).astype(np.int64)
        pos += (np.arange(nb, dtype=np.int64) * size)[:, None]
        labels = sorted_dom.ravel()[pos]  # domain of each slot
        if lo == 0 and hi == size:
            # rank of each slot among its domain's slots, in slot order: a stable sort by domain puts the
            # slots of domain j at the sorted positions of j's run, in slot order; the rank within a run is
            # the flat position minus the run's flat start
            run_start = np.cumsum(counts) - counts
            first = np.arange(nb * size, dtype=np.int64) - np.repeat(run_start, counts)
            order = np.argsort(labels, axis=1, kind="stable")
            order += (np.arange(nb, dtype=np.int64) * size)[:, None]
            within = np.empty(nb * size, dtype=np.int64)
            within[order.ravel()] = first
            within = within.reshape(nb, size)
        else:
            within = self._slice_ranks(labels, lo, hi)
        dom = labels[:, lo:hi].astype(np.int64)
        draw = np.take_along_axis(before, dom, axis=1) + within
        return dom, draw

    def _slice_ranks(self, labels: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """For slots ``[lo, hi)`` of each row: how many earlier slots of the row share the slot's domain.

        Slots before ``lo`` only need counting (bincount, O(lo)); the slice itself is ranked with a stable
        sort (O(hi - lo)), so a rank's sorting work is proportional to its own share.
        """
        nb, d, k = labels.shape[0], self.num_domains, hi - lo
        rows = (np.arange(nb, dtype=np.int64) * d)[:, None]
        before = np.bincount((labels[:, :lo] + rows).ravel(), minlength=nb * d).reshape(nb, d)
        part = labels[:, lo:hi]
        cnt = np.bincount((part + rows).ravel(), minlength=nb * d).reshape(nb, d)
        start = np.cumsum(cnt, axis=1) - cnt  # first sorted position of each domain within the slice
        order = np.argsort(part, axis=1, kind="stable")
        sorted_dom = np.take_along_axis(part, order, axis=1).astype(np.int64)
        rank_sorted = np.arange(k, dtype=np.int64)[None, :] - np.take_along_axis(start, sorted_dom, axis=1)
        rank_sorted += np.take_along_axis(before, sorted_dom, axis=1)
        order += (np.arange(nb, dtype=np.int64) * k)[:, None]
        within = np.empty(nb * k, dtype=np.int64)
        within[order.ravel()] = rank_sorted.ravel()
        return within.reshape(nb, k)

    def domain_order(
        self, dom: np.ndarray, draw: np.ndarray, sizes: np.ndarray, halves: np.ndarray
    ) -> np.ndarray:
        """Local index of draw ``draw`` of domain ``dom``: ``perm_{dom, epoch}(draw mod n_dom)``."""
        n = sizes[dom]
        epoch = draw // n
        within = draw - epoch * n
        key = mix(self.domain_base[dom] + epoch.astype(np.uint64) * _U64_G)
        return permute(within.astype(np.uint64), n.astype(np.uint64), halves[dom], key).astype(
            np.int64
        )


def warn_unslotted(
    weights: Sequence[float], units: Sequence[int], batch_size: int, what: str, stacklevel: int = 3
) -> None:
    """Warn when a domain with nonzero weight is quantised to no samples at all."""
    starved = [j for j, (w, u) in enumerate(zip(weights, units)) if w > 0 and u == 0]
    if starved:
        grid = 1.0 / (batch_size * period_steps(batch_size))
        warnings.warn(
            f"{what}: domain(s) {starved} have a nonzero weight below the weight grid {grid:.3g} "
            f"(1 / (batch_size * {period_steps(batch_size)}) for batch_size={batch_size}); they will not be "
            "sampled. Increase the weight or batch_size.",
            UserWarning,
            stacklevel=stacklevel,
        )

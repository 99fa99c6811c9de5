"""The pure-function core shared by :class:`~tikmix.data.MixtureSampler` and
:class:`~tikmix.data.MixtureIterableDataset`.

Everything here is a function of ``(seed, schedule, position)``; nothing depends on what was drawn before.

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
    "Stage",
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


@dataclass(frozen=True)
class Stage:
    """One entry of the mixture schedule: from global step ``start`` on, blocks follow ``weights``.

    ``weights`` are normalised to sum to 1; ``counts`` are the exact per-block sample counts
    (``largest_remainder(weights, batch_size)``).
    """

    start: int
    weights: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Segment:
    """A run of global steps ``[start, stop)`` whose blocks all hold ``counts`` samples per domain.

    ``drawn[j]`` is how many samples of domain ``j`` the global stream drew before ``start``; ``stop`` is
    None for an unbounded run. Exhaustion can split a stage into several segments.
    """

    start: int
    stop: int | None
    counts: np.ndarray  # int64 [D]
    drawn: np.ndarray  # int64 [D]
    stage: int
    size: int  # samples per block (sum of counts); < batch_size only for the final partial block

    def drawn_at(self, step: int) -> np.ndarray:
        return self.drawn + (step - self.start) * self.counts


def _waterfill(weights: Sequence[float], room: Sequence[int | None], total: int) -> list[int]:
    """Largest-remainder allocation of ``total`` by ``weights`` where no domain gets more than its room.

    Domains whose share exceeds their room get exactly their room; the rest is shared again among the
    others, in proportion to their weights. The sum is below ``total`` only if every weighted domain is full.
    """
    d = len(weights)
    alloc = [0] * d
    free = [weights[j] > 0 for j in range(d)]
    budget = total
    while budget > 0 and any(free):
        c = largest_remainder([weights[j] if free[j] else 0.0 for j in range(d)], budget)
        over = [j for j in range(d) if free[j] and room[j] is not None and c[j] > room[j]]
        if not over:
            for j in range(d):
                if free[j]:
                    alloc[j] = c[j]
            return alloc
        for j in over:
            alloc[j] = room[j]
            budget -= room[j]
            free[j] = False
    return alloc


class MixturePlan:
    """Stage list + exhaustion rule → segments, and the per-block layout of the global stream.

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
                clipped.append(
                    Segment(seg.start, stop, seg.counts, seg.drawn, seg.stage, seg.size)
                )
            segments = clipped
        self.segments = tuple(segments)
        self.end_step = end
        self._tables: dict[tuple[int, int, bytes], tuple[np.ndarray, np.ndarray]] = {}
        self._starts = [s.start for s in self.segments]

    # ------------------------------------------------------------------ construction
    def _build(
        self, caps: Sequence[int | None] | None, exhaustion: str, drop_last: bool
    ) -> tuple[list[Segment], int | None]:
        d, bsz = self.num_domains, self.batch_size
        drawn = [0] * d
        segs: list[Segment] = []

        def add(start: int, stop: int | None, counts: Sequence[int], stage: int) -> None:
            segs.append(
                Segment(
                    start,
                    stop,
                    np.asarray(counts, dtype=np.int64),
                    np.asarray(drawn, dtype=np.int64),
                    stage,
                    int(sum(counts)),
                )
            )

        capped = caps is not None and exhaustion != "wrap" and any(c is not None for c in caps)
        for k, st in enumerate(self.stages):
            stop = self.stages[k + 1].start if k + 1 < len(self.stages) else None
            s = st.start
            if not capped:
                add(s, stop, st.counts, k)
                if stop is None:
                    return segs, None
                for j in range(d):
                    drawn[j] += (stop - s) * st.counts[j]
                continue
            assert caps is not None
            while stop is None or s < stop:
                room = [None if caps[j] is None else caps[j] - drawn[j] for j in range(d)]
                if exhaustion == "stop":
                    w = list(st.weights)
                    c = list(st.counts)
                else:  # redistribute: exhausted domains give their share to the others
                    w = [st.weights[j] if (room[j] is None or room[j] > 0) else 0.0 for j in range(d)]
                    if sum(w) <= 0:
                        return segs, s
                    c = list(largest_remainder(w, bsz))
                fits = [room[j] // c[j] for j in range(d) if c[j] > 0 and room[j] is not None]
                m = min(fits) if fits else None
                seg_stop = None if m is None else s + m
                if stop is not None and (seg_stop is None or seg_stop > stop):
                    seg_stop = stop
                if seg_stop is None or seg_stop > s:
                    add(s, seg_stop, c, k)
                    if seg_stop is None:
                        return segs, None
                    for j in range(d):
                        drawn[j] += (seg_stop - s) * c[j]
                    s = seg_stop
                    continue
                # Block s cannot be filled with the counts c.
                if exhaustion == "stop":
                    alloc = [c[j] if room[j] is None else min(c[j], room[j]) for j in range(d)]
                else:
                    alloc = _waterfill(w, room, bsz)
                    if sum(alloc) == bsz:  # a full transition block; exhausted domains drop out after it
                        add(s, s + 1, alloc, k)
                        for j in range(d):
                            drawn[j] += alloc[j]
                        s += 1
                        continue
                if not drop_last and sum(alloc) > 0:
                    add(s, s + 1, alloc, k)
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
        """Σ over steps < stop of (stage weights × samples in that step): the requested mixture, in samples."""
        out = np.zeros(self.num_domains, dtype=np.float64)
        for seg in self.segments:
            b = stop if seg.stop is None else min(seg.stop, stop)
            if b > seg.start:
                out += (b - seg.start) * seg.size * np.asarray(self.stages[seg.stage].weights)
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

        All steps must lie in ``seg``. Slot ``s`` of step ``b`` belongs to the domain owning position
        ``perm_b(s)`` of the domain-sorted block (domain ``j`` owns ``counts_j`` consecutive positions), so
        every block holds exactly ``counts_j`` slots of domain ``j`` in a keyed random order. The ``r``-th
        slot of domain ``j`` in slot order gets draw number ``drawn_j(b) + r``: a domain's draws appear in
        the stream in increasing order. Returns two int64 arrays of shape ``[len(steps), hi - lo]``.
        The whole block's labels are computed (O(batch_size) per block) to rank the slice's slots.
        """
        steps = np.asarray(steps, dtype=np.int64)
        nb, size = steps.size, seg.size
        table, first = self._block_tables(seg)
        keys = mix(self.block_base + steps.astype(np.uint64) * _U64_G)
        slots = np.broadcast_to(np.arange(size, dtype=np.uint64), (nb, size))
        pos = permute(slots, size, half_bits(size), keys[:, None])
        labels = table[pos]  # domain of each slot
        if lo == 0 and hi == size:
            # rank of each slot among its domain's slots, in slot order: a stable sort by domain puts the
            # slots of domain j at sorted positions [first_j, first_j + counts_j), in slot order
            order = np.argsort(labels, axis=1, kind="stable")
            order += (np.arange(nb, dtype=np.int64) * size)[:, None]
            within = np.empty(nb * size, dtype=np.int64)
            within[order.ravel()] = np.tile(first, nb)
            within = within.reshape(nb, size)
        else:
            within = self._slice_ranks(labels, lo, hi)
        dom = labels[:, lo:hi].astype(np.int64)
        draw = seg.drawn[dom] + (steps - seg.start)[:, None] * seg.counts[dom] + within
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

    def _block_tables(self, seg: Segment) -> tuple[np.ndarray, np.ndarray]:
        """(domain of each sorted position, rank of each sorted position within its domain) for ``seg``."""
        key = (seg.start, seg.size, seg.counts.tobytes())
        hit = self._tables.get(key)
        if hit is None:
            dtype = np.int16 if self.num_domains < 2**15 else np.int64
            table = np.repeat(np.arange(self.num_domains, dtype=dtype), seg.counts)
            first = np.arange(seg.size, dtype=np.int64) - np.repeat(np.cumsum(seg.counts) - seg.counts, seg.counts)
            hit = (table, first)
            if len(self._tables) > 64:
                self._tables.clear()
            self._tables[key] = hit
        return hit

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
    weights: Sequence[float], counts: Sequence[int], batch_size: int, what: str, stacklevel: int = 3
) -> None:
    """Warn when a domain with nonzero weight gets no slot in a block."""
    starved = [j for j, (w, c) in enumerate(zip(weights, counts)) if w > 0 and c == 0]
    if starved:
        warnings.warn(
            f"{what}: domain(s) {starved} have a nonzero weight but get no slot in a block of "
            f"batch_size={batch_size} (largest-remainder rounding); they will not be sampled. "
            "Increase batch_size or the weight.",
            UserWarning,
            stacklevel=stacklevel,
        )

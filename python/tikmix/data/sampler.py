"""MixtureSampler: a live-reweightable, exactly resumable, DDP-aware sampler over per-domain datasets."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, IterableDataset, Sampler

from .._validation import check_int
from ._base import MixtureBase, RealisedCounts, check_domain_sizes
from ._stream import Segment, half_bits

__all__ = ["MixtureSampler", "DomainConcatDataset", "concat_domains", "locate_index", "RealisedCounts"]

_CHUNK_SAMPLES = 1 << 14  # samples of whole blocks per numpy chunk (the layout works on whole blocks)


def locate_index(index: Any, domain_sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | tuple[int, int]:
    """Map a global index of the domain concatenation to ``(domain, local index)``.

    ``index`` may be an int (returns two ints) or an integer array (returns two int64 arrays).
    Raises IndexError outside ``[0, sum(domain_sizes))``.
    """
    sizes = np.asarray(domain_sizes, dtype=np.int64)
    ends = np.cumsum(sizes)
    scalar = isinstance(index, (int, np.integer)) and not isinstance(index, bool)
    idx = np.asarray(index, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= ends[-1]):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise IndexError(f"index {bad} is out of range for {int(ends[-1])} samples in {sizes.size} domains")
    dom = np.searchsorted(ends, idx, side="right")
    local = idx - (ends - sizes)[dom]
    if scalar:
        return int(dom), int(local)
    return dom.astype(np.int64), local.astype(np.int64)


class DomainConcatDataset(ConcatDataset):
    """``ConcatDataset`` of per-domain map-style datasets, in domain order, matching :class:`MixtureSampler`.

    Global index ``offset_j + i`` is sample ``i`` of domain ``j``. ``domain_sizes`` feeds the sampler;
    ``domain_names`` (when built from a mapping name -> dataset, else None) lets a trainer check that the
    :class:`tikmix.Controller`'s domains are these, in this order; :meth:`locate` maps a global index back to
    ``(domain, local index)``.
    """

    def __init__(self, datasets: Sequence[Dataset] | Mapping[str, Dataset]) -> None:
        names: tuple[str, ...] | None = None
        if isinstance(datasets, Mapping):
            names = tuple(str(n) for n in datasets)
            datasets = list(datasets.values())
        elif isinstance(datasets, (str, bytes)) or not isinstance(datasets, (Sequence, Iterable)):
            raise TypeError("datasets must be a mapping name -> dataset or a sequence of datasets, got "
                            f"{type(datasets).__name__}")
        datasets = list(datasets)
        if not datasets:
            raise ValueError("datasets is empty: at least one domain dataset is needed")
        label = (lambda j: f"datasets[{names[j]!r}]") if names is not None else (lambda j: f"datasets[{j}]")
        for j, ds in enumerate(datasets):
            if isinstance(ds, IterableDataset):
                raise TypeError(
                    f"{label(j)} is an IterableDataset; use MixtureIterableDataset for streaming domains"
                )
            if not hasattr(ds, "__len__") or not hasattr(ds, "__getitem__"):
                raise TypeError(f"{label(j)} must be a map-style dataset with __len__ and __getitem__")
            if len(ds) == 0:
                raise ValueError(f"{label(j)} is empty: every domain needs at least one sample")
        super().__init__(datasets)
        self.domain_sizes: tuple[int, ...] = tuple(len(ds) for ds in datasets)
        self.domain_names: tuple[str, ...] | None = names

    def locate(self, index: Any) -> Any:
        """``(domain, local index)`` of a global index (int or int array); see :func:`locate_index`."""
        return locate_index(index, self.domain_sizes)


def concat_domains(datasets: Sequence[Dataset] | Mapping[str, Dataset]) -> DomainConcatDataset:
    """Concatenate per-domain datasets for :class:`MixtureSampler` (``MixtureSampler(ds.domain_sizes, ...)``).

    Pass the same mapping name -> dataset as the controller's ``domains``: the result then carries
    ``domain_names`` (and always ``domain_sizes``), and :class:`~tikmix.integrations.hf.MixtureTrainer` and the
    Lightning callback refuse a controller whose domains differ in names, order or sizes.
    """
    return DomainConcatDataset(datasets)


class MixtureSampler(MixtureBase, Sampler[int]):
    """Sampler over a concatenation of per-domain datasets that follows a mixture schedule exactly.

    Args:
        domain_sizes: samples per domain (each >= 1), in the order of the concatenation (see
            :func:`concat_domains`); index ``sum(domain_sizes[:j]) + i`` is sample ``i`` of domain ``j``.
        weights: initial mixture, one non-negative finite weight per domain (normalised; zeros allowed).
        batch_size: the *global* batch: samples per step over all ranks. Each step is one block.
        seed: any int; the whole stream is a function of it.
        rank: this process's slot; default from ``torch.distributed``: when no process group exists yet, the rank
            and world size are taken at first use (iteration), so the sampler may be built before the group.
        world_size: number of processes; default from ``torch.distributed`` when initialised, else 1.
            ``batch_size`` must be divisible by ``world_size``.
        drop_last: whether a final partial block (only possible when domains run out under ``max_epochs``)
            is dropped (default) or handed out, split across ranks as evenly as possible.
        max_epochs: cap on passes over each domain (an int, or one int/None per domain); None = no cap.
        exhaustion: what happens when a capped domain runs out:
            ``"wrap"`` (default; needs ``max_epochs=None``) -- domains cycle forever, each epoch in a fresh
            permutation; ``"stop"`` -- the stream ends at the first step whose block cannot be filled with
            the requested counts; ``"redistribute"`` -- an exhausted domain's slots go to the others in
            proportion to their weights (the block where it runs out takes what is left of it), and the
            stream ends when no weighted domain is left.
        num_steps: optional stream length in global steps (makes an infinite stream finite).
        tokens_per_sample: int or one int per domain, used by :meth:`realised_counts` for token counts.

    **Semantics.** The global stream is a pure function of ``(seed, schedule, position)``. Global step ``b``
    is a block of ``batch_size`` samples whose per-domain counts track the *cumulative* request: each step
    adds ``w_j * batch_size`` to domain ``j``'s request (weights of the stage in effect), and the step's
    samples go one at a time to the domain furthest behind its request, ties to the lower index (the
    largest-deficit rule of Megatron's blended datasets, applied per block). So after every step every
    domain's realised count is within one sample of its requested count (the exact bound, including the
    case of weights below one sample per step, is in :class:`~tikmix.data._stream.MixturePlan`), also
    across weight changes and at every world size. Weights are quantised to multiples of
    ``1 / lcm(batch_size, 10080)`` (1e-4 or finer; equal weights over up to 10 domains stay exact); the
    quantised weights are what :attr:`schedule` and :meth:`realised_counts` report, and a nonzero weight
    below the grid warns. The allocation is periodic within a stage, so any step's counts are O(D)
    arithmetic. Within the block, the samples are placed by a keyed permutation of
    ``(seed, b)``. The ``t``-th sample ever drawn from domain ``j`` is ``perm_{j,e}(t mod n_j)`` with epoch
    ``e = t // n_j`` and ``perm`` a keyed bijection of ``[0, n_j)`` computed in O(1) memory (Feistel network
    with cycle walking), so within each epoch of a domain every index appears exactly once. ``t`` for a slot is
    arithmetic: samples of ``j`` drawn before the step + rank in the block.
    Rank ``r`` takes the contiguous slice ``[r*B/W, (r+1)*B/W)`` of every block, so the ranks' batches of
    one step, concatenated in rank order, are that global block.

    **Changing the mixture.** :meth:`set_weights` schedules new weights from a step boundary (default: the
    next step not yet produced). With a prefetching DataLoader (``num_workers > 0``) the sampler runs a few
    steps ahead of training, so a change applies from the first step the DataLoader has not yet requested;
    to pin it to an exact training step, schedule it ahead (``at_step`` >= :attr:`next_free_step`).

    **State and resume.** ``state_dict()`` returns a small JSON-serialisable dict:

    * ``"format"``: ``"tikmix.mixture/2"``;
    * ``"step"``: global steps completed (absolute; pass ``state_dict(step=trainer_step)`` when the
      DataLoader prefetches, since the sampler's own count runs ahead);
    * ``"offset"``: samples of step ``step``'s local slice already handed out (0 at a step boundary);
    * ``"world_size"``: the world size that saved it (only matters when ``offset > 0``);
    * ``"schedule"``: the stages ``[[start_step, weights, units], ...]`` (quantised weights, and the per-step
      request in units of ``1/P`` sample with ``P = lcm(batch_size, 10080) / batch_size``);
    * ``"config"``: ``kind``, ``domain_sizes``, ``batch_size``, ``seed``, ``max_epochs``, ``exhaustion``
      -- everything the stream depends on besides the schedule.

    Resume rule: ``load_state_dict`` checks the config (a mismatch raises ValueError naming the fields),
    restores the schedule and continues at global step ``step`` -- with any world size, since every rank
    derives its slice of each global block from the global position. The resumed run yields exactly the
    samples the uninterrupted run would have, none lost or repeated. A mid-step ``offset`` can only be
    resumed with the same world size. ``drop_last``, ``num_steps`` and ``tokens_per_sample`` are not part
    of the config and may change on resume.

    ``len(sampler)`` is the number of indices this rank still yields (TypeError for an infinite stream).
    """

    _KIND = "sampler"

    def __init__(
        self,
        domain_sizes: Sequence[int],
        weights: Any,
        *,
        batch_size: int,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = True,
        max_epochs: int | Sequence[int | None] | None = None,
        exhaustion: str = "wrap",
        num_steps: int | None = None,
        tokens_per_sample: int | Sequence[int] | None = None,
    ) -> None:
        sizes = check_domain_sizes(domain_sizes)
        self._setup(
            domain_sizes=sizes,
            weights=weights,
            batch_size=batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            max_epochs=max_epochs,
            exhaustion=exhaustion,
            num_steps=num_steps,
            tokens_per_sample=tokens_per_sample,
        )
        n = np.asarray(sizes, dtype=np.int64)
        self._sizes_arr = n
        self._halves = np.asarray([half_bits(int(v)) for v in sizes], dtype=np.uint64)
        self._offsets = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
        self._total = int(n.sum())

    # ---------------------------------------------------------------- index computation
    def _indices(self, seg: Segment, steps: np.ndarray, lo: int, hi: int) -> np.ndarray:
        dom, draw = self._plan.layout(seg, steps, lo, hi)
        local = self._plan.domain_order(dom, draw, self._sizes_arr, self._halves)
        return self._offsets[dom] + local

    def _range(self, start_step: int, stop_step: int, local: bool) -> np.ndarray:
        start_step = check_int(start_step, "start_step", minimum=0)
        stop_step = check_int(stop_step, "stop_step", minimum=0)
        if stop_step < start_step:
            raise ValueError(f"stop_step={stop_step} is before start_step={start_step}")
        parts: list[np.ndarray] = []
        step = start_step
        while step < stop_step:
            seg = self._plan.segment_at(step)
            if seg is None:
                break
            stop = stop_step if seg.stop is None else min(seg.stop, stop_step)
            lo, hi = self._local_share(seg) if local else (0, seg.size)
            per = max(1, _CHUNK_SAMPLES // seg.size)
            for a in range(step, stop, per):
                steps = np.arange(a, min(a + per, stop), dtype=np.int64)
                parts.append(self._indices(seg, steps, lo, hi).ravel())
            step = stop
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(parts)

    def local_indices(self, start_step: int, stop_step: int) -> np.ndarray:
        """This rank's indices for global steps ``[start_step, stop_step)`` (flat int64; no state change)."""
        return self._range(start_step, stop_step, local=True)

    def global_indices(self, start_step: int, stop_step: int) -> np.ndarray:
        """The global stream (all ranks, rank order) for steps ``[start_step, stop_step)`` (flat int64)."""
        return self._range(start_step, stop_step, local=False)

    def locate(self, index: Any) -> Any:
        """``(domain, local index)`` of a global index (int or int array)."""
        return locate_index(index, self._sizes_arr)

    # ---------------------------------------------------------------- iteration
    def __iter__(self) -> Iterator[int]:
        step, off = self._position()
        self._reset_position(step, off)  # an older live iterator stops here
        return self._iterate(self._generation)

    def _iterate(self, generation: int) -> Iterator[int]:
        rows_per_chunk = 1
        while generation == self._generation:
            step = self._step
            seg = self._plan.segment_at(step)
            if seg is None:
                return
            version = self._version
            lo, hi = self._local_share(seg)
            nb = rows_per_chunk if seg.stop is None else min(rows_per_chunk, seg.stop - step)
            rows = self._indices(seg, np.arange(step, step + nb, dtype=np.int64), lo, hi).tolist()
            rows_per_chunk = min(rows_per_chunk * 2, max(1, _CHUNK_SAMPLES // seg.size))
            for row in rows:
                if generation != self._generation or version != self._version:
                    break  # position reset, or the schedule changed: recompute from the current step
                if self._row_skip:
                    del row[: self._row_skip]
                if not (yield from self._play_row(row, generation)):
                    return

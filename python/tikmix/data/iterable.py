"""MixtureIterableDataset: the mixture stream over per-domain *streams* (iterables), worker-aware."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from ._base import MixtureBase, _to_list, check_domain_sizes

__all__ = ["MixtureIterableDataset"]

_CHUNK_SAMPLES = 1 << 12
_SEEK_MIN_GAP = 64
_END = object()


class _SourceReader:
    """Reads draw ``t`` of one domain: element ``t mod L`` of its source (pass length ``L``), moving forward.

    Plain iterables are re-iterated from the start for every pass and skipped through; a source with an
    ``iter_from(offset)`` method and a known length is opened at the needed offset instead.
    """

    def __init__(self, source: Iterable[Any], size: int | None, domain: int) -> None:
        self.source = source
        self.pass_len = size
        self.declared = size
        self.domain = domain
        self.seekable = size is not None and callable(getattr(source, "iter_from", None))
        self.it: Iterator[Any] | None = None
        self.pass_start = 0  # draw number of the current pass's first element
        self.pos = 0  # draw number of the element self.it yields next

    def _open(self, t: int) -> None:
        if (
            self.it is not None
            and not self.seekable
            and self.pass_len is not None
            and self.pos == self.pass_start + self.pass_len
            and next(self.it, _END) is not _END
        ):
            raise ValueError(
                f"sources[{self.domain}] yielded more than {self.pass_len} items in a pass, its size from "
                "domain_sizes or len(); every pass must yield the same items"
            )
        if self.pass_len is None:  # length unknown: only a sequential read from draw 0 is possible
            self.it, self.pass_start, self.pos = iter(self.source), 0, 0
            return
        start = t - t % self.pass_len
        if self.seekable:
            self.it = iter(self.source.iter_from(t - start))  # type: ignore[attr-defined]
            self.pass_start, self.pos = start, t
        else:
            self.it, self.pass_start, self.pos = iter(self.source), start, start

    def get(self, t: int) -> Any:
        if self.it is None or t < self.pos:
            self._open(t)
        elif self.pass_len is not None and t >= self.pass_start + self.pass_len:
            self._open(t)
        elif self.seekable and t - self.pos > _SEEK_MIN_GAP:
            self._open(t)
        while True:
            assert self.it is not None
            gap = t - self.pos
            if gap:
                done = sum(1 for _ in itertools.islice(self.it, gap))
                self.pos += done
            if self.pos == t:
                try:
                    item = next(self.it)
                except StopIteration:
                    pass
                else:
                    self.pos += 1
                    return item
            self._end_of_pass()  # the pass ended before draw t: the length is known now
            self._open(t)

    def _end_of_pass(self) -> None:
        length = self.pos - self.pass_start
        if self.seekable:
            if self.pos != self.pass_start + (self.pass_len or 0):
                raise ValueError(
                    f"sources[{self.domain}].iter_from ended after draw {self.pos}, before the end of its "
                    f"declared length {self.pass_len}"
                )
            return
        if length == 0:
            raise ValueError(f"sources[{self.domain}] yielded no items: every domain needs at least one")
        if self.pass_len is None:
            self.pass_len = length
        elif length != self.pass_len:
            raise ValueError(
                f"sources[{self.domain}] yielded {length} items in a pass but its size is {self.pass_len} "
                "(from domain_sizes or len()); every pass must yield the same items"
            )


class MixtureIterableDataset(MixtureBase, IterableDataset):
    """Mixture of per-domain streams with the exact block composition and state of :class:`MixtureSampler`.

    Args:
        sources: one re-iterable per domain. Every ``iter(source)`` must yield the same sequence (shuffle
            inside with a fixed seed if wanted); a domain's ``t``-th draw is element ``t mod L`` of it
            (``L`` = items per pass), so domains cycle pass after pass. A source with a method
            ``iter_from(offset)`` and ``len()`` is opened at the needed offset instead of being skipped
            through.
        weights: initial mixture, as for :class:`MixtureSampler` (the block layout is identical: the same seed
            and schedule give the same domain for every slot).
        batch_size: the *global* batch (as for :class:`MixtureSampler`).
        seed: as for :class:`MixtureSampler`.
        rank: as for :class:`MixtureSampler`.
        world_size: as for :class:`MixtureSampler`.
        drop_last: as for :class:`MixtureSampler`.
        max_epochs: as for :class:`MixtureSampler`.
        exhaustion: as for :class:`MixtureSampler`.
        num_steps: as for :class:`MixtureSampler`.
        tokens_per_sample: as for :class:`MixtureSampler`.
        domain_sizes: items per pass of each source (None entries = unknown); needed for ``max_epochs``.
            Defaults to ``len(source)`` where the source has it.
        with_domain: yield ``(domain, item)`` instead of ``item``.

    **Workers.** In a DataLoader with ``num_workers = K`` worker ``k`` produces this rank's slice of global
    steps ``s0 + k, s0 + k + K, ...`` (``s0`` = the position when the iterator was created). With
    ``DataLoader(ds, batch_size=batch_size // world_size)`` the loader yields one step per batch, in step
    order, so its output equals the single-process stream. Plain-iterable sources are read by every worker
    and skipped through (cheap for light sources; use ``iter_from`` sources or :class:`MixtureSampler`
    over map-style data for heavy ones).

    **State.** As for :class:`MixtureSampler` (see its docstring for keys and the resume rule), with
    ``config['kind'] == 'iterable'``. Workers hold copies of the dataset, so with ``num_workers > 0``:
    pass ``state_dict(step=trainer_step)``; and a :meth:`set_weights` reaches the workers when the
    DataLoader iterator is re-created (not with ``persistent_workers=True``) -- call ``seek(step)``,
    ``set_weights(w, at_step=step)``, then ``iter(loader)``. With ``num_workers=0`` this object tracks its
    own position like the sampler does. Resume workers at a step boundary: a mid-step ``offset`` is
    honoured (worker 0 skips it) but shifts that worker's batches off the step grid.

    **Stateful loaders.** Under ``torchdata.stateful_dataloader.StatefulDataLoader`` resume is exact with any
    ``num_workers``: inside worker ``k`` of ``K``, :meth:`state_dict` reports that worker's own next step (and how
    much of it was handed out), marked ``"worker": {"id": k, "num_workers": K}``; the loader saves one such state per
    worker and, on ``load_state_dict``, gives each back to the same worker, whose next iterator then continues at its
    saved step instead of ``k`` steps after the loader's position. With ``num_workers=0`` the loader saves this
    object's tracked position. Either way the resumed loader yields the same batches, in the same order, as an
    uninterrupted one (schedule changes included, since the schedule is part of every state).
    """

    _KIND = "iterable"

    def __init__(
        self,
        sources: Sequence[Iterable[Any]],
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
        domain_sizes: Sequence[int | None] | None = None,
        with_domain: bool = False,
    ) -> None:
        srcs = _to_list(sources, "sources")
        if not srcs:
            raise ValueError("sources is empty: at least one domain is needed")
        for j, src in enumerate(srcs):
            if not isinstance(src, Iterable):
                raise TypeError(f"sources[{j}] must be iterable, got {type(src).__name__}")
            if iter(src) is src:
                raise TypeError(
                    f"sources[{j}] is a one-shot iterator; pass a re-iterable (a list, a dataset, an object "
                    "whose __iter__ starts a fresh pass)"
                )
        if domain_sizes is None:
            sizes_raw: list[Any] = [len(s) if hasattr(s, "__len__") else None for s in srcs]  # type: ignore[arg-type]
        else:
            sizes_raw = _to_list(domain_sizes, "domain_sizes")
            if len(sizes_raw) != len(srcs):
                raise ValueError(
                    f"domain_sizes must have length {len(srcs)} (one per source), got {len(sizes_raw)}"
                )
            for j, (src, n) in enumerate(zip(srcs, sizes_raw)):
                if n is not None and hasattr(src, "__len__") and len(src) != n:  # type: ignore[arg-type]
                    raise ValueError(f"domain_sizes[{j}] = {n} but len(sources[{j}]) = {len(src)}")  # type: ignore[arg-type]
        sizes = check_domain_sizes(sizes_raw, allow_unknown=True)
        if not isinstance(with_domain, bool):
            raise TypeError(f"with_domain must be a bool, got {type(with_domain).__name__}")
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
        self._sources = srcs
        self._with_domain = with_domain
        # DataLoader worker position (see "Stateful loaders" in the class docstring): [next step, row iterator of
        # that step or None, row length, worker id, number of workers]; None outside a multi-worker iterator.
        self._worker_pos: list[Any] | None = None
        self._worker_resume: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        step, off = self._position()
        if info is None or info.num_workers <= 1:
            self._reset_position(step, off)
            return self._iterate_tracked(self._generation)
        # A state saved by this very worker (same id and worker count) already holds this worker's own next step;
        # any other position is the loader's, and worker k starts k steps after it.
        first = step if self._worker_resume == (info.id, info.num_workers) else step + info.id
        self._worker_resume = None
        self._worker_pos = [first, None, 0, info.id, info.num_workers]
        return self._iterate_worker(step, off, info.id, info.num_workers, first)

    def state_dict(self, step: int | None = None) -> dict[str, Any]:
        """As :meth:`MixtureSampler.state_dict`; inside a DataLoader worker (``num_workers >= 2``) without ``step``:
        this worker's own position, marked with ``"worker": {"id", "num_workers"}`` (what ``StatefulDataLoader``
        saves per worker and hands back to the same worker on resume)."""
        pos = self._worker_pos
        if step is not None or pos is None:
            return super().state_dict(step)
        nxt, it, length, wid, nw = pos
        off = 0 if it is None else length - operator.length_hint(it)
        if it is not None and off >= length:
            nxt, off = nxt + nw, 0
        state = super().state_dict(nxt)
        state["offset"] = off
        state["worker"] = {"id": wid, "num_workers": nw}
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """As :meth:`MixtureSampler.load_state_dict`; a worker-marked state (see :meth:`state_dict`) makes the next
        iterator of worker ``id`` (of ``num_workers``) continue at that worker's saved step."""
        worker = state_dict.get("worker") if isinstance(state_dict, Mapping) else None
        resume = None
        if worker is not None:
            if not isinstance(worker, Mapping) or not {"id", "num_workers"} <= set(worker):
                raise ValueError("state_dict['worker'] must be a mapping with 'id' and 'num_workers'")
            resume = (int(worker["id"]), int(worker["num_workers"]))
        super().load_state_dict(state_dict)
        self._worker_resume = resume

    def _fetch(self, readers: list[_SourceReader], dom: np.ndarray, draw: np.ndarray) -> list[Any]:
        """Items for the slots (dom, draw) in slot order, reading each domain forward in draw order."""
        out: list[Any] = [None] * dom.size
        order = np.lexsort((draw, dom))
        d_sorted, t_sorted = dom[order].tolist(), draw[order].tolist()
        for i, j, t in zip(order.tolist(), d_sorted, t_sorted):
            item = readers[j].get(t)
            out[i] = (j, item) if self._with_domain else item
        return out

    def _readers(self) -> list[_SourceReader]:
        return [_SourceReader(s, n, j) for j, (s, n) in enumerate(zip(self._sources, self._domain_sizes))]

    def _iterate_tracked(self, generation: int) -> Iterator[Any]:
        readers = self._readers()
        while generation == self._generation:
            step = self._step
            seg = self._plan.segment_at(step)
            if seg is None:
                return
            version = self._version
            lo, hi = self._local_share(seg)
            nb = max(1, _CHUNK_SAMPLES // seg.size)
            if seg.stop is not None:
                nb = min(nb, seg.stop - step)
            dom, draw = self._plan.layout(seg, np.arange(step, step + nb, dtype=np.int64), lo, hi)
            for r in range(nb):
                if generation != self._generation or version != self._version:
                    break
                skip = self._row_skip
                row = self._fetch(readers, dom[r, skip:], draw[r, skip:])
                if not (yield from self._play_row(row, generation)):
                    return

    def _iterate_worker(self, start: int, offset: int, worker: int, num_workers: int, first: int) -> Iterator[Any]:
        readers = self._readers()
        pos = self._worker_pos
        step = first
        while True:
            seg = self._plan.segment_at(step)
            if seg is None:
                return
            lo, hi = self._local_share(seg)
            nb = max(1, _CHUNK_SAMPLES // seg.size)
            last = step + (nb - 1) * num_workers
            if seg.stop is not None and last >= seg.stop:
                nb = (seg.stop - 1 - step) // num_workers + 1
            steps = step + num_workers * np.arange(nb, dtype=np.int64)
            dom, draw = self._plan.layout(seg, steps, lo, hi)
            for r in range(nb):
                skip = offset if int(steps[r]) == start else 0
                row = self._fetch(readers, dom[r, skip:], draw[r, skip:])
                if pos is not None:  # where state_dict() finds this worker's progress
                    pos[0], pos[1], pos[2] = int(steps[r]), iter(row), len(row) + skip
                    yield from pos[1]
                    pos[0], pos[1], pos[2] = int(steps[r]) + num_workers, None, 0
                else:
                    yield from row
            step = int(steps[-1]) + num_workers

"""Schedule, position and state protocol shared by MixtureSampler and MixtureIterableDataset."""

from __future__ import annotations

import math
import os
import operator
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import _distributed
from .._validation import check_int
from ..formats import MIXTURE_STATE
from ._stream import MixturePlan, Segment, Stage, make_stage, warn_unslotted

__all__ = ["RealisedCounts", "EXHAUSTION_MODES", "STATE_FORMAT"]

EXHAUSTION_MODES = ("wrap", "stop", "redistribute")
STATE_FORMAT = MIXTURE_STATE
_MAX_TOTAL = 1 << 62


# ---------------------------------------------------------------------------------------- validation
def _to_list(value: Any, name: str) -> list[Any]:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist() if value.ndim == 1 else [value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.ndim == 1 else [value]
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence (list, tuple, array), got {type(value).__name__}")
    return list(value)


def check_domain_sizes(domain_sizes: Any, *, allow_unknown: bool = False) -> list[int | None]:
    """Validated per-domain sizes (each >= 1; None = unknown, only where ``allow_unknown``)."""
    sizes = _to_list(domain_sizes, "domain_sizes")
    if not sizes:
        raise ValueError("domain_sizes is empty: at least one domain is needed")
    out: list[int | None] = []
    for j, n in enumerate(sizes):
        if n is None and allow_unknown:
            out.append(None)
            continue
        n = check_int(n, f"domain_sizes[{j}]")
        if n < 1:
            raise ValueError(
                f"domain_sizes[{j}] = {n}: domain {j} is empty; every domain needs at least one sample"
            )
        out.append(n)
    if sum(n for n in out if n is not None) >= _MAX_TOTAL:
        raise ValueError("domain_sizes sum to 2**62 or more; global indices would overflow int64")
    return out


def check_weights(weights: Any, num_domains: int, name: str = "weights") -> tuple[float, ...]:
    """Validated weights (finite, >= 0, not all zero, one per domain), normalised to sum to 1."""
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().to(torch.float64).numpy()
    if isinstance(weights, (str, bytes, Mapping)):
        raise TypeError(f"{name} must be a sequence of {num_domains} numbers, got {type(weights).__name__}")
    try:
        arr = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of {num_domains} numbers, got {weights!r}") from None
    if arr.ndim != 1 or arr.shape[0] != num_domains:
        raise ValueError(
            f"{name} must have length {num_domains} (one weight per domain), got shape {tuple(arr.shape)}"
        )
    for j, v in enumerate(arr.tolist()):
        if not math.isfinite(v):
            raise ValueError(f"{name}[{j}] is {v}: weights must be finite")
        if v < 0:
            raise ValueError(f"{name}[{j}] = {v} is negative: weights must be >= 0")
    total = float(arr.sum())
    if total <= 0:
        raise ValueError(f"{name} are all zero: at least one domain needs a positive weight")
    return tuple(float(v) for v in (arr / total).tolist())


def _per_domain(value: Any, name: str, d: int, *, minimum: int, allow_none: bool) -> list[int | None] | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        v = check_int(value, name, minimum=minimum)
        return [v] * d
    items = _to_list(value, name)
    if len(items) != d:
        raise ValueError(f"{name} must be an int or a sequence of {d} values (one per domain), got {len(items)}")
    out: list[int | None] = []
    for j, v in enumerate(items):
        if v is None and allow_none:
            out.append(None)
        else:
            out.append(check_int(v, f"{name}[{j}]", minimum=minimum))
    return out


def _resolve_rank_world(rank: Any, world_size: Any, bsz: int) -> tuple[int, int]:
    """Validated ``(rank, world_size)``; a None is taken from ``torch.distributed`` (rank 0 of 1 without it)."""
    if world_size is None:
        world_size = _distributed.world_size()
    world_size = check_int(world_size, "world_size", minimum=1)
    if rank is None:
        rank = _distributed.rank()
    rank = check_int(rank, "rank")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is out of range for world_size={world_size}: expected 0 <= rank < {world_size}")
    if bsz % world_size:
        raise ValueError(
            f"batch_size={bsz} must be divisible by world_size={world_size}: batch_size is the global "
            "batch and every rank takes batch_size // world_size samples of each step"
        )
    return rank, world_size


# ---------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class RealisedCounts:
    """Per-domain samples (and tokens) in the global stream so far, next to the requested mixture.

    Fields: ``step`` (global steps covered; a partly taken step counts its taken samples), ``samples``
    and ``tokens`` (None without ``tokens_per_sample``) per domain, ``requested`` (the weights in effect at
    ``step``), ``requested_cumulative`` (the mixture the schedule asked for over the samples so far: each
    step's weights weighted by its samples), and ``realised`` (samples / total).
    """

    step: int
    samples: tuple[int, ...]
    tokens: tuple[int, ...] | None
    requested: tuple[float, ...]
    requested_cumulative: tuple[float, ...]

    @property
    def total_samples(self) -> int:
        return sum(self.samples)

    @property
    def realised(self) -> tuple[float, ...]:
        tot = self.total_samples
        return tuple((s / tot) if tot else 0.0 for s in self.samples)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field plus ``realised``."""
        return {
            "step": self.step,
            "samples": list(self.samples),
            "tokens": None if self.tokens is None else list(self.tokens),
            "requested": list(self.requested),
            "requested_cumulative": list(self.requested_cumulative),
            "realised": list(self.realised),
        }


# ---------------------------------------------------------------------------------------- base
class MixtureBase:
    """Common machinery; see :class:`~tikmix.data.MixtureSampler` for the semantics."""

    _KIND = "mixture"

    def _setup(
        self,
        *,
        domain_sizes: list[int | None],
        weights: Any,
        batch_size: Any,
        seed: Any,
        rank: Any,
        world_size: Any,
        drop_last: Any,
        max_epochs: Any,
        exhaustion: Any,
        num_steps: Any,
        tokens_per_sample: Any,
    ) -> None:
        d = len(domain_sizes)
        bsz = check_int(batch_size, "batch_size")
        if bsz <= 0:
            raise ValueError(f"batch_size must be a positive int (the global batch), got {bsz}")
        seed = check_int(seed, "seed")
        if not isinstance(drop_last, (bool, np.bool_)):
            raise TypeError(f"drop_last must be a bool, got {type(drop_last).__name__}")
        if exhaustion not in EXHAUSTION_MODES:
            raise ValueError(f"exhaustion must be one of {EXHAUSTION_MODES}, got {exhaustion!r}")
        epochs = _per_domain(max_epochs, "max_epochs", d, minimum=1, allow_none=True)
        caps: list[int | None] | None = None
        if epochs is not None and any(e is not None for e in epochs):
            if exhaustion == "wrap":
                raise ValueError(
                    "max_epochs has no effect with exhaustion='wrap' (domains cycle forever, a new "
                    "permutation each epoch); use exhaustion='stop' or 'redistribute', or max_epochs=None"
                )
            caps = []
            for j, e in enumerate(epochs):
                if e is not None and domain_sizes[j] is None:
                    raise ValueError(
                        f"max_epochs needs the size of domain {j}: pass domain_sizes=... or a source "
                        "with __len__"
                    )
                caps.append(None if e is None else e * domain_sizes[j])  # type: ignore[operator]
        if num_steps is not None:
            num_steps = check_int(num_steps, "num_steps", minimum=0)
        tps = _per_domain(tokens_per_sample, "tokens_per_sample", d, minimum=0, allow_none=False)
        # Built before the process group exists (e.g. before TrainingArguments under torchrun): the rank and world
        # size are bound at first use instead (_bind).
        self._rank_given = rank is not None or world_size is not None
        if self._rank_given or _distributed.is_initialized():
            rank, world_size = _resolve_rank_world(rank, world_size, bsz)
        w = check_weights(weights, d)
        stage = make_stage(0, w, bsz)
        warn_unslotted(w, stage.units, bsz, "weights", stacklevel=4)  # -> _setup -> __init__ -> caller

        self._domain_sizes = domain_sizes
        self._batch_size = bsz
        self._seed = seed
        self._rank = rank
        self._world_size = world_size
        self._drop_last = bool(drop_last)
        self._max_epochs = epochs
        self._exhaustion = exhaustion
        self._caps = caps
        self._num_steps = num_steps
        self._tokens_per_sample = tps
        self._stages: list[Stage] = [stage]
        self._plan = self._make_plan(self._stages)
        # Position: the next index belongs to step `_step`; `_row_skip` + what the live row iterator has
        # handed out is the number of samples of that step's local slice already produced.
        self._step = 0
        self._row_skip = 0
        self._row_list: list[Any] | None = None
        self._row_it: Iterator[Any] | None = None
        self._row_len = 0
        self._generation = 0  # bumped by load_state_dict/seek: older iterators stop
        self._version = 0  # bumped by schedule changes: iterators drop blocks computed in advance

    def _make_plan(self, stages: Sequence[Stage]) -> MixturePlan:
        return MixturePlan(
            stages,
            batch_size=self._batch_size,
            seed=self._seed,
            caps=self._caps,
            exhaustion=self._exhaustion,
            drop_last=self._drop_last,
            num_steps=self._num_steps,
        )

    # ---------------------------------------------------------------- read-only properties
    @property
    def num_domains(self) -> int:
        return len(self._domain_sizes)

    @property
    def domain_sizes(self) -> tuple[int | None, ...]:
        return tuple(self._domain_sizes)

    @property
    def batch_size(self) -> int:
        """Global batch size: samples per step over all ranks."""
        return self._batch_size

    @property
    def local_batch_size(self) -> int:
        """Samples per step on this rank (``batch_size // world_size``)."""
        return self._batch_size // self.world_size

    @property
    def rank(self) -> int:
        """This process's slot (given, or from ``torch.distributed`` when first used)."""
        return self._bind()[0]

    @property
    def world_size(self) -> int:
        """Number of processes (given, or from ``torch.distributed`` when first used)."""
        return self._bind()[1]

    def _bind(self) -> tuple[int, int]:
        """``(rank, world_size)``; when neither was given and no process group existed at construction, they are
        taken from ``torch.distributed`` at the first use that needs them."""
        if self._world_size is None:
            if not _distributed.is_initialized() and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
                raise RuntimeError(
                    f"this {self._KIND} is used before torch.distributed is initialised, but WORLD_SIZE="
                    f"{os.environ['WORLD_SIZE']} says this is a multi-process run, so its rank and world size are "
                    "not known yet: initialise the process group first (torch.distributed.init_process_group, or "
                    "create the TrainingArguments / Trainer), or pass rank= and world_size= explicitly"
                )
            self._rank, self._world_size = _resolve_rank_world(None, None, self._batch_size)
        elif not self._rank_given and _distributed.is_initialized() and _distributed.world_size() != self._world_size:
            raise RuntimeError(
                f"this {self._KIND} was bound to world_size={self._world_size} at its first use, but the process "
                f"group now has {_distributed.world_size()} processes: initialise torch.distributed before the "
                "first iteration (or pass rank= and world_size= explicitly)"
            )
        return self._rank, self._world_size  # type: ignore[return-value]

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def schedule(self) -> tuple[Stage, ...]:
        """The mixture schedule: stages ``(start step, quantised weights, per-step units)``."""
        return tuple(self._stages)

    @property
    def end_step(self) -> int | None:
        """First global step past the end of the stream (None: the stream is infinite)."""
        return self._plan.end_step

    @property
    def step(self) -> int:
        """Global step of the next sample this object hands out."""
        return self._position()[0]

    @property
    def offset(self) -> int:
        """Samples of step :attr:`step`'s local slice already handed out (0 at a step boundary)."""
        return self._position()[1]

    @property
    def next_free_step(self) -> int:
        """First global step none of whose samples were handed out: the earliest ``at_step`` allowed."""
        step, off = self._position()
        return step + (1 if off else 0)

    def weights_at(self, step: int) -> tuple[float, ...]:
        """Requested (normalised) weights of the stage in effect at global step ``step``."""
        return self._plan.stage_at(check_int(step, "step", minimum=0)).weights

    def block_counts(self, step: int) -> np.ndarray:
        """Exact per-domain sample counts of global step ``step`` (all ranks), after exhaustion rules.

        They follow the cumulative request (see the class docstring); zeros past the end.
        """
        step = check_int(step, "step", minimum=0)
        seg = self._plan.segment_at(step)
        if seg is None:
            return np.zeros(self.num_domains, dtype=np.int64)
        return seg.counts_at(step)

    def _local_share(self, seg: Segment) -> tuple[int, int]:
        rank, world = self._bind()
        return MixturePlan.slice_bounds(seg.size, rank, world)

    def _play_row(self, row: list[Any], generation: int) -> Generator[Any, None, bool]:
        """Yield ``row``, what is left of step :attr:`step`'s local slice, keeping the position that
        :meth:`state_dict` reads up to date; True once the step is done, False when a position reset (a new
        ``generation``) ended it."""
        self._row_list = row
        self._row_len = len(row)
        self._row_it = it = iter(row)
        yield from it
        if generation != self._generation:
            return False
        self._step += 1
        self._row_skip = 0
        self._row_list = None
        self._row_it = None
        return True

    def _position(self) -> tuple[int, int]:
        off = self._row_skip
        if self._row_it is not None:
            off += self._row_len - operator.length_hint(self._row_it)
        step = self._step
        if off:
            seg = self._plan.segment_at(step)
            if seg is not None:
                lo, hi = self._local_share(seg)
                if off >= hi - lo:
                    return step + 1, 0
        return step, off

    # ---------------------------------------------------------------- schedule
    def set_weights(self, weights: Any, at_step: int | None = None) -> None:
        """Use ``weights`` from global step ``at_step`` on (default: :attr:`next_free_step`).

        ``weights`` (one per domain, >= 0, finite, not all zero) are normalised. ``at_step`` must not be
        before :attr:`next_free_step` (steps already produced cannot change); any stage scheduled at or
        after ``at_step`` is replaced. The schedule is part of :meth:`state_dict`. In DDP every rank must
        make the same call. On error nothing changes.
        """
        w = check_weights(weights, self.num_domains)
        free = self.next_free_step
        if at_step is None:
            at_step = free
        else:
            at_step = check_int(at_step, "at_step", minimum=0)
            if at_step < free:
                raise ValueError(
                    f"at_step={at_step} is in the past: steps up to {free - 1} were already produced; "
                    f"the earliest step a new mixture can start at is {free}"
                )
        stage = make_stage(at_step, w, self._batch_size)
        warn_unslotted(w, stage.units, self._batch_size, "set_weights", stacklevel=3)
        stages = [s for s in self._stages if s.start < at_step]
        if not stages or stages[-1].units != stage.units:
            stages.append(stage)
        plan = self._make_plan(stages)
        self._stages, self._plan = stages, plan
        self._version += 1

    def seek(self, step: int) -> None:
        """Continue from global step ``step`` (the stream is a pure function of the position).

        Live iterators stop; the next ``iter()`` starts at ``step``. Useful to tell an iterable dataset
        used with DataLoader workers where training is, before :meth:`set_weights` and a new iterator.
        """
        step = check_int(step, "step", minimum=0)
        self._reset_position(step, 0)

    def _reset_position(self, step: int, offset: int) -> None:
        if self._row_list is not None:
            self._row_list.clear()  # a live `yield from` over this list ends at once
        self._row_list = None
        self._row_it = None
        self._row_len = 0
        self._step = step
        self._row_skip = offset
        self._generation += 1
        self._version += 1

    # ---------------------------------------------------------------- state
    def _config(self) -> dict[str, Any]:
        return {
            "kind": self._KIND,
            "domain_sizes": list(self._domain_sizes),
            "batch_size": self._batch_size,
            "seed": self._seed,
            "max_epochs": None if self._max_epochs is None else list(self._max_epochs),
            "exhaustion": self._exhaustion,
        }

    def state_dict(self, step: int | None = None) -> dict[str, Any]:
        """Small, JSON-serialisable state; see the class docstring for the keys and the resume rule.

        ``step``: the number of global steps the training loop has consumed. Pass it when a DataLoader
        prefetches (``num_workers > 0``: the sampler runs ahead of training) or for an iterable dataset
        read by workers; default: the position this object has handed out.
        """
        if step is None:
            step, offset = self._position()
        else:
            step, offset = check_int(step, "step", minimum=0), 0
        return {
            "format": STATE_FORMAT,
            "step": step,
            "offset": offset,
            "world_size": self.world_size,
            "schedule": [[s.start, list(s.weights), list(s.units)] for s in self._stages],
            "config": self._config(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` output (any world size at a step boundary). Validates first:
        on error (ValueError/TypeError naming the key) nothing changes. Live iterators stop."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        keys = ("format", "step", "offset", "world_size", "schedule", "config")
        missing = [k for k in keys if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict is missing key(s) {missing}; expected {list(keys)}")
        if state_dict["format"] != STATE_FORMAT:
            raise ValueError(f"state_dict['format'] is {state_dict['format']!r}, expected {STATE_FORMAT!r}")
        saved = state_dict["config"]
        if not isinstance(saved, Mapping):
            raise TypeError("state_dict['config'] must be a mapping")
        mine = self._config()
        diffs = [
            f"{k}: saved {saved.get(k, '<missing>')!r}, this {self._KIND} has {mine[k]!r}"
            for k in mine
            if _normalise(saved.get(k, "<missing>")) != _normalise(mine[k])
        ]
        if diffs:
            raise ValueError("state_dict comes from a different configuration: " + "; ".join(diffs))
        step = check_int(state_dict["step"], "state_dict['step']", minimum=0)
        offset = check_int(state_dict["offset"], "state_dict['offset']", minimum=0)
        saved_ws = check_int(state_dict["world_size"], "state_dict['world_size']", minimum=1)
        stages = self._parse_schedule(state_dict["schedule"])
        plan = self._make_plan(stages)
        if offset:
            if saved_ws != self.world_size:
                raise ValueError(
                    f"state_dict['offset'] = {offset}: it was saved in the middle of step {step} with "
                    f"world_size={saved_ws}, and resuming mid-step needs the same world size (this has "
                    f"{self.world_size}); save at a step boundary, e.g. state_dict(step=...)"
                )
            seg = plan.segment_at(step)
            share = 0
            if seg is not None:
                lo, hi = self._local_share(seg)
                share = hi - lo
            if offset >= share:
                raise ValueError(
                    f"state_dict['offset'] = {offset} is not inside step {step}'s local slice "
                    f"({share} samples on this rank)"
                )
        self._stages, self._plan = stages, plan
        self._reset_position(step, offset)

    def _parse_schedule(self, schedule: Any) -> list[Stage]:
        if isinstance(schedule, (str, bytes, Mapping)) or not isinstance(schedule, Sequence) or not schedule:
            raise ValueError("state_dict['schedule'] must be a non-empty list of [start, weights, units]")
        stages: list[Stage] = []
        for i, entry in enumerate(schedule):
            name = f"state_dict['schedule'][{i}]"
            if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 3:
                raise ValueError(f"{name} must be [start_step, weights, units]")
            start = check_int(entry[0], f"{name}[0] (start step)", minimum=0)
            if i == 0 and start != 0:
                raise ValueError(f"{name}[0]: the first stage must start at step 0, got {start}")
            if stages and start <= stages[-1].start:
                raise ValueError(f"{name}[0]: stage starts must increase, got {start} after {stages[-1].start}")
            check_weights(entry[1], self.num_domains, f"{name}[1] (weights)")
            w = tuple(float(v) for v in entry[1])
            if abs(sum(w) - 1.0) > 1e-9:
                raise ValueError(f"{name}[1] (weights) must be normalised to sum 1, got sum {sum(w)}")
            stage = make_stage(start, w, self._batch_size)
            got = _to_list(entry[2], f"{name}[2] (units)")
            if [int(c) if isinstance(c, (int, np.integer)) else c for c in got] != list(stage.units):
                raise ValueError(
                    f"{name}[2] (units) = {got} do not match the weights for batch_size="
                    f"{self._batch_size} (expected {list(stage.units)})"
                )
            stages.append(stage)
        return stages

    # ---------------------------------------------------------------- counting
    def __len__(self) -> int:
        """Samples this rank will still hand out (from the current position to the end of the stream).

        Raises TypeError for an infinite stream (``exhaustion='wrap'`` without ``num_steps``).
        """
        end = self._plan.end_step
        if end is None:
            raise TypeError(
                f"{type(self).__name__} is an infinite stream (no max_epochs cap, no num_steps): it has "
                "no len(); pass num_steps=... for a finite one"
            )
        step, off = self._position()
        total = 0
        for seg in self._plan.segments:
            a = max(seg.start, step)
            b = end if seg.stop is None else min(seg.stop, end)
            if b > a:
                lo, hi = self._local_share(seg)
                total += (b - a) * (hi - lo)
        return max(total - off, 0)

    def realised_counts(self, step: int | None = None) -> RealisedCounts:
        """Per-domain samples and tokens of the global stream so far, next to the requested weights.

        With ``step`` (global steps consumed): the exact counts of steps ``[0, step)``, pure arithmetic, no
        communication. Without: up to this object's position; the samples of a partly taken step are
        summed over ranks with ``all_reduce`` when a process group of this world size is initialised
        (then this is a collective call: make it on every rank).
        """
        if step is not None:
            step = check_int(step, "step", minimum=0)
            samples = self._plan.drawn_before(step)
            requested_cum = self._plan.requested_samples(step)
            cur = step
        else:
            cur, off = self._position()
            samples = self._plan.drawn_before(cur)
            requested_cum = self._plan.requested_samples(cur)
            partial = np.zeros(self.num_domains, dtype=np.int64)
            seg = self._plan.segment_at(cur)
            if off and seg is not None:
                lo, _ = self._local_share(seg)
                dom, _ = self._plan.layout(seg, np.array([cur]), lo, lo + off)
                partial = np.bincount(dom.ravel(), minlength=self.num_domains).astype(np.int64)
            if self.world_size > 1 and _distributed.world_size() == self.world_size:
                t = torch.from_numpy(partial)
                _distributed.all_reduce_sum_([t])
                partial = t.numpy()
            samples = samples + partial
            weights_now = np.asarray(self._plan.stage_at(cur).weights)
            requested_cum = requested_cum + weights_now * float(partial.sum())
        tot = float(requested_cum.sum())
        cum = tuple((requested_cum / tot).tolist()) if tot else tuple(self._plan.stage_at(cur).weights)
        tokens = None
        if self._tokens_per_sample is not None:
            tokens = tuple(int(s) * int(t) for s, t in zip(samples.tolist(), self._tokens_per_sample))  # type: ignore[arg-type]
        return RealisedCounts(
            step=cur,
            samples=tuple(int(s) for s in samples.tolist()),
            tokens=tokens,
            requested=self._plan.stage_at(cur).weights,
            requested_cumulative=cum,
        )

    def set_epoch(self, epoch: int) -> None:
        """Accepted for compatibility with ``DistributedSampler`` loops; it does nothing.

        The stream is a function of the global position; each domain's epochs (and their permutations)
        follow from how many samples of it were drawn.
        """
        check_int(epoch, "epoch", minimum=0)


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value

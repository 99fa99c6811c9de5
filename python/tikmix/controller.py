"""The training-loop controller: staged, influence-driven domain mixtures (TiKMiX) in three lines.

.. code-block:: python

    controller = tikmix.Controller(model, sampler, domains=domain_datasets, targets=target_sets,
                                   loss_fn=loss_fn, stages=[1000, 2000, 3000])
    for step, batch in enumerate(loader, start=1):
        ...; optimizer.step()
        controller.step(step)        # no-op between boundaries; at a boundary: measure, solve, re-weight

At each stage boundary the controller

1. draws a fresh, seeded sample of every domain (``samples_per_domain`` rows, never the rows the sampler
   is about to train on in particular, just a uniform draw of the domain) and takes the target sets;
2. measures Group Influence ``S`` (targets x domains, larger = more helpful) with
   :class:`tikmix.GroupInfluence`;
3. solves for the next mixture: ``solver="direct"`` (TiKMiX-D, :func:`tikmix.solve_direct`) or
   ``solver="regression"`` (TiKMiX-M, :func:`tikmix.solve_regression` in a box around the TiKMiX-D
   answer, candidates labelled by resampling per-sample influence rows), always with the Pareto constraint
   ``S @ w >= S @ w_prior`` against the mixture of the stage that just ended (TiKMiX-D imposes it; the
   TiKMiX-M answer is pulled back toward the TiKMiX-D one just far enough to meet it and any other
   TiKMiX-D constraint given in ``solver_options``, and replaced by it
   when the surrogate's held-out fit is poor -- ``report["used"]`` says which);
4. schedules the new weights on the sampler from the next step not yet produced;
5. appends a record to :attr:`Controller.history` and (on rank 0) writes the JSON history file.

**The measurement policy** is the controller's, whatever loop calls it (a plain loop, ``tikmix run``, the
Hugging Face and Lightning callbacks, the demo):

* while influence is measured the model is in eval mode (no dropout: ``S`` is a function of the weights, not of a
  dropout draw, and per-sample gradients need a deterministic forward); every submodule's ``training`` flag is
  restored exactly afterwards. ``measure_mode="train"`` measures in the caller's mode instead; the history records
  which (``history["measure"]``);
* a boundary consumes and changes no training random stream: the torch CPU generator, every CUDA device's
  generator, Python's :mod:`random` and numpy's global state are saved before the boundary and restored after it;
  the controller's own draws (influence samples, sketch, bootstrap, TiKMiX-M) come from generators seeded by
  ``seed`` and the stage index;
* :meth:`Controller.step` handles every boundary ``<= step`` not yet handled, once each, in order, so a loop that
  calls it less often than every step (or jumps over a boundary) still triggers each boundary exactly once;
* with ``rehearse=True`` (default) the constructor measures once on one micro-batch per domain and per target, with
  per-sample mode's autograd self-check on, so a model the controller cannot measure fails before any training.

Everything the controller decides is a function of the model, the seed and the stage index, so a run
resumed from :meth:`Controller.state_dict` (which embeds the sampler's state) reproduces the history and the
final mixture of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from . import _distributed, _rng, formats
from ._validation import check_int, to_float64_array
from .decision import Decision, feedback_summary, predicted_change, safe_step, stage_feedback

__all__ = ["Controller", "HISTORY_FORMAT"]

HISTORY_FORMAT = formats.HISTORY
_STATE_FORMAT = formats.CONTROLLER_STATE
#: Group mode's bootstrap resamples micro-batches: when the decision shrinks group-mode estimates, a domain's draw is
#: split into at least this many of them (when it has that many samples), so that its interval has units to resample.
MIN_BOOTSTRAP_UNITS = 8
#: The rehearsal measures the first domain on a whole micro-batch (a boundary's micro-batches are no larger, so a
#: model that cannot hold one fails before training) and every other domain and target on this many rows: enough
#: for per-sample mode's self-check (two probe samples and their batch) at a fraction of the time.
REHEARSAL_ROWS = 4
_SOLVERS = ("direct", "regression")
MEASURE_MODES = ("eval", "train")


def _jsonable(value: Any) -> Any:
    """Convert numpy / torch values (recursively) into JSON-serialisable Python objects."""
    return _distributed.plain_tree(value, _json_leaf)


def _json_leaf(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "as_dict"):
        return _jsonable(value.as_dict())
    return _summary(value)


def _summary(value: Any) -> dict[str, Any]:
    """A JSON stand-in for an object JSON cannot hold (e.g. TiKMiX-M's fitted LightGBM model): its type and,
    for a LightGBM Booster, the size of the ensemble -- never a repr with a memory address."""
    cls = type(value)
    out: dict[str, Any] = {"type": f"{cls.__module__}.{cls.__qualname__}"}
    for attr in ("num_trees", "num_feature"):
        fn = getattr(value, attr, None)
        if callable(fn):
            try:
                out[attr] = int(fn())
            except Exception:  # a summary is best effort: the type alone still describes the object
                pass
    return out


def _as_samples(data: Any, name: str) -> Any:
    """A target set or domain dataset as something with ``len`` and ``[i]`` (tensor rows or a Dataset)."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    if isinstance(data, torch.Tensor):
        if data.dim() == 0 or data.shape[0] == 0:
            raise ValueError(f"{name} must hold at least one sample, got a tensor of shape {tuple(data.shape)}")
        return data
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise TypeError(
            f"{name} must be a tensor, a numpy array or a map-style dataset (len and []), got {type(data).__name__}"
        )
    if len(data) == 0:
        raise ValueError(f"{name} is empty: it must hold at least one sample")
    return data


class Controller:
    """Runs TiKMiX's stage schedule inside any training loop.

    Args:
        model: the model being trained (its parameters are read, never changed).
        sampler: a :class:`tikmix.MixtureSampler` (or anything with ``num_domains``, ``weights_at(step)``,
            ``set_weights(weights, at_step)``, ``next_free_step``, ``realised_counts(step)``, ``state_dict`` and
            ``load_state_dict``) feeding the training loop; the controller re-weights it.
        domains: domain name -> that domain's training data (tensor/array of rows or map-style dataset), in
            the sampler's domain order. Influence samples are drawn from here.
        targets: target name -> target examples (tensor/array of rows or map-style dataset); ``S`` has one
            row per target, in this order. All examples are used, up to ``target_samples``.
        loss_fn: ``loss_fn(model, batch) -> Tensor[B]`` per-sequence losses (the :class:`tikmix.GroupInfluence`
            protocol), e.g. :func:`tikmix.models.sequence_loss`.
        stages: stage boundaries, strictly increasing positive ints, in ``stage_unit``. At each boundary the
            mixture for the following stage is chosen. The first stage uses the sampler's initial weights.
        stage_unit: ``"steps"`` (default) or ``"tokens"`` (then ``tokens_per_step`` is required; a boundary
            falls on the first step whose cumulative tokens reach it).
        tokens_per_step: global tokens per optimizer step (e.g. batch size x sequence length).
        solver: ``"direct"`` (TiKMiX-D) or ``"regression"`` (TiKMiX-M).
        solver_options: extra keyword arguments for :func:`tikmix.solve_direct` (``"direct"``), or a dict
            ``{"direct": {...}, "regression": {...}}`` for the two steps of TiKMiX-M.
        influence: a ready :class:`tikmix.GroupInfluence`, or a dict of its keyword arguments (default
            ``{"k": 1024}``; TiKMiX-M forces ``mode="per_sample"``).
        samples_per_domain: rows drawn from each domain at every boundary.
        target_samples: at most this many examples per target (the first ones); None = all.
        batch_size: micro-batch size used while measuring influence. When the decision shrinks group-mode
            estimates (an explicit ``shrink="ci"``), a domain's draw is split into at least
            :data:`MIN_BOOTSTRAP_UNITS` (8) micro-batches when it has that many samples: group mode's bootstrap
            resamples micro-batches.
        collate: turns a list of dataset items into a batch for ``loss_fn`` (default
            :func:`torch.utils.data.default_collate`).
        device: where batches go (default: the device of the model's first parameter).
        history_path: JSON file rewritten after every boundary (rank 0 only); None = keep in memory.
        seed: seeds the influence samples, the sketch and TiKMiX-M.
        total_steps: optimizer steps of the whole run; a boundary at or after it is rejected (it would never be
            reached, or would choose a mixture nothing trains on). When None, the framework integrations take it
            from the trainer's ``max_steps`` (:meth:`set_total_steps`); a plain loop that never sets it gets a
            warning at the first :meth:`step`.
        measure_mode: ``"eval"`` (default): the model is in eval mode while influence is measured (every
            submodule's ``training`` flag restored afterwards); ``"train"``: measured in whatever mode the caller
            left the model (dropout noise enters ``S``; per-sample mode then fails its self-check on models with
            dropout). Recorded in ``history["measure"]``.
        rehearse: measure once at construction, with per-sample mode's autograd self-check on, so that a model the
            controller cannot measure is reported before training: the first domain on a whole micro-batch (its
            first ``batch_size`` rows: a model that cannot hold a boundary's micro-batch fails now), every other
            domain and target on its first :data:`REHEARSAL_ROWS` rows. A passed rehearsal turns the self-check off for the boundaries
            (it costs ~40% of per-sample time) unless the rehearsal saw a capture fall back (a warning): then it is
            on for the boundaries.
            ``history["rehearsal"]`` says what it checked; its cost is the next record's ``timing["rehearsal_s"]``.
            False skips it.
        decision: how the measured ``S`` becomes the solver's input (:class:`tikmix.decision.Decision`):
            None or ``"robust"`` (default: per-sample estimates shrunk by their uncertainty, smoothing across
            boundaries, a ``max_shift`` and a ``min_r2`` default; it beat the paper's decision on the
            mixing-quality benchmark),
            ``"paper"`` (the paper's decision, ``S`` as measured), or a dict of
            :class:`~tikmix.decision.Decision`'s options, among them ``safe`` (the chosen mixture is moved back
            toward the previous one until no target is predicted worse than a tolerance) and ``trust_region`` (the
            step limit widens or narrows with the stages' feedback), both off by default. Each record stores
            ``"decision"`` (options, shrink factors, the ``S`` the solver saw, ``"safe"`` and ``"trust_region"``
            when on).
        sampling: how many rows a boundary measures. None (default): the whole draw (``samples_per_domain`` rows
            per domain, every target row up to ``target_samples``). A dict ``{"tolerance", "min_samples",
            "round_samples"}`` (missing keys from :data:`tikmix.defaults.ADAPTIVE_SAMPLING`): the same draw taken in
            rounds of ``round_samples`` rows per domain and target, each stopping once stable (its bootstrap
            interval, or its last round's move of ``S``, below ``tolerance`` of its row's ``max |S|``) after at least
            ``min_samples`` rows, or at the whole draw (:mod:`tikmix.influence.adaptive`; in group mode a domain's
            draw is then cut into at least :data:`MIN_BOOTSTRAP_UNITS` micro-batches). Needs ``n_bootstrap >= 1``
            and a preconditioner other than ``"gauss_newton"``. Each record's ``"influence_sampling"`` states the rows
            each domain and target took and why it stopped (None in the fixed mode).

    Attributes:
        history: the run's JSON-ready history dict: ``"format"``, ``"domains"``, ``"targets"``, ``"measure"``
            (``{"mode": "eval" | "train", "training_rng": "preserved"}``), ``"influence"`` (the measurement's
            :meth:`tikmix.GroupInfluence.settings`: ``k``, ``mode``, the measured ``parameters``' names, ...; None for
            another influence object), ``"rehearsal"`` (None when skipped, else ``{"verified",
            "self_check_at_boundaries", "rows"}``; its seconds are in the next record's ``timing``), ``"stages"``: one
            record per boundary,
            ``"metrics"``: what :meth:`log_metrics` recorded, ``"final"``: what :meth:`finish` recorded (with the
            dev rows' ``"target_loss"`` and the last stage's ``"feedback"``), ``"feedback_summary"``
            (:func:`tikmix.decision.feedback_summary` over every stage's feedback). Besides the mixture and the
            measurement, a stage record holds ``"target_loss"`` (each target's mean dev loss as measured),
            ``"predicted_change"`` / ``"predicted_change_worst"`` (:func:`tikmix.decision.predicted_change` of the
            chosen mixture) and ``"feedback"`` (:func:`tikmix.decision.stage_feedback` of the stage that just ended;
            None at the first boundary).

    **Step convention.** Steps are counted from 1: step ``s`` is the ``s``-th optimizer step, and
    ``controller.step(s)`` is called after it (the Hugging Face ``state.global_step``, Lightning's
    ``trainer.global_step``, ``tikmix run``'s step after the update). A stage record's ``"step"`` is the boundary
    ``b`` (measured after step ``b``); ``"applies_from_step"`` is the first step whose batch is drawn with the new
    mixture: ``b + 1`` in a loop that fetches a batch only when it trains on it, later when the DataLoader had
    already fetched batches ahead (the Hugging Face Trainer fetches one batch ahead: ``b + 2``). The sampler's
    0-based step index of that batch is ``applies_from_step - 1`` (``sampler.weights_at(applies_from_step - 1)``).

    **Checks at construction.** The domains' sizes must be the sampler's ``domain_sizes`` in order; token ids that
    the model's input embedding cannot look up are refused when the model has ``get_input_embeddings`` (Hugging
    Face models) and the data's largest id is cheap to know (tensors, arrays, datasets of up to 100,000 items);
    then the rehearsal (``rehearse``) measures once.
    """

    def __init__(
        self,
        model: nn.Module,
        sampler: Any,
        *,
        domains: Mapping[str, Any],
        targets: Mapping[str, Any],
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        stages: Sequence[int],
        stage_unit: str = "steps",
        tokens_per_step: int | None = None,
        solver: str = "direct",
        solver_options: Mapping[str, Any] | None = None,
        influence: Any = None,
        samples_per_domain: int = 64,
        target_samples: int | None = None,
        batch_size: int = 32,
        collate: Callable[[list[Any]], Any] | None = None,
        device: torch.device | str | None = None,
        history_path: str | os.PathLike[str] | None = None,
        seed: int = 0,
        total_steps: int | None = None,
        decision: Any = None,
        measure_mode: str = "eval",
        rehearse: bool = True,
        sampling: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for attr in ("set_weights", "weights_at", "state_dict", "load_state_dict", "num_domains"):
            if not hasattr(sampler, attr):
                raise TypeError(f"sampler must be a tikmix.MixtureSampler-like object; it has no {attr!r}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable: loss_fn(model, batch) -> Tensor[B]")
        if not isinstance(domains, Mapping) or not domains:
            raise ValueError("domains must be a non-empty mapping name -> dataset")
        if not isinstance(targets, Mapping) or not targets:
            raise ValueError("targets must be a non-empty mapping name -> examples")
        if len(domains) != sampler.num_domains:
            raise ValueError(
                f"domains has {len(domains)} entries but the sampler mixes {sampler.num_domains} domains"
            )
        if solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {_SOLVERS}, got {solver!r}")
        from tikmix.solvers import check_options

        check_options(solver, solver_options, len(domains))  # bad options fail here, not at the first boundary
        if solver == "regression" and "seed" in dict((solver_options or {}).get("regression", {})).get("score", {}):
            raise ValueError("solver_options['regression']['score'] must not set seed: the controller seeds the "
                             "resampling of each stage itself (from seed and the stage index)")
        if stage_unit not in ("steps", "tokens"):
            raise ValueError(f"stage_unit must be 'steps' or 'tokens', got {stage_unit!r}")
        check_int(samples_per_domain, "samples_per_domain", minimum=1)
        check_int(batch_size, "batch_size", minimum=1)
        if target_samples is not None:
            check_int(target_samples, "target_samples", minimum=1)
        if measure_mode not in MEASURE_MODES:
            raise ValueError(f"measure_mode must be one of {MEASURE_MODES}, got {measure_mode!r}")
        if not isinstance(rehearse, bool):
            raise TypeError(f"rehearse must be True or False, got {rehearse!r}")
        from .influence.adaptive import Sampling, check_influence

        self.sampling = Sampling.from_options(sampling)

        self.model = model
        self.sampler = sampler
        self.loss_fn = loss_fn
        self.domain_names = [str(n) for n in domains]
        self.target_names = [str(n) for n in targets]
        self._domains = {n: _as_samples(d, f"domains[{n!r}]") for n, d in domains.items()}
        self._targets = {n: _as_samples(t, f"targets[{n!r}]") for n, t in targets.items()}
        self.solver = solver
        self.solver_options = dict(solver_options or {})
        self.samples_per_domain = samples_per_domain
        self.target_samples = target_samples
        self.batch_size = batch_size
        self.collate = collate or default_collate
        self.device = torch.device(device) if device is not None else self._model_device()
        self.history_path = Path(history_path) if history_path is not None else None
        self.seed = int(seed)
        self.tokens_per_step = tokens_per_step
        self.stage_unit = stage_unit
        self.boundaries = self._boundary_steps(stages, stage_unit, tokens_per_step, total_steps)
        self.stage_spec = [int(s) for s in stages]
        self.total_steps = None if total_steps is None else check_int(total_steps, "total_steps", minimum=1)
        self.measure_mode = measure_mode
        self._check_domain_sizes()
        from ._vocabulary import check_vocabulary

        check_vocabulary(self, model)
        self.decision = Decision.from_options(decision)
        # a run without boundaries (a fixed mixture) never measures: no influence machinery, no rehearsal
        self._influence = self._make_influence(influence) if self.boundaries else None
        if self.sampling is not None and self._influence is not None:
            check_influence(self._influence)
        import tikmix.solvers  # noqa: F401  (import scipy/LightGBM now, not inside the first solve's timing)
        # ranks that disagree are refused here, naming the setting, before any training or collective they would
        # take in disagreement (a different seed or k would give other decisions; other boundaries would hang)
        _distributed.check_same_on_all_ranks({
            **self._config(), "stage_unit": stage_unit, "tokens_per_step": tokens_per_step, "total_steps": total_steps,
            "solver_options": self.solver_options, "influence": _influence_settings(self._influence),
            "samples_per_domain": samples_per_domain, "target_samples": target_samples, "batch_size": batch_size,
            "sampling": None if self.sampling is None else self.sampling.as_dict(),
            "domain_sizes": [len(d) for d in self._domains.values()],
            "target_sizes": [len(t) for t in self._targets.values()],
        }, "Controller settings")
        self._done: list[int] = []
        self._last_wall: float | None = None
        self._train_s = 0.0
        self.history: dict[str, Any] = {
            "format": HISTORY_FORMAT,
            "domains": self.domain_names,
            "targets": self.target_names,
            "solver": "tikmix-d" if solver == "direct" else "tikmix-m",
            "stage_boundaries": {"unit": stage_unit, "values": self.stage_spec, "steps": self.boundaries},
            "tokens_per_step": tokens_per_step,
            "initial_weights": [float(x) for x in sampler.weights_at(0)],
            "measure": {"mode": measure_mode, "training_rng": "preserved"},
            # what the measurement was: sketch size, mode, preconditioner, the measured parameters' names, ...
            "influence": (self._influence.settings() if callable(getattr(self._influence, "settings", None))
                          else None),
            "rehearsal": None,
            "stages": [],
            "metrics": [],
            "final": None,
            "feedback_summary": None,
        }
        self._warned_total_steps = False
        self._rehearsal_s = 0.0
        if rehearse and self._influence is not None:
            self.history["rehearsal"] = self._rehearse()

    # ------------------------------------------------------------------ construction helpers
    def _check_domain_sizes(self) -> None:
        """The domains must be the sampler's, in its order: the new weights go to the sampler's domain ``j``."""
        sizes = getattr(self.sampler, "domain_sizes", None)
        if sizes is None:
            return
        mine = [len(d) for d in self._domains.values()]
        if list(mine) != [int(n) for n in sizes]:
            listed = ", ".join(f"{n}={k}" for n, k in zip(self.domain_names, mine))
            raise ValueError(
                f"domains do not match the sampler: domains has sizes ({listed}) in this order, the sampler's "
                f"domain_sizes are {[int(n) for n in sizes]}; pass the domains in the sampler's order (the order "
                "of tikmix.concat_domains)"
            )

    def set_total_steps(self, total_steps: int) -> None:
        """Set (or confirm) the run's length in optimizer steps, e.g. from a trainer's ``max_steps``.

        Raises ValueError if ``total_steps`` was already set to another value, or if a boundary is at or after
        it (it would never be reached)."""
        total_steps = check_int(total_steps, "total_steps", minimum=1)
        if self.total_steps is not None and self.total_steps != total_steps:
            raise ValueError(f"the controller was built with total_steps={self.total_steps}, but the trainer runs "
                             f"max_steps={total_steps}: make them equal (or leave total_steps unset)")
        self._boundary_steps(self.stage_spec, self.stage_unit, self.tokens_per_step, total_steps)
        self.total_steps = total_steps

    def _rehearse(self) -> dict[str, Any]:
        """Measure once before any training (self-check on): a whole micro-batch of the first domain, then
        :data:`REHEARSAL_ROWS` rows of every other domain and target."""
        infl = self._influence
        per_sample = getattr(infl, "mode", None) == "per_sample"
        saved = {a: getattr(infl, a) for a in ("verify", "n_bootstrap", "progress") if hasattr(infl, a)}
        for attr, value in (("verify", True), ("n_bootstrap", 0), ("progress", False)):
            if attr in saved:
                setattr(infl, attr, value)
        few = min(self.batch_size, REHEARSAL_ROWS)
        rows = {"domains": {n: min(self.batch_size if j == 0 else few, len(d))
                            for j, (n, d) in enumerate(self._domains.items())},
                "targets": {n: min(few, len(self._target_rows(n))) for n in self._targets}}
        domain_batches = {n: self._batches(d, np.arange(rows["domains"][n])) for n, d in self._domains.items()}
        target_batches = {n: self._batches(d, np.arange(rows["targets"][n])) for n, d in self._targets.items()}
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught, self._measuring():
                warnings.simplefilter("always")
                infl.compute(domain_batches, target_batches)
        except Exception as exc:
            hint = ("fix the model or the influence options (e.g. influence={'mode': 'group'})"
                    if not isinstance(exc, IndexError) else
                    "an IndexError in the forward usually means token ids at or above the model's vocabulary size "
                    "(its embedding rows): make the model's vocabulary cover the data's largest id")
            raise RuntimeError(
                "the controller's rehearsal (one influence measurement on the first rows of every domain and target, "
                f"run before training so that a model it cannot measure fails now, not at the first boundary) "
                f"failed: {type(exc).__name__}: {exc}  -- {hint}; Controller(rehearse=False) skips this check"
            ) from exc
        finally:
            for attr, value in saved.items():
                setattr(infl, attr, value)
        for w in caught:  # show them once, outside the record
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        fell_back = any(issubclass(w.category, RuntimeWarning) for w in caught)
        if per_sample and "verify" in saved:
            # a passed self-check need not be repeated at the boundaries; a capture that fell back to torch.func in
            # the rehearsal may fall back again on other batches, so the boundaries keep checking
            infl.verify = fell_back
        # the cost goes into the next record's timing (like every other duration, it is not part of the decision)
        self._rehearsal_s = time.perf_counter() - t0
        return {"verified": per_sample, "self_check_at_boundaries": bool(getattr(infl, "verify", False)) and per_sample,
                "rows": rows}

    @contextlib.contextmanager
    def _measuring(self):
        """The measurement policy: eval mode (unless ``measure_mode="train"``) and untouched training RNG streams."""
        modes = [(m, m.training) for m in self.model.modules()]
        state = _rng.rng_state()
        try:
            if self.measure_mode == "eval":
                self.model.eval()
            yield
        finally:
            for m, training in modes:
                m.training = training
            _rng.set_rng_state(state)

    def _model_device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    @staticmethod
    def _boundary_steps(
        stages: Sequence[int], unit: str, tokens_per_step: int | None, total_steps: int | None
    ) -> list[int]:
        if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence):
            raise TypeError(f"stages must be a sequence of ints, got {type(stages).__name__}")
        values: list[int] = []
        for i, s in enumerate(stages):
            values.append(check_int(s, f"stages[{i}]", minimum=1))
        if any(b <= a for a, b in zip(values, values[1:])):
            raise ValueError(f"stages must be strictly increasing, got {values}")
        if unit == "tokens":
            if not isinstance(tokens_per_step, int) or tokens_per_step <= 0:
                raise ValueError("tokens_per_step must be a positive int when stage_unit='tokens'")
            steps = [-(-v // tokens_per_step) for v in values]  # first step reaching the token count
            if any(b <= a for a, b in zip(steps, steps[1:])):
                raise ValueError(
                    f"stages {values} (tokens) map to steps {steps} with {tokens_per_step} tokens per step: "
                    "two boundaries fall on the same step"
                )
        else:
            steps = values
        if total_steps is not None:
            for v, s in zip(values, steps):
                if s >= total_steps:
                    raise ValueError(
                        f"stages: boundary {v} ({unit}) is at step {s}, not before the end of training "
                        f"(total_steps={total_steps})"
                    )
        return steps

    def _make_influence(self, influence: Any) -> Any:
        from tikmix.influence import GroupInfluence

        if isinstance(influence, GroupInfluence):
            if self.solver == "regression" and getattr(influence, "mode", "per_sample") != "per_sample":
                raise ValueError("solver='regression' (TiKMiX-M) needs a GroupInfluence with mode='per_sample'")
            return influence
        if influence is not None and not isinstance(influence, Mapping):
            raise TypeError(
                f"influence must be a tikmix.GroupInfluence or a dict of its options, got {type(influence).__name__}"
            )
        opts: dict[str, Any] = {"k": 1024, "seed": self.seed, "progress": False, "n_bootstrap": 200}
        opts.update(influence or {})
        if self.solver == "regression":
            opts["mode"] = "per_sample"
        return GroupInfluence(self.model, self.loss_fn, **opts)

    # ------------------------------------------------------------------ samples for influence
    def _stage_rng(self, stage: int, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0x7153, stage, salt])

    def _batches(self, data: Any, idx: np.ndarray, size: int | None = None) -> list[Any]:
        size = self.batch_size if size is None else size
        out = []
        for a in range(0, len(idx), size):
            items = [data[int(i)] for i in idx[a : a + size]]
            batch = self.collate(items)
            out.append(_to_device(batch, self.device))
        return out

    def _influence_inputs(self, stage: int) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
        """This rank's batches of the boundary's global draw.

        The draw, its micro-batches (group mode's bootstrap units) and their order are fixed before the world size
        enters: each domain's draw is cut into global micro-batches of :meth:`_domain_batch_size`, and each rank
        takes a contiguous run of whole micro-batches (rank 0 the first). The engine orders units by domain, then
        rank, then local order, which is then the global order, so intervals, shrink factors and TiKMiX-M's labels
        are those of one process at any world size. Per-sample mode (units are samples) balances contiguous runs
        of samples over the ranks instead and micro-batches them locally. Group mode on sharded parameters, where a
        unit is one step of all ranks, splits every global micro-batch over the ranks instead when the decision
        shrinks by group-mode intervals (and every micro-batch but the last has a sample for each rank)."""
        self._check_boundary_settings(stage)
        infl = self._influence
        per_sample = getattr(infl, "mode", "group") == "per_sample"
        domain_batches: dict[str, list[Any]] = {}
        for j, name in enumerate(self.domain_names):
            data = self._domains[name]
            idx = self._domain_draw(stage, j)
            size = self._domain_batch_size(len(idx))
            if (getattr(infl, "units_span_ranks", False) and getattr(infl, "n_bootstrap", 0)
                    and self.decision.shrinks("micro-batch") and size >= _distributed.world_size()):
                # the step's union over the ranks is then global micro-batch u itself; only the last one may
                # leave a rank without samples, and the engine pads a rank's missing steps at the end
                parts = [idx[u : u + size] for u in range(0, len(idx), size)]
                shares = [part[slice(*_distributed.share(len(part)))] for part in parts]
                domain_batches[name] = [self._batches(data, sh, len(sh))[0] for sh in shares if len(sh)]
                continue
            domain_batches[name] = self._local_batches("domains", name, idx, size)
        target_batches = {name: self._local_batches("targets", name, self._target_rows(name))
                          for name in self.target_names}
        return domain_batches, target_batches

    def _check_boundary_settings(self, stage: int) -> None:
        # Ranks must agree before the boundary's collectives; this also covers a Controller built before the
        # process group existed (its construction-time check had no peers to compare with).
        infl = self._influence
        _distributed.check_same_on_all_ranks(
            {**self._config(), "boundary": self.boundaries[stage],
             "influence": infl.settings() if hasattr(infl, "settings") else type(infl).__qualname__,
             "sampling": None if self.sampling is None else self.sampling.as_dict()},
            f"the Controller settings at the boundary at step {self.boundaries[stage]}")

    def _domain_draw(self, stage: int, j: int) -> np.ndarray:
        """Domain ``j``'s global draw at ``stage``, in order: the rows the boundary may measure."""
        n = len(self._domains[self.domain_names[j]])
        rng = self._stage_rng(stage, j)
        take = min(self.samples_per_domain, n)
        return rng.choice(n, size=take, replace=False) if take < n else rng.permutation(n)

    def _target_rows(self, name: str) -> np.ndarray:
        """The target's rows a boundary may measure: the first ``target_samples`` (all when None)."""
        n = len(self._targets[name])
        return np.arange(n if self.target_samples is None else min(n, self.target_samples))

    def _local_batches(self, kind: str, name: str, rows: np.ndarray, size: int | None = None) -> list[Any]:
        """This rank's micro-batches of the global ``rows`` of domain or target ``name``: a contiguous run of whole
        micro-batches (rank 0 the first; of samples in per-sample mode's domains, batched locally)."""
        size = self.batch_size if size is None else size
        per_sample = getattr(self._influence, "mode", "group") == "per_sample"
        data = self._domains[name] if kind == "domains" else self._targets[name]
        a, b = _distributed.share(len(rows), 1 if per_sample and kind == "domains" else size)
        return self._batches(data, rows[a:b], size)

    def _measure_adaptive(self, stage: int) -> tuple[Any, dict[str, Any]]:
        """Influence measured in rounds (:mod:`tikmix.influence.adaptive`) on the fixed mode's draw."""
        from .influence.adaptive import measure_in_rounds

        self._check_boundary_settings(stage)
        draws = {name: self._domain_draw(stage, j) for j, name in enumerate(self.domain_names)}
        group = getattr(self._influence, "mode", "group") == "group"
        # group mode: the stop rule reads micro-batch intervals, so every draw is cut into at least
        # MIN_BOOTSTRAP_UNITS micro-batches (as when the decision shrinks by them), and a round takes whole ones
        sizes = {name: max(1, min(self.batch_size, math.ceil(len(idx) / MIN_BOOTSTRAP_UNITS))) if group
                 else self.batch_size for name, idx in draws.items()}
        return measure_in_rounds(
            self._influence, self.sampling, domain_rows=draws,
            target_rows={name: self._target_rows(name) for name in self.target_names},
            domain_align=sizes if group else dict.fromkeys(draws, 1), target_align=1,
            local_batches=lambda kind, name, rows: self._local_batches(
                kind, name, rows, sizes[name] if kind == "domains" else None))

    def _domain_batch_size(self, n: int) -> int:
        """Micro-batch size for a domain's ``n`` drawn samples (the global draw, whatever the world size):
        ``batch_size``, made smaller in group mode when the decision shrinks by the intervals, so that the draw
        forms at least :data:`MIN_BOOTSTRAP_UNITS` micro-batches."""
        infl = self._influence
        if (getattr(infl, "mode", None) != "group" or not getattr(infl, "n_bootstrap", 0)
                or not self.decision.shrinks("micro-batch")):
            return self.batch_size
        return max(1, min(self.batch_size, math.ceil(n / MIN_BOOTSTRAP_UNITS)))

    # ------------------------------------------------------------------ the hook
    def step(self, step: int) -> dict[str, Any] | None:
        """Call after every optimizer step with the number of steps completed (1-based).

        Handles every stage boundary ``b <= step`` not handled yet, once each, oldest first: measure influence
        on the model as it is now (in eval mode, training RNG untouched: see the module docs), solve, re-weight
        the sampler from its next free step. A boundary already handled (e.g. before a resume) is not handled
        again. Between boundaries this only keeps the training-time clock.

        Returns the history record of the last boundary handled by this call (all of them are appended to
        ``history["stages"]``), or None when no boundary was due.
        """
        check_int(step, "step (optimizer steps completed)", minimum=0)
        now = time.perf_counter()
        if self._last_wall is not None:
            self._train_s += now - self._last_wall
        self._last_wall = now
        step = int(step)
        if self.total_steps is None and not self._warned_total_steps:
            self._warned_total_steps = True
            warnings.warn("Controller: total_steps is not set, so a stage boundary after the end of training "
                          "cannot be detected; pass total_steps=... (the integrations take the trainer's max_steps)",
                          UserWarning, stacklevel=2)
        # boundaries are handled in order, so the first `stages_done` are the handled ones
        pending = [b for b in self.boundaries[len(self._done):] if b <= step]
        record = None
        for b in pending:
            record = self._boundary(b, self.boundaries.index(b))
        if pending:
            self._last_wall = time.perf_counter()
        return record

    def _boundary(self, step: int, stage: int) -> dict[str, Any]:
        rng = _rng.rng_state()
        try:
            return self._boundary_body(step, stage)
        finally:
            _rng.set_rng_state(rng)

    def _boundary_body(self, step: int, stage: int) -> dict[str, Any]:
        t_start = time.perf_counter()
        sampling = None
        with self._measuring():
            if self.sampling is None:
                domain_batches, target_batches = self._influence_inputs(stage)
                t0 = time.perf_counter()
                result = self._influence.compute(domain_batches, target_batches)
            else:
                t0 = time.perf_counter()
                result, sampling = self._measure_adaptive(stage)
        t_influence = time.perf_counter() - t0
        S = to_float64_array(result.S, "influence S")
        w_prior = np.asarray(self.sampler.weights_at(step), dtype=np.float64)
        target_loss, target_samples = _target_loss(result)
        feedback = self._stage_feedback(target_loss, target_samples, sampling, step)

        t0 = time.perf_counter()
        S_used, decision_info = self.decision.effective_S(
            S, getattr(result, "ci_low", None), getattr(result, "ci_high", None), getattr(result, "confidence", 0.95),
            unit=getattr(result, "unit", "sample"),
        )
        opts = self._boundary_options(feedback, decision_info)
        weights, report = self._solve(S_used, w_prior, result, stage, opts)
        weights, prediction = self._safe_mixture(S, weights, w_prior, result, opts, decision_info)
        t_solve = time.perf_counter() - t0

        at_step = max(step, int(getattr(self.sampler, "next_free_step", step)))
        self.sampler.set_weights(weights.tolist(), at_step=at_step)
        prev_step = self.boundaries[stage - 1] if stage > 0 else 0
        realised = self._realised(prev_step, step)
        record = {
            "stage": stage,
            "step": step,
            "tokens": step * self.tokens_per_step if self.tokens_per_step else None,
            "applies_from_step": at_step + 1,  # 1-based: the step whose batch is the first one re-weighted
            "weights_prior": w_prior.tolist(),
            "weights": [float(x) for x in weights],
            "S": S.tolist(),
            "decision": decision_info,
            "S_ci": _confidence_interval(result),
            "rank_stability": _jsonable(getattr(result, "rank_stability", None)),
            "influence_samples": _jsonable(getattr(result, "domain_samples", None)),
            "influence_tokens": _jsonable(getattr(result, "domain_tokens", None)),
            "influence_sampling": _jsonable(sampling),
            "realised_previous_stage": realised,
            "target_loss": target_loss,
            "target_samples": target_samples,
            "predicted_change": prediction["central"].tolist(),
            "predicted_change_worst": None if prediction["worst"] is None else prediction["worst"].tolist(),
            "feedback": feedback,
            "solver": _jsonable(report),
            "timing": {
                "train_s": self._train_s,
                "influence_s": t_influence,
                "solve_s": t_solve,
                "controller_s": time.perf_counter() - t_start,
                "rehearsal_s": self._rehearsal_s,
            },
        }
        self._train_s = 0.0
        self._rehearsal_s = 0.0
        self._done.append(step)
        self.history["stages"].append(record)
        self.history["feedback_summary"] = self._feedback_summary()
        self._write_history()
        return record

    # ------------------------------------------------------------------ decision around the solver
    def _direct_options(self, opts: dict[str, Any]) -> dict[str, Any]:
        """TiKMiX-D's options inside ``opts`` (TiKMiX-M's first step for ``solver="regression"``)."""
        return opts if self.solver == "direct" else opts.setdefault("direct", {})

    def _boundary_options(self, feedback: dict[str, Any] | None, decision_info: dict[str, Any]) -> dict[str, Any]:
        """The solver options of this boundary: the decision's defaults, and the trust region's step limit."""
        opts = self.decision.solver_options(self.solver, self.solver_options)
        if self.decision.trust_region is None:
            return opts
        direct = self._direct_options(opts)
        stages = self.history["stages"]
        previous = ((stages[-1].get("decision") or {}).get("trust_region") or {}).get("max_shift") if stages else None
        rho = feedback.get("spearman_rho") if feedback else None
        limit = self.decision.trust_region_limit(previous, rho, direct.get("max_shift"))
        direct["max_shift"] = limit["max_shift"]
        decision_info["trust_region"] = limit
        return opts

    def _safe_mixture(self, S: np.ndarray, weights: np.ndarray, w_prior: np.ndarray, result: Any,
                      opts: dict[str, Any], decision_info: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """The predicted change of the chosen mixture (:func:`tikmix.decision.predicted_change` on the measured
        ``S``), and with ``Decision(safe=...)`` the mixture moved back toward ``w_prior`` as far as
        :func:`tikmix.decision.safe_step` says."""
        direct = self._direct_options(opts)
        scale_opts = {k: direct[k] for k in ("normalize", "eps") if k in direct}
        ci = (getattr(result, "ci_low", None), getattr(result, "ci_high", None))
        ci = (None, None) if ci[0] is None or ci[1] is None else tuple(to_float64_array(c, "S interval") for c in ci)

        def predict(w: np.ndarray) -> dict[str, Any]:
            return predicted_change(S, w, w_prior, ci_low=ci[0], ci_high=ci[1], **scale_opts)

        before = predict(weights)
        tolerance = self.decision.safe
        if tolerance is None:
            return weights, before
        from tikmix.solvers.constraints import domain_bounds

        basis = "worst" if before["worst"] is not None else "central"
        bound_keys = ("min_weight", "max_weight", "max_epochs", "tokens_available", "stage_tokens")
        bounds = domain_bounds(len(weights), **{k: direct[k] for k in bound_keys if k in direct})
        step = safe_step(before[basis], tolerance, w=weights, w_prior=w_prior, lower=bounds.lower, upper=bounds.upper)
        t = step["t"]
        chosen, after = weights, before
        if t < 1.0:
            chosen = np.clip(w_prior + t * (weights - w_prior), 0.0, None)
            chosen = chosen / chosen.sum()
            after = predict(chosen)
        hard = None
        if step["conflict"]:
            hard = (f"the previous mixture violates the solver's per-domain bounds for domain(s) "
                    f"{[self.domain_names[j] for j in step['conflict']]}: the step keeps t >= {step['t_min']:.6g} to "
                    "meet them, so the violated targets may stay predicted below -tolerance")
        decision_info["safe"] = {
            "tolerance": tolerance,
            "basis": basis,
            "t": t,
            "violated": [self.target_names[i] for i in step["violated"]],
            "predicted_before": before[basis].tolist(),
            "predicted_after": after[basis].tolist(),
            "weights_solver": [float(x) for x in weights],
            "bounds_conflict": hard,
        }
        return chosen, after

    def _stage_feedback(self, target_loss: list[float] | None, target_samples: list[int] | None,
                        sampling: dict[str, Any] | None, step: int) -> dict[str, Any] | None:
        """The feedback of the stage that ends now: every target's dev loss before and after it on the same rows
        (None at the first boundary, or when no common rows are known)."""
        stages = self.history["stages"]
        if not stages or target_loss is None:
            return None
        prev = stages[-1]
        if prev.get("target_loss") is None:
            return None
        pair = _common_rows_losses(prev, target_loss, target_samples, sampling, self.target_names)
        if pair is None:
            return None
        out = stage_feedback(pair[0], pair[1], prev.get("predicted_change"), prev.get("predicted_change_worst"))
        return {"from_step": int(prev["step"]), "to_step": int(step), **out}

    def _feedback_summary(self) -> dict[str, Any]:
        final = self.history.get("final") or {}
        return feedback_summary([s.get("feedback") for s in self.history["stages"]] + [final.get("feedback")])

    def _evaluate_targets(self, prefix: Sequence[int] | None = None) -> tuple[list[float], list[int]]:
        """Each target's mean per-sequence loss on the rows a boundary measures, or on the first ``prefix[i]`` of
        them (forward only, under the measurement policy: eval mode, training RNG untouched), summed over the
        ranks."""
        n_t = len(self.target_names)
        sums = torch.zeros(n_t, dtype=torch.float64)
        counts = torch.zeros(n_t, dtype=torch.int64)
        # sharded (FSDP2) parameters: every forward is a collective, so every rank makes the same number of passes
        lockstep = bool(getattr(self._influence, "_shards", None)) and _distributed.is_active()
        with self._measuring(), torch.no_grad():
            for i, name in enumerate(self.target_names):
                data = self._targets[name]
                rows = self._target_rows(name)
                if prefix is not None:
                    rows = rows[: int(prefix[i])]
                n = len(rows)
                batches = [(batch, True) for batch in self._local_batches("targets", name, rows)]
                if lockstep:
                    units = -(-n // self.batch_size)
                    passes = -(-units // _distributed.world_size())  # the most batches any rank holds
                    pad = self._batches(data, np.arange(min(self.batch_size, n)))[0]
                    batches += [(pad, False)] * (passes - len(batches))
                for batch, real in batches:
                    losses = self.loss_fn(self.model, batch)
                    if real:
                        sums[i] += losses.detach().to("cpu", torch.float64).sum()
                        counts[i] += losses.shape[0]
        _distributed.all_reduce_sum_([sums, counts])
        return (sums / counts.to(torch.float64)).tolist(), counts.tolist()

    def _solve(self, S: np.ndarray, w_prior: np.ndarray, result: Any, stage: int,
               opts: dict[str, Any] | None = None) -> tuple[np.ndarray, Any]:
        from tikmix.solvers import solve_direct, solve_tikmix_m

        if opts is None:
            opts = self.decision.solver_options(self.solver, self.solver_options)
        if self.solver == "direct":
            res = solve_direct(S, w_prior, **opts)
            return np.asarray(res.weights, dtype=np.float64), res
        return solve_tikmix_m(S, w_prior, result.unit_scores, result.unit_domains, options=opts,
                              seed=self.seed + stage, score_seed=self.seed + 7919 * (stage + 1))

    def _realised(self, start: int, stop: int) -> dict[str, Any] | None:
        if not hasattr(self.sampler, "realised_counts"):
            return None
        a = self.sampler.realised_counts(start)
        b = self.sampler.realised_counts(stop)
        samples = (np.asarray(b.samples) - np.asarray(a.samples)).tolist()
        tokens = None
        if getattr(b, "tokens", None) is not None and getattr(a, "tokens", None) is not None:
            tokens = (np.asarray(b.tokens) - np.asarray(a.tokens)).tolist()
        return {"from_step": start, "to_step": stop, "samples": samples, "tokens": tokens}

    # ------------------------------------------------------------------ metrics, end of run, files
    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record scalar metrics (e.g. target losses) at a step; they go into ``history["metrics"]``."""
        row = {"step": int(step)}
        for k, v in metrics.items():
            row[str(k)] = float(v)
        self.history["metrics"].append(row)

    def finish(self, step: int, **extra: Any) -> dict[str, Any]:
        """Close the run at ``step``: record the last stage's realised counts and the final mixture, and close the
        last stage's feedback with one forward-only evaluation of the target dev rows the boundaries measure (under
        the measurement policy: eval mode, training RNG untouched; a collective under a process group: call it on
        every rank). ``extra`` keyword arguments are stored in ``history["final"]`` as given."""
        start = self.boundaries[len(self._done) - 1] if self._done else 0
        now = time.perf_counter()
        if self._last_wall is not None:
            self._train_s += now - self._last_wall
            self._last_wall = now
        target_loss = feedback = None
        stages = self.history["stages"]
        if stages and stages[-1].get("target_loss") is not None and self._influence is not None:
            # close the last stage's feedback: one forward over the dev rows the last boundary measured
            last = stages[-1]
            target_loss, samples = self._evaluate_targets(last.get("target_samples"))
            if last.get("target_samples") in (None, samples):
                feedback = {"from_step": int(last["step"]), "to_step": int(step),
                            **stage_feedback(last["target_loss"], target_loss, last.get("predicted_change"),
                                             last.get("predicted_change_worst"))}
        self.history["final"] = {
            "step": int(step),
            "weights": [float(x) for x in self.sampler.weights_at(max(step - 1, 0))],
            "realised_last_stage": self._realised(start, step),
            "realised_total": self._realised(0, step),
            "train_s_last_stage": self._train_s,
            "target_loss": target_loss,
            "feedback": feedback,
            **_jsonable(extra),
        }
        self.history["feedback_summary"] = self._feedback_summary()
        self._write_history()
        return self.history["final"]

    def _write_history(self) -> None:
        if self.history_path is None or _distributed.rank() != 0:
            return
        self.history_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.history_path.with_suffix(self.history_path.suffix + ".tmp")
        tmp.write_text(json.dumps(_jsonable(self.history), indent=1))
        os.replace(tmp, self.history_path)

    # ------------------------------------------------------------------ state
    def _config(self) -> dict[str, Any]:
        return {
            "domains": self.domain_names,
            "targets": self.target_names,
            "solver": self.solver,
            "stage_steps": self.boundaries,
            "seed": self.seed,
            "decision": self.decision.options(),
            "measure_mode": self.measure_mode,
        }

    def state_dict(self, step: int | None = None) -> dict[str, Any]:
        """Everything needed to resume: handled boundaries, the history and the sampler's state.

        ``step``: the trainer's step count, passed on to ``sampler.state_dict(step=...)`` (use it when a
        prefetching DataLoader runs the sampler ahead of training).
        """
        sampler_state = self.sampler.state_dict(step=step) if step is not None else self.sampler.state_dict()
        return {
            "format": _STATE_FORMAT,
            "config": self._config(),
            "done": list(self._done),
            "history": json.loads(json.dumps(_jsonable(self.history))),
            "sampler": sampler_state,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (and the sampler's state inside it); the config must match: domains,
        targets, solver, boundaries, seed and the decision's options (a ValueError names each that differs)."""
        if not isinstance(state_dict, Mapping) or state_dict.get("format") != _STATE_FORMAT:
            raise ValueError(f"state_dict is not a tikmix controller state (format {_STATE_FORMAT!r})")
        config = state_dict.get("config", {})
        mine = self._config()
        # "decision" and "measure_mode" joined the config later: a state saved without them is not refused for that
        # (an older state measured in eval mode through the integrations, or in the caller's mode in a plain loop)
        config = {**config, "decision": Decision.complete_options(config.get("decision"))} if "decision" in config \
            else config
        diff = [k for k in mine if config.get(k) != mine[k] and (k in config or k not in ("decision", "measure_mode"))]
        if diff:
            raise ValueError(
                "state_dict comes from a different controller configuration: "
                + ", ".join(f"{k} (saved {config.get(k)!r}, now {mine[k]!r})" for k in diff)
            )
        _distributed.check_same_on_all_ranks(  # every rank must resume from the same point of the same run
            {"done": state_dict.get("done"),
             "weights": [r.get("weights") for r in (state_dict.get("history") or {}).get("stages") or []]},
            "the resumed controller states")
        self.sampler.load_state_dict(state_dict["sampler"])
        self._done = [int(s) for s in state_dict["done"]]
        self.history = json.loads(json.dumps(state_dict["history"]))
        self.decision.resume(self.history.get("stages"))
        self._last_wall = None
        self._train_s = 0.0

    @property
    def stages_done(self) -> int:
        """Number of boundaries handled so far."""
        return len(self._done)


def _influence_settings(influence: Any) -> Any:
    """What of the influence measurement the ranks must agree on (None when the controller never measures)."""
    if influence is None:
        return None
    return influence.settings() if hasattr(influence, "settings") else type(influence).__qualname__


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _pull_back(S: np.ndarray, w_prior: np.ndarray, w_d: np.ndarray, w_m: np.ndarray,
               options: Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """:func:`tikmix.solvers.tikmix_m.pull_back` (kept under this name for existing callers)."""
    from tikmix.solvers.tikmix_m import pull_back

    return pull_back(S, w_prior, w_d, w_m, options)


def _target_loss(result: Any) -> tuple[list[float] | None, list[int] | None]:
    """The measured mean dev loss per target and the rows it averages (None for a result without them)."""
    loss = getattr(result, "target_loss", None)
    if loss is None:
        return None, None
    samples = getattr(result, "target_samples", None)
    return ([float(x) for x in to_float64_array(loss, "target_loss")],
            None if samples is None else [int(x) for x in samples])


def _common_rows_losses(prev: Mapping[str, Any], target_loss: Sequence[float], target_samples: Sequence[int] | None,
                        sampling: Mapping[str, Any] | None, names: Sequence[str]
                        ) -> tuple[list[float], list[float]] | None:
    """Every target's dev loss at the previous boundary and now, on rows both measured.

    The fixed mode measures the same rows at every boundary. Adaptive sampling takes each target's rows as a prefix
    of the same order and records its mean loss after each round (``loss_by_rows``), so a target that stopped at
    different rows is compared on the shorter prefix. None when neither applies."""
    if prev.get("target_samples") == (None if target_samples is None else list(target_samples)):
        return list(prev["target_loss"]), list(target_loss)
    if target_samples is None or prev.get("target_samples") is None:
        return None
    prev_tables = ((prev.get("influence_sampling") or {}).get("targets") or {})
    now_tables = ((sampling or {}).get("targets") or {})
    before, after = [], []
    for i, name in enumerate(names):
        n_prev, n_now = int(prev["target_samples"][i]), int(target_samples[i])
        if n_prev == n_now:
            before.append(float(prev["target_loss"][i]))
            after.append(float(target_loss[i]))
            continue
        common = min(n_prev, n_now)
        a = {int(r): v for r, v in (prev_tables.get(name) or {}).get("loss_by_rows") or []}
        b = {int(r): v for r, v in (now_tables.get(name) or {}).get("loss_by_rows") or []}
        if common not in a or common not in b:
            return None
        before.append(float(a[common]))
        after.append(float(b[common]))
    return before, after


def _confidence_interval(result: Any) -> Any:
    low, high = getattr(result, "ci_low", None), getattr(result, "ci_high", None)
    if low is None or high is None:
        return None
    return {"low": _jsonable(low), "high": _jsonable(high), "confidence": getattr(result, "confidence", None)}

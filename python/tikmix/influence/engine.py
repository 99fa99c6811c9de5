"""``GroupInfluence``: domain-level influence of training data on target tasks from randomly projected gradients.

Sign convention and the mean/sum reductions: :mod:`tikmix.influence.result` (S = −I, larger = more helpful).
Sketch layout and how ``k`` splits: :mod:`tikmix.influence.sketch_space`. Capture (group and per-sample):
:mod:`tikmix.influence.capture`. Preconditioners: :mod:`tikmix.influence.preconditioners`.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from .. import _distributed as dist_utils
from .._extras import progress_bar
from .._validation import check_int
from .capture import (PerSampleCapture, batch_signature, group_pass, is_factorable, iter_batches, parameter_owners,
                      run_loss, select_parameters, sharded_group_pass)
from .diagnostics import bootstrap
from .hook_rules import parameter_paths
from .preconditioners import PRECONDITIONERS, adam_scales, gauss_newton_apply
from .result import InfluenceResult
from .sharding import Lockstep, compute_device, fsdp_summed_gradients, shard_specs
from .sketch_space import Layout, Projector, _has_kernel

__all__ = ["GroupInfluence"]

LossFn = Callable[[nn.Module, Any], torch.Tensor]
MODES = ("group", "per_sample")
REDUCTIONS = ("mean", "sum")
# rows of the per-domain/per-target count tensors
_SAMPLES, _TOKENS, _UNKNOWN_TOKENS, _BATCHES = range(4)  # _UNKNOWN_TOKENS: batches count_tokens could not count
_N_COUNTS = 4


def default_token_count(batch: Any) -> int:
    """Tokens in a batch, padding excluded; -1 if it cannot tell.

    A dict batch: the nonzero entries of ``attention_mask`` if present, else the entries of ``labels`` other than
    ``-100`` if present, else ``input_ids.numel()``. Any other batch: ``numel`` of its first integer tensor (a plain
    token tensor has no padding marker).
    """
    from ..losses import IGNORE_INDEX

    if isinstance(batch, Mapping) and isinstance(batch.get("input_ids"), torch.Tensor):
        mask, labels = batch.get("attention_mask"), batch.get("labels")
        if isinstance(mask, torch.Tensor):
            return int(mask.ne(0).sum())
        if isinstance(labels, torch.Tensor):
            return int(labels.ne(IGNORE_INDEX).sum())
        return int(batch["input_ids"].numel())
    for leaf in tree_flatten(batch)[0]:
        if isinstance(leaf, torch.Tensor) and not leaf.is_floating_point() and not leaf.is_complex() \
                and leaf.dtype != torch.bool:
            return int(leaf.numel())
    return -1


class _ModelGuard:
    """Restores everything a computation could touch: train/eval flags, ``param.grad`` objects, ``requires_grad``,
    and buffer values (a forward in train mode updates batch-norm running statistics)."""

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter]):
        self.model = model
        self.params = list(params)

    def __enter__(self) -> "_ModelGuard":
        self.modes = [(m, m.training) for m in self.model.modules()]
        all_params = list(self.model.parameters())
        self.grads = [(p, p.grad) for p in all_params]
        self.requires = [(p, p.requires_grad) for p in self.params]
        self.buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        for p in self.params:
            if not p.requires_grad:
                p.requires_grad_(True)
        return self

    def __exit__(self, *exc: Any) -> None:
        for m, training in self.modes:
            m.training = training
        for p, g in self.grads:
            p.grad = g
        for p, r in self.requires:
            p.requires_grad_(r)
        with torch.no_grad():
            for b, saved in self.buffers:
                if b.shape == saved.shape:
                    b.copy_(saved)


class GroupInfluence:
    """Group Influence ``S[target, domain]`` of data domains on target tasks (TiKMiX, arXiv 2508.17677).

    ``S_ij = ∇f_iᵀ H⁻¹ G_j`` with the sign convention and reductions of :mod:`tikmix.influence.result`
    (larger = domain j lowers target i's loss more).

    Args:
        model: the network; it is never modified (parameters, ``param.grad``, hooks, train/eval flags are as before,
            also after an error). Its train/eval mode is used as the caller left it (``model.eval()`` is the usual
            choice: no dropout). All selected parameters must be on one device; batches are moved there.
        loss_fn: ``loss_fn(model, batch) -> Tensor[B]``, the per-sequence loss of every sample in the batch (e.g. the
            mean token cross-entropy of each sequence; :func:`tikmix.models.sequence_loss`). It must return a
            1-D float tensor with one finite loss per sample, computed with autograd (not under ``no_grad``).
        k: sketch dimension (int ≥ 1), or None for the exact setting: no projection, flat float64 gradients (small
            models and tests). How ``k`` splits between Kronecker and dense blocks: :mod:`.sketch_space`.
        seed: projection seed (int ≥ 0). Same seed ⇒ same projection on every rank, device and run.
        mode: ``"group"`` (default: one backward per micro-batch, cost ≈ one training step per micro-batch) or
            ``"per_sample"`` (per-sample sketches from the same backward: bootstrap over samples, per-sample scores).
        preconditioner: ``"identity"``, ``"adam"`` (needs ``optimizer``) or ``"gauss_newton"``
            (:mod:`.preconditioners`).
        params: which parameters: None (all with ``requires_grad``), fnmatch name patterns, modules, parameters, or
            a list mixing them. Selected parameters with ``requires_grad=False`` are enabled during the computation.
        reduction: ``"mean"`` (default) or ``"sum"``: the domain gradient convention.
        optimizer: the torch.optim.Adam/AdamW whose second moments define ``adam``.
        damping: ``gauss_newton``'s relative damping (λ = damping × mean eigenvalue of ΦᵀΦ/N).
        factorize: sketch ``nn.Linear``/``nn.Embedding`` weights with Kronecker blocks (True), or every parameter
            densely (False). Default: True, except False with ``adam`` (a Kronecker per-sample sketch cannot apply a
            diagonal scale). ``per_sample`` with ``adam`` and ``factorize=True`` raises.
        n_bootstrap: bootstrap replicates for ``ci_low``/``ci_high``/``rank_stability`` (0 disables). Group mode
            resamples micro-batches (needs ≥ 2 per domain), per-sample mode samples.
        confidence: interval level. bootstrap_seed: seed of the resampling.
        verify: per-sample mode: check on the first training micro-batch that per-sample gradients match autograd's
            (:mod:`.capture`; costs one extra backward once per :meth:`compute`).
        keep_sketches: keep per-unit sketches ``[U, K]`` in the result (for resampling-based uses such as TiKMiX-M).
        count_tokens: ``batch -> int`` token counter (default: ``input_ids`` or the first integer tensor's numel).
        progress: tqdm bar over micro-batches: True, False, or None (only on a terminal; always off on ranks > 0).
        func_chunk_size: ``torch.func.vmap`` chunk size for per-sample gradients of parameters without a hook rule.

    Distributed: under an initialised ``torch.distributed`` process group, every rank passes *its own* batches to
    :meth:`compute` (same domain/target names everywhere); sketches and counts are summed across ranks
    (:mod:`tikmix._distributed`), and every rank returns the same result — the one a single process gets on the
    union (per-unit scores and bootstrap intervals too when each rank passes a contiguous share of every domain's
    batches, rank 0 the first: units are ordered by domain, then rank, then local order). FSDP2 (``fully_shard``, HSDP) models: pass the sharded model; each rank sketches its shards at their global
    offsets and nothing is gathered (:mod:`.sharding`). ``torch.compile``'d models work in both modes (per-sample
    passes run the compiled code eagerly).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        k: Optional[int],
        seed: int = 0,
        mode: str = "group",
        preconditioner: str = "identity",
        params: Any = None,
        reduction: str = "mean",
        optimizer: Optional[torch.optim.Optimizer] = None,
        damping: float = 0.1,
        factorize: Optional[bool] = None,
        n_bootstrap: int = 1000,
        confidence: float = 0.95,
        bootstrap_seed: int = 0,
        verify: bool = True,
        keep_sketches: bool = False,
        count_tokens: Optional[Callable[[Any], int]] = None,
        progress: Optional[bool] = None,
        func_chunk_size: Optional[int] = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(model, batch) -> Tensor[B], got {type(loss_fn).__name__}")
        if k is not None:
            check_int(k, "k (the sketch dimension, or None for exact)", minimum=1)
        check_int(seed, "seed", minimum=0, maximum=2**63 - 1)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if preconditioner == "adam" and optimizer is None:
            raise ValueError("preconditioner='adam' needs optimizer= (a torch.optim.Adam/AdamW with state)")
        if not (isinstance(damping, (int, float)) and damping > 0):
            raise ValueError(f"damping must be a positive number, got {damping!r}")
        check_int(n_bootstrap, "n_bootstrap", minimum=0)
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
        if factorize is None:
            factorize = preconditioner != "adam"
        if factorize and preconditioner == "adam" and mode == "per_sample" and k is not None:
            raise ValueError(
                "preconditioner='adam' with mode='per_sample' needs factorize=False: a Kronecker per-sample sketch "
                "projects Σ_t g_t a_tᵀ through R_out ⊗ R_in without forming it, and a per-coordinate Adam scale does "
                "not factor that way (use factorize=False, or mode='group')"
            )
        self.model = model
        self.loss_fn = loss_fn
        self.k = k
        self.seed = seed
        self.mode = mode
        self.preconditioner = preconditioner
        self.reduction = reduction
        self.optimizer = optimizer
        self.damping = float(damping)
        self.factorize = bool(factorize)
        self.n_bootstrap = n_bootstrap
        self.confidence = float(confidence)
        self.bootstrap_seed = int(bootstrap_seed)
        self.verify = bool(verify)
        self.keep_sketches = bool(keep_sketches)
        self.count_tokens = count_tokens or default_token_count
        self.progress = progress
        self.func_chunk_size = func_chunk_size
        self.named_params = select_parameters(model, params)
        devices = {p.device for _, p in self.named_params}
        if len(devices) != 1:
            raise ValueError(f"all selected parameters must be on one device, found {sorted(map(str, devices))}")
        self.device = devices.pop()
        # sharded (DTensor) parameters: each rank sketches its local shard at its global offset (.sharding)
        self._shards = shard_specs(self.named_params)
        if self._shards and mode == "per_sample" and preconditioner == "adam":
            raise NotImplementedError(
                "preconditioner='adam' with mode='per_sample' on a sharded (FSDP2/DTensor) model: a per-sample "
                "gradient is whole on the rank that holds the sample, while Adam's second moments are sharded over "
                "the ranks, and applying them would gather them; use mode='group' (exact on sharded models)")
        self._batch_device = compute_device(self.named_params) or self.device
        self._all_params = list(model.parameters())  # outside a forward: FSDP2's sharded parameters
        owners = parameter_owners(model)
        self._owners = owners
        factored = [self.factorize and is_factorable(p, owners.get(id(p), [])) for _, p in self.named_params]
        self.layout = Layout.build(self.named_params, factored, k)

    @property
    def units_span_ranks(self) -> bool:
        """True in group mode on sharded (FSDP2) parameters: every rank runs each micro-batch step together, FSDP sums
        the step's gradient over the ranks, and a bootstrap unit is one step of all ranks (the union of the ranks'
        micro-batches of that step)."""
        return bool(self._shards) and self.mode == "group"

    def settings(self) -> Dict[str, Any]:
        """The options that decide the numbers (JSON-ready; what ranks compare to make sure they agree)."""
        return {"k": self.k, "seed": self.seed, "mode": self.mode, "preconditioner": self.preconditioner,
                "reduction": self.reduction, "damping": self.damping, "factorize": self.factorize,
                "n_bootstrap": self.n_bootstrap, "confidence": self.confidence, "bootstrap_seed": self.bootstrap_seed,
                "parameters": [name for name, _ in self.named_params]}

    # ------------------------------------------------------------------------------------------------------------
    def compute(self, domains: Mapping[str, Iterable[Any]], targets: Mapping[str, Iterable[Any]],
                *, _sketches_only: bool = False) -> InfluenceResult:
        """Influence of every domain on every target.

        Args:
            domains: name → iterable of batches (a DataLoader, a list, a generator) sampled from that domain.
            targets: name → iterable of batches of the target task's sequences.

        Returns:
            :class:`InfluenceResult` with ``S[target, domain]`` (float64) in the given orders.

        ``_sketches_only`` (for :mod:`tikmix.influence.adaptive`, which measures in rounds and merges them): return
        this rank's raw sums and unit sketches (a dict) before anything crosses ranks; a name may then yield nothing.
        """
        dom_names, dom_iters = self._named_iterables(domains, "domains")
        tgt_names, tgt_iters = self._named_iterables(targets, "targets")
        slots = self.layout.slots
        timings: Dict[str, float] = {}
        fsdp = fsdp_summed_gradients(self.model) if self._shards else contextlib.nullcontext()
        lockstep = Lockstep() if self._shards else None
        with _ModelGuard(self.model, [p for _, p in self.named_params]), torch.inference_mode(False), \
                torch.enable_grad(), fsdp:
            scales = None
            if self.preconditioner == "adam":
                assert self.optimizer is not None
                scales = adam_scales(self.optimizer, slots, self.layout.exact)
            projector = Projector(self.layout, self.seed, self.device, scales)
            self._signature: Optional[Tuple[str, str]] = None
            bar = self._progress_bar(list(dom_iters) + list(tgt_iters))
            try:
                t0 = time.perf_counter()
                # float64 sums of float32 batch sketches: (nearly) exact, so S does not depend on how the batches
                # are split over ranks (the order of the additions)
                tgt_sum = torch.zeros(len(tgt_names), projector.dim, dtype=torch.float64, device=self.device)
                tgt_counts = torch.zeros(_N_COUNTS, len(tgt_names), dtype=torch.int64)
                # the losses of the forward the target gradients take anyway, summed in float64 (result.target_loss)
                tgt_loss = torch.zeros(len(tgt_names), dtype=torch.float64, device=self.device)
                for i, (name, it) in enumerate(zip(tgt_names, tgt_iters)):
                    for b, (batch, real) in enumerate(_batches(it, name, "targets", lockstep)):
                        where = f"targets[{name!r}] batch {b}" + ("" if real else " (padding pass)")
                        batch = self._prepare(batch, where)
                        losses = run_loss(self.model, self.loss_fn, batch, where)
                        row = projector.zeros(1)
                        self._add_batch_gradient(projector, row, losses, real)
                        tgt_sum[i] += row[0].to(torch.float64)
                        if real:
                            self._count(tgt_counts, i, losses, batch)
                            tgt_loss[i] += losses.detach().to(self.device, torch.float64).sum()
                        bar.update(int(real))
                    if not _sketches_only and not dist_utils.is_active() and tgt_counts[_SAMPLES, i] == 0:
                        raise ValueError(f"targets[{name!r}] yielded no samples")
                timings["targets"] = time.perf_counter() - t0
                target_nonzero, projector.nonzero = projector.nonzero, set()

                t0 = time.perf_counter()
                rows: List[torch.Tensor] = []
                unit_dom: List[int] = []
                unit_size: List[int] = []
                dom_counts = torch.zeros(_N_COUNTS, len(dom_names), dtype=torch.int64)
                verified: set = set()  # domains whose first micro-batch was verified (per_sample)
                capture = (PerSampleCapture(self.model, self.loss_fn, slots, projector, self._owners,
                                            self.func_chunk_size, self._shards)
                           if self.mode == "per_sample" else None)
                # per-sample capture hooks module inputs and output gradients, which a torch.compile'd graph does not
                # expose (and its donated buffers allow one backward only): per-sample passes run compiled code eagerly
                eager = _force_eager() if capture is not None else contextlib.nullcontext()
                with capture if capture is not None else contextlib.nullcontext(), eager:
                    for j, (name, it) in enumerate(zip(dom_names, dom_iters)):
                        for b, (batch, real) in enumerate(_batches(it, name, "domains", lockstep)):
                            where = f"domains[{name!r}] batch {b}" + ("" if real else " (padding pass)")
                            batch = self._prepare(batch, where)
                            if capture is None:
                                losses = run_loss(self.model, self.loss_fn, batch, where)
                                row = projector.zeros(1)
                                self._add_batch_gradient(projector, row, losses, real)
                                # under sharding a unit is one step of every rank (rows are summed over ranks):
                                # a rank in a padding pass still holds its (zero) part of the unit
                                if real or self._shards:
                                    rows.append(row)
                                    unit_dom.append(j)
                                    unit_size.append(losses.shape[0] if real else 0)
                            else:
                                # verify the first micro-batch of every domain: a gradient path that only one
                                # domain's data takes is checked too
                                # (sharded: a collective check, so padding ranks take part)
                                check = self.verify and (real or bool(self._shards)) and j not in verified
                                losses, r = capture.run(batch, where, verify=check, real=real)
                                if check:
                                    verified.add(j)
                                if real:
                                    rows.append(r)
                                    unit_dom.extend([j] * r.shape[0])
                                    unit_size.extend([1] * r.shape[0])
                            if real:
                                self._count(dom_counts, j, losses, batch)
                                dom_counts[_BATCHES, j] += 1
                            bar.update(int(real))
                        if not _sketches_only and not dist_utils.is_active() and dom_counts[_SAMPLES, j] == 0:
                            raise ValueError(f"domains[{name!r}] yielded no samples (an empty domain)")
                timings["domains"] = time.perf_counter() - t0
            finally:
                bar.close()

        if _sketches_only:
            return {"projector": projector, "tgt_sum": tgt_sum, "tgt_counts": tgt_counts, "tgt_loss": tgt_loss,  # type: ignore[return-value]
                    "rows": rows,
                    "unit_dom": unit_dom, "unit_size": unit_size, "dom_counts": dom_counts,
                    "target_nonzero": target_nonzero, "domain_nonzero": projector.nonzero,
                    "capture_source": capture.source if capture is not None else None, "timings": timings}
        t0 = time.perf_counter()
        self._check_contributions(target_nonzero, projector.nonzero)
        result = self._finish(projector, dom_names, tgt_names, tgt_sum, tgt_counts, rows, unit_dom, unit_size,
                              dom_counts, tgt_loss)
        timings["scores"] = time.perf_counter() - t0
        result.timings.update(timings)
        if capture is not None:  # how each parameter's per-sample gradients were captured
            result.layout["per_sample_capture"] = {s.name: capture.source[s.index] for s in slots}
        result.layout["parameter_paths"] = parameter_paths(slots, self._owners,
                                                           capture.source if capture is not None else None)
        return result

    def _add_batch_gradient(self, projector: Projector, row: torch.Tensor, losses: torch.Tensor, real: bool) -> None:
        """``row += `` the sketch of the gradient of ``losses.sum()`` (group mode and targets).

        Sharded parameters: an ordinary backward lets FSDP2 sum the gradient over ranks into each rank's shard, and
        the shard is sketched at its offset (the row is then this rank's *partial* sketch of the step's gradient, and
        a padding pass contributes its rank's zero)."""
        slots = self.layout.slots
        if self._shards:
            grads = sharded_group_pass(losses if real else losses * 0.0, self._all_params, slots)
        else:
            grads = group_pass(losses, slots)
        projector.add_grads(row, [(slot, g.unsqueeze(0)) for slot, g in zip(slots, grads) if g is not None],
                            self._shards)

    def _check_contributions(self, target_nonzero: set, domain_nonzero: set) -> None:
        """No silent zero: parameters that received no nonzero gradient on any rank, on the target or the domain side.

        None at all on the domain side (or the target side) raises: ``S`` would be 0 (a wrong number, not a
        measurement). Some parameters missing warns, naming them (a parameter the data does not reach is legitimate);
        in per-sample mode a parameter with a target gradient but no per-sample gradient raises (the capture missed it).
        """
        slots = self.layout.slots
        flags = torch.tensor([[s.index in target_nonzero, s.index in domain_nonzero] for s in slots],
                             dtype=torch.int64)
        dist_utils.all_reduce_sum_([flags])
        tgt_ok, dom_ok = flags[:, 0] > 0, flags[:, 1] > 0
        hint = ("; is the loss computed from the selected parameters (for a torch.compile'd or FSDP-wrapped model, "
                "pass the wrapped model itself), and not under no_grad?")
        if not bool(tgt_ok.any()):
            raise RuntimeError("no selected parameter received a nonzero target gradient on any rank, so S would be "
                               "0" + hint)
        if not bool(dom_ok.any()):
            raise RuntimeError("no selected parameter received a nonzero domain gradient on any rank, so S would be "
                               "0" + hint)
        missed = [s.name for s, t, d in zip(slots, tgt_ok, dom_ok) if bool(t) and not bool(d)]
        if missed and self.mode == "per_sample":
            raise RuntimeError(
                "per-sample capture produced no gradient for " + ", ".join(missed[:8]) + (" ..." if len(missed) > 8
                else "") + ", which the targets' gradients reach: the per-sample hooks did not see these parameters' "
                "use (e.g. inside a torch.compile'd region); use mode='group' or an uncompiled model")
        unused = [s.name for s, t, d in zip(slots, tgt_ok, dom_ok) if not bool(t) and not bool(d)]
        if unused or missed:
            warnings.warn("tikmix: selected parameters with a zero gradient everywhere: " + ", ".join(unused[:8])
                          + ("; with a zero domain gradient only: " + ", ".join(missed[:8]) if missed else "")
                          + " (they contribute nothing to S; deselect them with params= if intended)",
                          RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------------------------------------------------
    def _finish(self, projector: Projector, dom_names: List[str], tgt_names: List[str], tgt_sum: torch.Tensor,
                tgt_counts: torch.Tensor, rows: List[torch.Tensor], unit_dom: List[int], unit_size: List[int],
                dom_counts: torch.Tensor, tgt_loss: torch.Tensor) -> InfluenceResult:
        n_dom = len(dom_names)
        dim = projector.dim
        unit_rows = torch.cat(rows) if rows else projector.zeros(0)
        ids = torch.tensor(unit_dom, dtype=torch.int64, device=self.device)
        sizes = torch.tensor(unit_size, dtype=torch.int64)
        # Group mode on sharded parameters: every rank holds a partial sketch of every unit (one lockstep step of all
        # ranks); summing them gives every rank all units. Otherwise each rank holds whole sketches of its own units.
        units_shared = self.units_span_ranks

        # ---- everything that crosses ranks is summed here ----
        if dist_utils.is_active():
            dist_utils.check_same_on_all_ranks((dom_names, tgt_names), "domain/target names")
        if units_shared:
            dist_utils.all_reduce_sum_([unit_rows, sizes])
        dom_sum = _segment_sum(unit_rows.to(torch.float64), ids, n_dom, dim)  # float64: see tgt_sum in compute
        counts = torch.cat([tgt_counts.flatten(), dom_counts.flatten()]).to(self.device)
        dist_utils.all_reduce_sum_([tgt_sum, tgt_loss, counts] if units_shared
                                   else [tgt_sum, tgt_loss, dom_sum, counts])
        counts = counts.cpu()
        n_t = len(tgt_names)
        tgt_counts = counts[: _N_COUNTS * n_t].view(_N_COUNTS, n_t)
        dom_counts = counts[_N_COUNTS * n_t :].view(_N_COUNTS, n_dom)
        tgt_counts[_TOKENS][tgt_counts[_UNKNOWN_TOKENS] > 0] = -1
        dom_counts[_TOKENS][dom_counts[_UNKNOWN_TOKENS] > 0] = -1
        for name, n in zip(tgt_names, tgt_counts[_SAMPLES]):
            if n == 0:
                raise ValueError(f"targets[{name!r}] yielded no samples")
        for name, n in zip(dom_names, dom_counts[_SAMPLES]):
            if n == 0:
                raise ValueError(f"domains[{name!r}] yielded no samples (an empty domain)")
        tgt_mean = tgt_sum.to(torch.float64) / tgt_counts[_SAMPLES].to(self.device, torch.float64).unsqueeze(1)
        target_loss = (tgt_loss / tgt_counts[_SAMPLES].to(self.device, torch.float64)).cpu()
        if not bool(torch.isfinite(tgt_mean).all()):
            raise FloatingPointError("target gradients are not finite (overflow in the backward pass?)")
        zero = [name for name, row in zip(tgt_names, tgt_mean) if not bool(row.ne(0).any())]
        if zero:
            raise ValueError(f"the gradient of targets {zero} is identically zero on every rank (the loss does not "
                             "depend on the selected parameters), so their row of S would be 0")
        if not bool(torch.isfinite(dom_sum).all()):
            bad = [dom_names[j] for j in range(n_dom) if not bool(torch.isfinite(dom_sum[j]).all())]
            raise FloatingPointError(f"gradients of domains {bad} are not finite (overflow in the backward pass?)")

        # ---- preconditioner on the target side ----
        damping_used = None
        if self.preconditioner == "gauss_newton":
            phi = unit_rows.to(torch.float64)
            if self.mode == "group":
                phi = phi / sizes.to(phi.device, torch.float64).sqrt().unsqueeze(1)
            if dist_utils.is_active() and not units_shared:
                gram = phi.t() @ phi
                n_rows = torch.tensor([phi.shape[0]], dtype=torch.int64, device=self.device)
                dist_utils.all_reduce_sum_([gram, n_rows])
                precond_targets, damping_used = gauss_newton_apply(tgt_mean, gram=gram, n_rows=int(n_rows), damping=self.damping)
            else:
                precond_targets, damping_used = gauss_newton_apply(tgt_mean, rows=phi, damping=self.damping)
        else:
            precond_targets = tgt_mean

        # ---- S (float64) from the all-reduced domain sums; per-unit scores from the local rows ----
        s_sum = precond_targets @ dom_sum.to(torch.float64).t()  # [n, G]
        unit_scores = _unit_scores(unit_rows, ids, n_dom, precond_targets)
        dom_samples = dom_counts[_SAMPLES]
        S = s_sum / dom_samples.to(s_sum.device, torch.float64).unsqueeze(0) if self.reduction == "mean" else s_sum
        S = S.cpu()

        local = (unit_scores.cpu(), ids.cpu(), sizes)
        gathered = [local] if units_shared else dist_utils.all_gather_objects(local)
        # canonical unit order: by domain, then rank, then local order. When every rank passes a contiguous share of
        # each domain's ordered batches (rank 0 the first; what the Controller does), this is the global order and the
        # intervals are those of one process on the union at any world size.
        all_ids = torch.cat([g[1] for g in gathered])
        order = torch.sort(all_ids, stable=True).indices
        all_ids = all_ids[order]
        all_scores = torch.cat([g[0] for g in gathered])[order]
        all_sizes = torch.cat([g[2] for g in gathered])[order]
        ci_low = ci_high = stab = None
        if self.n_bootstrap > 0:
            boot = bootstrap(all_scores, all_ids, all_sizes, n_dom, S, reduction=self.reduction,
                             n_bootstrap=self.n_bootstrap, confidence=self.confidence, seed=self.bootstrap_seed)
            ci_low, ci_high, stab = boot["low"], boot["high"], boot["rank_stability"]
        return InfluenceResult(
            S=S,
            domains=tuple(dom_names),
            targets=tuple(tgt_names),
            reduction=self.reduction,
            mode=self.mode,
            preconditioner=self.preconditioner,
            sketch_dim=None if self.layout.exact else dim,
            seed=self.seed,
            domain_samples=dom_samples.clone(),
            domain_tokens=dom_counts[_TOKENS].clone(),
            domain_batches=dom_counts[_BATCHES].clone(),
            target_samples=tgt_counts[_SAMPLES].clone(),
            target_tokens=tgt_counts[_TOKENS].clone(),
            target_loss=target_loss,
            unit="sample" if self.mode == "per_sample" else "micro-batch",
            unit_scores=all_scores,
            unit_domains=all_ids,
            unit_sizes=all_sizes,
            domain_sketches=dom_sum.cpu(),  # float64
            target_sketches=tgt_mean.cpu(),
            ci_low=ci_low,
            ci_high=ci_high,
            confidence=self.confidence,
            n_bootstrap=self.n_bootstrap,
            rank_stability=stab,
            unit_sketches=unit_rows.cpu() if self.keep_sketches else None,
            gauss_newton_damping=damping_used,
            layout=self.layout.describe(),
        )

    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _named_iterables(mapping: Any, kind: str) -> Tuple[List[str], List[Iterable[Any]]]:
        if not isinstance(mapping, Mapping):
            raise TypeError(f"{kind} must be a mapping name -> iterable of batches, got {type(mapping).__name__}")
        if len(mapping) == 0:
            raise ValueError(f"{kind} must contain at least one entry")
        names = list(mapping)
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"{kind} keys must be str names, got {n!r}")
            if isinstance(mapping[n], torch.Tensor):
                iter_batches(mapping[n], n, kind)  # raises the clear "wrap it in a list" error
        return names, [mapping[n] for n in names]

    def _prepare(self, batch: Any, where: str) -> Any:
        sig = batch_signature(batch)
        if self._signature is None:
            self._signature = (sig, where)
        elif sig != self._signature[0]:
            raise TypeError(f"mismatched batch types: {where} is a {sig}, but {self._signature[1]} was a "
                            f"{self._signature[0]}; every domain and target batch must have the same structure")
        dev = self._batch_device
        return tree_map(lambda t: t.to(dev, non_blocking=True)
                        if isinstance(t, torch.Tensor) and t.device != dev else t, batch)

    def _count(self, counts: torch.Tensor, j: int, losses: torch.Tensor, batch: Any) -> None:
        counts[_SAMPLES, j] += losses.shape[0]
        tokens = int(self.count_tokens(batch))
        if tokens < 0:
            counts[_UNKNOWN_TOKENS, j] += 1
        else:
            counts[_TOKENS, j] += tokens

    def _progress_bar(self, iterables: Sequence[Any]) -> Any:
        try:
            total: Optional[int] = sum(len(it) for it in iterables)  # type: ignore[arg-type]
        except TypeError:
            total = None
        progress = False if dist_utils.rank() > 0 else self.progress
        return progress_bar(progress, "GroupInfluence", total=total, desc="influence", unit="batch", leave=False)


def _segment_sum(rows: torch.Tensor, ids: torch.Tensor, n_groups: int, dim: int) -> torch.Tensor:
    """Deterministic per-domain row sums (the native segment_sum op where it has a kernel)."""
    if rows.shape[0] == 0:
        return torch.zeros(n_groups, dim, dtype=rows.dtype, device=rows.device)
    if _has_kernel("segment_sum", rows.device):
        import tikmix_ext

        return tikmix_ext.segment_sum(rows.contiguous(), ids, n_groups)
    return torch.zeros(n_groups, dim, dtype=rows.dtype, device=rows.device).index_add_(0, ids, rows)


def _unit_scores(rows: torch.Tensor, ids: torch.Tensor, n_groups: int, targets: torch.Tensor) -> torch.Tensor:
    """``scores[u, i] = targets_i · row_u`` in float64 (``targets``: the preconditioned target sketches; the native
    group_influence op where it has a kernel)."""
    if rows.shape[0] == 0:
        return torch.zeros(0, targets.shape[0], dtype=torch.float64)
    r64 = rows.to(torch.float64).contiguous()
    if _has_kernel("group_influence", rows.device):
        import tikmix_ext

        _, per_sample = tikmix_ext.group_influence(r64, ids, n_groups, targets.contiguous(), None)
        return per_sample
    return r64 @ targets.t()


def _force_eager() -> Any:
    """A context in which torch.compile'd modules and functions run their original Python code eagerly."""
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def _batches(iterable: Iterable[Any], name: str, kind: str, lockstep: Optional[Lockstep]) -> Iterator[Tuple[Any, bool]]:
    """``(batch, real)`` pairs; with ``lockstep`` (sharded parameters) every rank makes the same number of passes."""
    iterator = iter_batches(iterable, name, kind)
    if lockstep is None:
        for batch in iterator:
            yield batch, True
    else:
        yield from lockstep.steps(iterator)

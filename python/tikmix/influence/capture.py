"""Gradient capture: parameter selection, the group-mode pass and the per-sample pass.

Group mode (:func:`group_pass`): one ordinary backward of the micro-batch's summed loss through
``torch.autograd.grad`` (``param.grad`` is never touched); each parameter's gradient is projected on its own
(:meth:`Projector.add_grad`), so no flat copy of all gradients is ever made.

Per-sample mode (:class:`PerSampleCapture`): the same single forward/backward, plus hooks that turn module inputs and
output gradients into per-sample sketches without materialising per-sample weight gradients:

* ``nn.Linear``: weight ``Σ_t g_t a_tᵀ`` (Kronecker block via ``sketch_kron``), bias ``Σ_t g_t``;
* ``nn.Embedding``: weight ``Σ_t e_{idx_t} g_tᵀ`` (Kronecker block: rows of R_out gathered by token id);
* ``nn.LayerNorm`` / ``nn.RMSNorm``: weight ``Σ_t g_t ⊙ x̂_t``, bias ``Σ_t g_t``;
* Hugging Face building blocks (GPT-2 ``Conv1D``, Llama-style ``*RMSNorm``) and user-registered modules: the
  registry of :mod:`.hook_rules`.

A module is hooked only when its class uses the stock ``forward`` of these types. Every other selected parameter
(custom modules, parameters used directly in ``forward``) gets per-sample gradients from ``torch.func``
(``vmap(grad(...))`` over the samples, one extra vectorised forward/backward). The first training micro-batch is
*verified* against plain autograd: per-sample gradients must sum to the batch gradient, and those of two probe
samples (first and last; the first alone in a batch of two) to the gradient of their summed losses. In eval mode that
reference comes from the probe samples' own forward and backward (2/B of the micro-batch's cost); with a module in
train mode (where a second forward would draw new dropout masks), from one more backward through the batch's graph.
2-D weights above 256 entries are compared through 8 x 8 check sketches ``C_rᵀ W C_c`` (a JL estimate of the
difference, tolerance doubled) rather than whole gradients, so the check costs no weight-gradient GEMM. A hooked parameter
that fails (e.g. a weight also used functionally, as ``nn.MultiheadAttention`` does with ``out_proj.weight``) is
moved to ``torch.func`` with a warning and the micro-batch is redone; a ``torch.func`` parameter that fails means the
loss couples samples (batch norm in train mode, in-batch terms, ``scale_grad_by_freq``), and per-sample influence is
undefined: a RuntimeError says so.

Per-sample mode needs every hooked module's input to carry the sample dimension first (``[B, ...]``), and batches
whose tensors all have the sample dimension first (for ``torch.func``).
"""
from __future__ import annotations

import fnmatch
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from .. import _distributed as dist_utils
from .._validation import did_you_mean
from .sharding import ShardSpec, local_tensor
from .hook_rules import HookRule, hook_rule, is_factorable
from .sketch_space import Projector, Slot, kron_seed, sign_tile

__all__ = [
    "select_parameters",
    "parameter_owners",
    "is_factorable",
    "hook_rule",
    "run_loss",
    "group_pass",
    "sharded_group_pass",
    "PerSampleCapture",
    "batch_signature",
]

LossFn = Callable[[nn.Module, Any], torch.Tensor]

# The self-check compares 2-D weights above _CHECK_MIN_NUMEL entries through 8 x 8 check sketches (seeded apart from
# the influence sketch), not whole gradients.
_CHECK_WIDTH = 8
_CHECK_MIN_NUMEL = 256
_CHECK_SEED = 0xC4EC_5EED

# ---- parameter selection -----------------------------------------------------------------------------------------
def select_parameters(model: nn.Module, params: Any) -> List[Tuple[str, nn.Parameter]]:
    """Resolve ``params`` to an ordered, duplicate-free list of ``(name, parameter)`` of ``model``.

    ``None``: every parameter with ``requires_grad``. Otherwise a name pattern (``fnmatch``, matched against every
    name a parameter has, tied aliases included), an ``nn.Module`` (all its parameters), an ``nn.Parameter``, or a
    sequence mixing these. Order follows ``model.named_parameters()``.
    """
    all_named = list(model.named_parameters(remove_duplicate=False))
    first_name: Dict[int, str] = {}
    for name, p in all_named:
        first_name.setdefault(id(p), name)
    order = {pid: i for i, pid in enumerate(first_name)}
    by_id = {id(p): p for _, p in all_named}
    if params is None:
        chosen = {pid for pid, p in by_id.items() if p.requires_grad}
        if not chosen:
            raise ValueError("params=None selects parameters with requires_grad=True, and the model has none; "
                             "pass params= explicitly")
    else:
        items = [params] if isinstance(params, (str, nn.Module, nn.Parameter)) else list(params)
        if not items:
            raise ValueError("params must not be empty (use None, null in a run config, for all trainable "
                             "parameters)")
        chosen = set()
        for item in items:
            if isinstance(item, str):
                hit = {id(p) for name, p in all_named if fnmatch.fnmatchcase(name, item)}
                if not hit:
                    raise ValueError(_no_match(item, [name for name, _ in all_named]))
                chosen |= hit
            elif isinstance(item, nn.Parameter):
                if id(item) not in by_id:
                    raise ValueError("params contains an nn.Parameter that does not belong to the model")
                chosen.add(id(item))
            elif isinstance(item, nn.Module):
                ids = {id(p) for p in item.parameters()}
                if not ids:
                    raise ValueError(f"params contains a module ({type(item).__name__}) without parameters")
                if not ids <= set(by_id):
                    raise ValueError(f"params contains a module ({type(item).__name__}) that is not part of the model")
                chosen |= ids
            else:
                raise TypeError("params entries must be name patterns (str), nn.Module or nn.Parameter, got "
                                f"{type(item).__name__}")
    return [(first_name[pid], by_id[pid]) for pid in sorted(chosen, key=order.__getitem__)]


def _no_match(pattern: str, names: Sequence[str]) -> str:
    """The error for a ``params`` pattern that matches nothing: the closest module pattern (``blocks.1.*`` for
    ``block.1.*``) and a few of the model's parameter names."""
    if not names:
        return f"params pattern {pattern!r}: the model has no parameters"
    # every module prefix as a pattern ("blocks.*", "blocks.1.*", ...) and every full name
    candidates = dict.fromkeys(n for name in names for n in
                               [".".join(name.split(".")[:i]) + ".*" for i in range(1, name.count(".") + 1)] + [name])
    examples = list(dict.fromkeys(".".join(n.split(".")[:2]) + (".*" if n.count(".") > 1 else "") for n in names))
    return (f"params pattern {pattern!r} matches no parameter of the model{did_you_mean(pattern, list(candidates))}; "
            f"its parameters include {', '.join(examples[:6])}{' ...' if len(examples) > 6 else ''} (fnmatch "
            "patterns against the names of model.named_parameters())")


def parameter_owners(model: nn.Module) -> Dict[int, List[Tuple[nn.Module, str]]]:
    """``id(param) -> [(module, attribute name), ...]`` for every module that registers the parameter directly."""
    owners: Dict[int, List[Tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for attr, p in module._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((module, attr))
    return owners


def batch_signature(batch: Any) -> str:
    """A short description of a batch's container type (and keys), used to report mismatched batch types."""
    if isinstance(batch, torch.Tensor):
        return "Tensor"
    if isinstance(batch, dict):
        return "dict[" + ", ".join(sorted(map(str, batch))) + "]"
    if isinstance(batch, (tuple, list)):
        return f"{type(batch).__name__}[{len(batch)}]"
    return type(batch).__name__


def _leading_size(batch: Any) -> Optional[int]:
    leaves = [t for t in tree_flatten(batch)[0] if isinstance(t, torch.Tensor) and t.dim() >= 1]
    sizes = {t.shape[0] for t in leaves}
    return sizes.pop() if len(sizes) == 1 else None


def run_loss(model: nn.Module, loss_fn: LossFn, batch: Any, where: str) -> torch.Tensor:
    """Call ``loss_fn(model, batch)`` with grad enabled and validate the protocol: a finite float ``Tensor[B]``."""
    with torch.enable_grad():
        losses = loss_fn(model, batch)
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"loss_fn must return a torch.Tensor of per-sequence losses [B], got {type(losses).__name__} "
                        f"for {where}")
    if losses.dim() != 1 or losses.numel() == 0:
        hint = " (a scalar: return per-sequence losses, e.g. reduction='none' then a mean over tokens)" \
            if losses.dim() == 0 else ""
        raise ValueError(f"loss_fn must return per-sequence losses of shape [B] with B >= 1, got shape "
                         f"{tuple(losses.shape)} for {where}{hint}")
    if not losses.is_floating_point():
        raise TypeError(f"loss_fn must return floating-point losses, got {losses.dtype} for {where}")
    expected = _leading_size(batch)
    if expected is not None and losses.shape[0] != expected:
        raise ValueError(f"loss_fn returned {losses.shape[0]} losses for {where}, but the batch holds {expected} "
                         "samples (every tensor's first dimension); it must return one loss per sample")
    bad = ~torch.isfinite(losses.detach())
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"loss_fn returned a non-finite loss ({float(losses.detach()[i])}) at index {i} for {where}")
    if not losses.requires_grad:
        raise ValueError(f"loss_fn's losses for {where} do not depend on the selected parameters (no autograd "
                         "graph); were they computed under torch.no_grad(), or detached?")
    return losses


def group_pass(losses: torch.Tensor, slots: Sequence[Slot]) -> List[Optional[torch.Tensor]]:
    """Gradients of ``losses.sum()`` w.r.t. every slot's parameter (None where unused), via ``autograd.grad``."""
    return list(torch.autograd.grad(losses.sum(), [s.param for s in slots], allow_unused=True))


def sharded_group_pass(losses: torch.Tensor, params: Sequence[torch.Tensor],
                       slots: Sequence[Slot]) -> List[Optional[torch.Tensor]]:
    """Sharded parameters (FSDP2): this rank's local part of every slot's gradient of ``losses.sum()`` summed over
    all ranks (None where unused).

    FSDP2 computes the gradient of the unsharded parameters it gathered for the forward and reduce-scatters it into
    ``param.grad``; ``autograd.grad`` w.r.t. the sharded parameters would not see it. So this runs an ordinary
    backward (a collective: every rank calls it) with the ``grad`` of ``params`` (all the model's parameters, listed
    outside a forward: FSDP2 registers its unsharded parameters while a forward is active) cleared before and after
    (the caller's gradients are restored by the engine)."""
    for p in params:
        p.grad = None
    losses.sum().backward()
    grads = [None if s.param.grad is None else local_tensor(s.param.grad) for s in slots]
    for p in params:
        p.grad = None
    return grads


class _LossModule(nn.Module):
    """Wraps ``loss_fn`` so ``torch.func.functional_call`` can swap the model's parameters."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


class PerSampleCapture:
    """Per-sample sketches of a micro-batch (see the module docstring). Use as a context manager (installs hooks)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, slots: Sequence[Slot], projector: Projector,
                 owners: Dict[int, List[Tuple[nn.Module, str]]], func_chunk_size: Optional[int] = None,
                 shards: Optional[Dict[int, ShardSpec]] = None):
        self.model = model
        # sharded parameters (FSDP2): module inputs and output gradients are unsharded, so the hooks work as usual;
        # the backward is FSDP's own (sharded_group_pass) and verification compares sketches (_verify_sharded)
        self.shards = shards or {}
        self.all_params = list(model.parameters())
        self.loss_fn = loss_fn
        self.slots = list(slots)
        self.projector = projector
        self.func_chunk_size = func_chunk_size
        self.source: Dict[int, str] = {}
        self._module_slots: Dict[nn.Module, Dict[str, Slot]] = {}
        for slot in self.slots:
            mods = owners.get(id(slot.param), [])
            if mods and all(hook_rule(m) is not None for m, _ in mods):
                self.source[slot.index] = "hooks"
            else:
                self.source[slot.index] = "func"
        self._check_sharded_sources()
        self._rebuild_module_map(owners)
        self._owners = owners
        self._handles: List[Any] = []
        self._active = False
        self._rows: Optional[torch.Tensor] = None
        self._batch_size = 0
        self._checks: Dict[int, Dict[str, List[Any]]] = {}
        self._probe: Any = slice(None)
        self._unbatched: set = set()
        self._collect = False
        self._error: Optional[BaseException] = None
        self._eps = 0.0  # machine epsilon of the forward's floating dtype (the checks' tolerance)
        self._tiles: Dict[Tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}  # self-check tiles
        self._expected_b: Optional[int] = None  # the batch's sample count, known before its forward

    def _check_sharded_sources(self) -> None:
        if not self.shards:
            return
        func = [s.name for s in self.slots if self.source[s.index] == "func"]
        if func:
            raise NotImplementedError(
                "per-sample influence on a sharded (FSDP2/DTensor) model captures per-sample gradients with module "
                "hooks only (the rules of tikmix.influence.hook_rules: nn.Linear, nn.Embedding, norms, ...); these "
                "selected parameters would need torch.func over unsharded parameters: " + ", ".join(func[:8])
                + (" ..." if len(func) > 8 else "") + ". Use mode='group', or params= without them")

    def _rebuild_module_map(self, owners) -> None:
        self._module_slots = {}
        for slot in self.slots:
            if self.source[slot.index] != "hooks":
                continue
            for m, attr in owners[id(slot.param)]:
                self._module_slots.setdefault(m, {})[attr] = slot

    # -- hooks --
    def __enter__(self) -> "PerSampleCapture":
        for module in self._module_slots:
            self._handles.append(module.register_forward_hook(self._forward_hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._active = False

    def _reinstall(self) -> None:
        self.__exit__(None, None, None)
        self._rebuild_module_map(self._owners)
        self.__enter__()

    def _forward_hook(self, module: nn.Module, inputs: Tuple[Any, ...], output: Any) -> Optional[torch.Tensor]:
        if not self._active or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return None
        slots = self._module_slots.get(module)
        if not slots or not inputs or not isinstance(inputs[0], torch.Tensor):
            return None
        x = inputs[0].detach()  # shares storage with what autograd saves anyway: no extra memory
        if x.is_floating_point():  # the forward's precision (bf16 under mixed precision) sets the check's tolerance
            self._eps = max(self._eps, torch.finfo(x.dtype).eps)
        rule = hook_rule(module)
        replaced = None
        b = self._expected_b
        if rule.kind == "embedding" and b is not None and b > 1 and x.dim() >= 1 and x.shape[0] == 1 \
                and output.dim() >= 1 and output.shape[0] == 1:
            # A lookup made once and broadcast over the batch (GPT-2's position embeddings: position_ids [1, T]).
            # Its output gradient would arrive summed over the samples; handing the rest of the forward a [B, ...]
            # view of the same values instead (what broadcasting computes anyway) makes every sample's output
            # gradient reach the hook separately, so the rule stays exact without torch.func.
            replaced = output = output.expand(b, *output.shape[1:])
            x = x.expand(b, *x.shape[1:])

        def on_grad(g: torch.Tensor, module=module, x=x, rule=rule, slots=slots) -> None:
            if self._collect and self._error is None:
                try:
                    self._contribute(module, rule, slots, x, g.detach())
                except BaseException as exc:  # re-raised after the backward
                    self._error = exc

        output.register_hook(on_grad)
        return replaced

    def _contribute(self, module: nn.Module, rule: HookRule, slots: Dict[str, Slot], x: torch.Tensor,
                    g: torch.Tensor) -> None:
        rows, b = self._rows, self._batch_size
        assert rows is not None
        if g.dim() == 0 or g.shape[0] != b or (rule.kind != "norm" and (x.dim() == 0 or x.shape[0] != b)):
            # Not sample-major (e.g. positional embeddings looked up once and broadcast over the batch): the
            # gradient reaching the hook is already summed over samples. torch.func takes these parameters.
            self._unbatched.update(s.index for s in slots.values())
            return
        if rule.kind in ("linear", "linear_t"):
            a3 = x.reshape(b, -1, x.shape[-1])
            g3 = g.reshape(b, -1, g.shape[-1])
            if "weight" in slots:
                slot = slots["weight"]
                if rule.kind == "linear":  # weight [out, in]: Σ_t g_t a_tᵀ
                    self.projector.add_linear(rows, slot, a3, g3)
                    self._record(slot, lambda sel: self._outer_total(slot, g3[sel], a3[sel]))
                else:  # weight [in, out] (GPT-2 Conv1D): Σ_t a_t g_tᵀ, the same product with the roles swapped
                    self.projector.add_linear(rows, slot, g3, a3)
                    self._record(slot, lambda sel: self._outer_total(slot, a3[sel], g3[sel]))
            if "bias" in slots:
                self._add_materialised(slots["bias"], g3.sum(1))
        elif rule.kind == "embedding":
            idx = x.reshape(b, -1)
            g3 = g.reshape(b, -1, g.shape[-1])
            if module.padding_idx is not None:
                g3 = g3 * (idx != module.padding_idx).unsqueeze(-1).to(g3.dtype)
            slot = slots["weight"]
            self.projector.add_embedding(rows, slot, idx, g3)
            self._record(slot, lambda sel: self._lookup_total(slot, idx[sel], g3[sel]))
        else:  # norm: weight gradient Σ_t g_t ⊙ x̂_t with x̂ the normalised input
            x = rule.normalize(module, x)
            nd = len(next(iter(slots.values())).shape)
            gs = g.reshape(b, -1, *g.shape[g.dim() - nd:])
            if "weight" in slots:
                self._add_materialised(slots["weight"], (gs * x.reshape(gs.shape)).sum(1))
            if "bias" in slots:
                self._add_materialised(slots["bias"], gs.sum(1))

    def _record(self, slot: Slot, total: Callable[[Any], Tuple[torch.Tensor, float]]) -> None:
        """When verifying: accumulate ``total(selection) = (Σ per-sample gradients, Σ of their norms (a bound))``
        over all samples and over the probe samples."""
        if slot.index not in self._checks:
            return
        for key, sel in (("all", slice(None)), ("probe", self._probe)):
            t, norm = total(sel)
            acc = self._checks[slot.index][key]
            acc[0] += t.reshape(-1).to(torch.float64)
            acc[1] += norm

    def _add_materialised(self, slot: Slot, per_sample: torch.Tensor) -> None:
        """Project materialised per-sample gradients ``[B, *shape]`` (and record them when verifying)."""
        assert self._rows is not None
        self.projector.add_grad(self._rows, slot, per_sample)
        flat = per_sample.reshape(per_sample.shape[0], -1)
        self._record(slot, lambda sel: (self._to_check_space(slot, flat[sel].sum(0)),
                                        float(flat[sel].norm(dim=1).sum())))

    # -- the self-check's space --
    def _sketched_check(self, slot: Slot) -> bool:
        """Whether ``slot``'s self-check compares 64-column check sketches ``C_rᵀ W C_c`` instead of whole
        gradients: 2-D weights above a few hundred entries, where forming ``Σ_t g_t a_tᵀ`` would cost a
        weight-gradient GEMM per verified micro-batch. (Sharded models compare their own sketches.)"""
        return not self.shards and len(slot.shape) == 2 and slot.numel > _CHECK_MIN_NUMEL

    def _check_tiles(self, slot: Slot, dtype: torch.dtype, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """``C_r [rows, 8]``, ``C_c [cols, 8]``: signs scaled by 1/√8, so ``‖C_rᵀ W C_c‖ ≈ ‖W‖`` (a JL estimate)."""
        out = []
        for tag, n in enumerate(slot.shape):
            key = (n, tag, dtype, device)
            t = self._tiles.get(key)
            if t is None:
                seed = kron_seed(self.projector.seed ^ _CHECK_SEED, n, tag)
                t = self._tiles[key] = (sign_tile(n, _CHECK_WIDTH, seed) / _CHECK_WIDTH ** 0.5).to(device, dtype)
            out.append(t)
        return out[0], out[1]

    def _to_check_space(self, slot: Slot, w: torch.Tensor) -> torch.Tensor:
        """A whole gradient ``w`` (``slot.shape`` or flat) in the check's space."""
        if not self._sketched_check(slot):
            return w.reshape(-1)
        w = w.reshape(slot.shape).to(torch.float64)
        cr, cc = self._check_tiles(slot, torch.float64, w.device)
        return (cr.t() @ w @ cc).reshape(-1)

    def _outer_total(self, slot: Slot, left: torch.Tensor, right: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """``Σ_{n,t} left[n,t] right[n,t]ᵀ`` in the check's space, and ``Σ_{n,t} ‖left‖‖right‖`` (a bound on the
        per-sample norms)."""
        fl, fr = left.reshape(-1, left.shape[-1]), right.reshape(-1, right.shape[-1])
        if fl.dtype in (torch.float16, torch.bfloat16):
            fl, fr = fl.float(), fr.float()
        bound = float((fl.norm(dim=1) * fr.norm(dim=1)).sum())
        if not self._sketched_check(slot):
            return fl.t() @ fr, bound
        cr, cc = self._check_tiles(slot, fl.dtype, fl.device)
        return (fl @ cr).t() @ (fr @ cc), bound

    def _lookup_total(self, slot: Slot, idx: torch.Tensor, g: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """``Σ_{n,t} e_{idx[n,t]} g[n,t]ᵀ`` in the check's space, and ``Σ_{n,t} ‖g‖``."""
        fi, fg = idx.reshape(-1), g.reshape(-1, g.shape[-1])
        if fg.dtype in (torch.float16, torch.bfloat16):
            fg = fg.float()
        bound = float(fg.norm(dim=1).sum())
        if not self._sketched_check(slot):
            return torch.zeros(slot.shape, dtype=fg.dtype, device=fg.device).index_add_(0, fi, fg), bound
        cr, cc = self._check_tiles(slot, fg.dtype, fg.device)
        return cr[fi].t() @ (fg @ cc), bound

    def _probe_batch(self, batch: Any, b: int) -> Any:
        """The probe samples as a batch of their own, or None where that cannot be formed (a tensor without the
        sample dimension first) or would not be comparable (a module in train mode: dropout draws anew)."""
        if b < 2 or _leading_size(batch) != b or any(m.training for m in self.model.modules()):
            return None
        index = self._probe.to("cpu")
        return tree_map(lambda t: t.index_select(0, index.to(t.device))
                        if isinstance(t, torch.Tensor) and t.dim() >= 1 else t, batch)

    # -- torch.func path --
    def _func_grads(self, batch: Any, slots: List[Slot]) -> Dict[str, torch.Tensor]:
        from torch.func import functional_call, grad, vmap

        wrapper = _LossModule(self.model, self.loss_fn)
        params = {"model." + s.name: s.param.detach() for s in slots}

        def one(p: Dict[str, torch.Tensor], sample: Any) -> torch.Tensor:
            sample1 = tree_map(lambda t: t.unsqueeze(0) if isinstance(t, torch.Tensor) else t, sample)
            return functional_call(wrapper, p, (sample1,)).sum()

        in_dims = tree_map(lambda t: 0 if isinstance(t, torch.Tensor) else None, batch)
        # torch.func.grad ignores an outer no_grad for its own differentiation; the outer one only keeps the results
        # from tracking the model's other parameters.
        with torch.no_grad(), warnings.catch_warnings():
            # vmap's fallback for ops without a batching rule (e.g. CPU flash attention) warns on every call
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            out = vmap(grad(one), in_dims=(None, in_dims), randomness="different",
                       chunk_size=self.func_chunk_size)(params, batch)
        return {name: t.detach() for name, t in out.items()}

    # -- one micro-batch --
    def run(self, batch: Any, where: str, verify: bool, real: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-sample sketches ``[B, dim]`` and the losses of one micro-batch.

        With ``verify``, two checks per parameter against plain autograd: per-sample gradients sum to the batch
        gradient, and those of the probe samples sum to the gradient of their losses (module docstring).
        On sharded parameters the first check compares sketches of the two sums over all ranks, and the second is
        not made (one backward per forward under FSDP). ``real=False``: a padding pass of a sharded model (its loss
        is zero-weighted; the rows are zero and to be dropped).
        """
        while True:
            losses, rows, unbatched, failed = self._run_once(batch, where, verify, real)
            if self.shards:  # decide the same on every rank (the next pass is a collective)
                flag = torch.tensor([int(bool(unbatched) or bool(failed))], dtype=torch.int64)
                dist_utils.all_reduce_sum_([flag])
                if int(flag) > 0:
                    raise RuntimeError(
                        "per-sample gradients captured by module hooks do not match autograd's on a sharded model "
                        f"({where}: " + (", ".join(s.name for s in failed) or "a module input is not sample-major")
                        + "); the torch.func fallback needs unsharded parameters: use mode='group'")
            if not unbatched and not failed:
                return losses, rows
            stuck = [s for s in failed if self.source[s.index] == "func"]
            if stuck:
                raise RuntimeError(
                    "per-sample gradients of " + ", ".join(s.name for s in stuck) + f" (torch.func, {where}) do not "
                    "match autograd's gradients of the same losses: the loss couples the samples of a batch (batch "
                    "norm in train mode, in-batch terms, randomness such as dropout in train mode, embedding "
                    "scale_grad_by_freq), so per-sample influence is undefined; use mode='group' or model.eval()"
                )
            moved = [s for s in failed if s.index not in unbatched]
            if moved:
                warnings.warn(
                    "tikmix: per-sample gradients captured by module hooks for " + ", ".join(s.name for s in moved)
                    + " do not match autograd's (the parameter is also used outside its module's forward, the loss couples samples, or a "
                    "module input is not sample-major); computing them with torch.func instead (slower)",
                    RuntimeWarning, stacklevel=3,
                )
            for idx in unbatched | {s.index for s in failed}:
                self.source[idx] = "func"
            self._reinstall()

    def _run_once(self, batch: Any, where: str, verify: bool, real: bool = True):
        self._checks, self._error, self._unbatched = {}, None, set()
        self._eps = 0.0
        self._expected_b = _leading_size(batch)
        self._active = True
        probe_grads: List[Optional[torch.Tensor]] = []
        probe_batch: Any = None
        nonzero_before, self.projector.nonzero = self.projector.nonzero, set()
        try:
            losses = run_loss(self.model, self.loss_fn, batch, where)
            b = losses.shape[0]
            self._batch_size = b
            # the probe: a proper subset of the samples (a sum over all of them cannot show per-sample errors that
            # cancel, such as samples coupled by a batch statistic); one sample alone has nothing to separate
            self._probe = torch.tensor(sorted({0, b - 1}) if b > 2 else [0], device=losses.device)
            self._rows = rows = self.projector.zeros(b)
            if verify:
                for s in self.slots:
                    size = _CHECK_WIDTH ** 2 if self._sketched_check(s) else s.numel
                    self._checks[s.index] = {key: [torch.zeros(size, dtype=torch.float64, device=rows.device), 0.0]
                                             for key in ("all", "probe")}
                if not self.shards:
                    self._collect = False
                    probe_batch = self._probe_batch(batch, b)
                    if probe_batch is None and b > 1:  # the probe's losses through the batch's graph: a backward
                        probe_grads = list(torch.autograd.grad(losses[self._probe].sum(),
                                                               [s.param for s in self.slots],
                                                               retain_graph=True, allow_unused=True))
            self._collect = True
            if self.shards:
                grads = sharded_group_pass(losses if real else losses * 0.0, self.all_params, self.slots)
            else:
                grads = group_pass(losses, self.slots)
            self._collect = self._active = False
            if verify and b == 1 and not self.shards:  # the probe is the whole batch
                probe_grads = list(grads)
            if probe_batch is not None:
                # the probe samples' own forward and backward (2/B of the batch's cost): in eval mode their losses
                # do not depend on the other samples, so the gradient of their sum is the reference
                probe_losses = run_loss(self.model, self.loss_fn, probe_batch, where + " (self-check)")
                probe_grads = list(torch.autograd.grad(probe_losses.sum(), [s.param for s in self.slots],
                                                       allow_unused=True))
        except BaseException:
            self.projector.nonzero |= nonzero_before
            raise
        finally:
            self._active = False
            self._collect = False
        try:
            return self._finish_run(batch, where, verify, losses, rows, grads, probe_grads)
        finally:
            self.projector.nonzero |= nonzero_before

    def _finish_run(self, batch: Any, where: str, verify: bool, losses: torch.Tensor, rows: torch.Tensor,
                    grads: List[Optional[torch.Tensor]], probe_grads: List[Optional[torch.Tensor]]):
        b = losses.shape[0]
        if self._error is not None:
            raise self._error
        if self._unbatched:
            return losses.detach(), rows, set(self._unbatched), []
        func_slots = [s for s in self.slots if self.source[s.index] == "func"]
        if func_slots:
            try:
                per_sample = self._func_grads(batch, func_slots)
            except Exception as exc:
                raise RuntimeError(
                    "torch.func could not compute per-sample gradients of " + ", ".join(s.name for s in func_slots)
                    + f" for {where}: {exc}. Parameters without a hook rule need a forward that torch.func can "
                    "vectorise; a forward that mutates state or couples the samples of a batch (batch norm in train "
                    "mode) has no per-sample gradient: use model.eval(), mode='group', or params= without them"
                ) from exc
            for s in func_slots:
                ps = per_sample["model." + s.name]
                if ps.shape[0] != b:
                    raise ValueError(f"torch.func produced {ps.shape[0]} per-sample gradients for {where}, "
                                     f"but loss_fn returned {b} losses")
                self._add_materialised(s, ps)
        self._rows = None
        failed: List[Slot] = []
        if verify and self.shards:
            failed = self._verify_sharded(grads)
        elif verify:
            for s, g, pg in zip(self.slots, grads, probe_grads):
                if not (self._matches(s, "all", g) and self._matches(s, "probe", pg)):
                    failed.append(s)
        if not self.shards:
            # a gradient path the hooks did not see at all (on any micro-batch, verified or not): autograd's batch
            # gradient of a parameter is nonzero, but nothing reached its per-sample sketch
            touched = self.projector.nonzero  # slots with a nonzero per-sample contribution in this micro-batch
            failed_ids = {s.index for s in failed}
            missed = [s for s, g in zip(self.slots, grads)
                      if g is not None and s.index not in touched and s.index not in failed_ids and bool(g.ne(0).any())]
            if missed and not verify:
                raise RuntimeError(
                    "per-sample gradients of " + ", ".join(s.name for s in missed) + f" ({where}) are zero, but "
                    "autograd's gradient of the batch is not: the loss reaches these parameters along a path that "
                    "the per-sample capture does not see; use mode='group' (or verify=True on a batch that takes "
                    "this path)")
            failed.extend(missed)
        return losses.detach(), rows, set(), failed

    def _verify_sharded(self, grads: Sequence[Optional[torch.Tensor]]) -> List[Slot]:
        """Sharded parameters: per parameter, the per-sample gradients summed over all ranks' samples must equal the
        (reduce-scattered) batch gradient. Both sums are compared through a 64-column sketch (each rank sketches its
        part at its offset; an all-reduce sums them), so nothing is gathered; a mismatch of relative size ε shows as
        ≈ ε in the sketch (Johnson-Lindenstrauss), and the tolerance allows a factor 2 for the projection."""
        import tikmix_ext

        width, seed = 64, (self.projector.seed + 0x5EED) % (1 << 63)
        slots = [s for s in self.slots if s.index in self._checks]
        per_sample = torch.zeros(len(slots), width, dtype=torch.float64)
        batch = torch.zeros(len(slots), width, dtype=torch.float64)
        norms = torch.zeros(len(slots), 2, dtype=torch.float64)  # Σ per-sample norms, ‖batch gradient‖²
        for i, s in enumerate(slots):
            total, bound = self._checks[s.index]["all"]
            per_sample[i] = tikmix_ext.sketch(total.view(1, -1).float().cpu(), width, seed, 0, None)[0].double()
            norms[i, 0] = bound
            g = grads[s.index]
            spec = self.shards.get(s.index)
            if g is not None and g.numel() > 0:
                offset, weight = (0, 1.0) if spec is None else (spec.flat_offset, 1.0 / spec.n_replicas)
                flat = g.reshape(1, -1).float().cpu()
                batch[i] = tikmix_ext.sketch(flat, width, seed, offset, None)[0].double() * weight
                norms[i, 1] = float(flat.double().pow(2).sum()) * weight
        dist_utils.all_reduce_sum_([per_sample, batch, norms])
        failed = []
        for i, s in enumerate(slots):
            diff = float((per_sample[i] - batch[i]).norm())
            rtol = max(1e-3, 8 * torch.finfo(s.param.dtype).eps, 8 * self._eps)
            if diff > 2 * rtol * (float(norms[i, 0]) + float(norms[i, 1]) ** 0.5) + 1e-30:
                failed.append(s)
        return failed

    def _matches(self, slot: Slot, key: str, grad: Optional[torch.Tensor]) -> bool:
        """Recorded per-sample gradients summed over ``key``'s samples equal autograd's, to the dtype's rounding."""
        total, norms = self._checks[slot.index][key]
        if grad is None:
            ref, ref_norm = torch.zeros_like(total), 0.0
        else:
            dense = grad.to_dense().to(torch.float64)
            ref, ref_norm = self._to_check_space(slot, dense), float(dense.norm())
        diff = float((total - ref).norm())
        rtol = max(1e-3, 8 * torch.finfo(slot.param.dtype).eps, 8 * self._eps)
        if self._sketched_check(slot):  # a JL estimate of the difference: allow a factor 2 for the projection
            rtol *= 2
        return diff <= rtol * (norms + ref_norm) + 1e-30


def iter_batches(iterable: Iterable[Any], name: str, kind: str):
    """Iterate ``iterable``, with a clear TypeError when it is not an iterable of batches."""
    if isinstance(iterable, torch.Tensor):
        raise TypeError(f"{kind}[{name!r}] must be an iterable of batches (a DataLoader, a list of tensors, ...), "
                        "got a single Tensor; wrap it in a list: [tensor]")
    try:
        return iter(iterable)
    except TypeError:
        raise TypeError(f"{kind}[{name!r}] must be an iterable of batches, got {type(iterable).__name__}") from None

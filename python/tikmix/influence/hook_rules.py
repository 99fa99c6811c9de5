"""The registry of per-sample hook rules: which modules' parameter gradients are captured from module hooks.

In per-sample mode (:class:`~tikmix.influence.capture.PerSampleCapture`) a parameter owned by a module with a hook
rule gets its per-sample gradients from that module's input ``x`` and output gradient ``g`` (one backward, nothing
per-sample materialised for 2-D weights); any other parameter goes through ``torch.func`` (one extra vectorised
forward/backward). A rule is one of four *kinds*:

==============  =============================================  ==============================================
kind            per-sample weight gradient                     bias gradient
==============  =============================================  ==============================================
``linear``      ``Σ_t g_t x_tᵀ`` (weight ``[out, in]``)        ``Σ_t g_t``
``linear_t``    ``Σ_t x_t g_tᵀ`` (weight ``[in, out]``)        ``Σ_t g_t``
``embedding``   ``Σ_t e_{x_t} g_tᵀ`` (``x`` = token ids)        --
``norm``        ``Σ_t g_t ⊙ x̂_t``, ``x̂ = normalize(module, x)`` ``Σ_t g_t``
==============  =============================================  ==============================================

``linear``/``linear_t``/``embedding`` weights are *factorable*: they get a Kronecker block of the sketch
(:mod:`.sketch_space`), also when tied (one parameter registered as the weight of an embedding and of an output
head); a ``norm`` weight is materialised per sample ``[B, d]`` and sketched in the dense block.

Built-in rules (each matches only a module running the stock ``forward`` of its class, so a subclass that overrides
``forward`` falls back to ``torch.func``):

* ``linear``: :class:`torch.nn.Linear`;  ``embedding``: :class:`torch.nn.Embedding` (not ``scale_grad_by_freq``);
* ``layer_norm``: :class:`torch.nn.LayerNorm`;  ``rms_norm``: :class:`torch.nn.RMSNorm`;
* ``conv1d``: Hugging Face's GPT-2 ``transformers.pytorch_utils.Conv1D`` (a linear layer with a ``[in, out]``
  weight);
* ``hf_rms_norm``: the Llama-style RMSNorm that Hugging Face ``transformers`` copies into most decoder models
  (``LlamaRMSNorm``, ``Qwen2RMSNorm``, ``MistralRMSNorm``, ...): a module named ``*RMSNorm`` with a 1-D ``weight``,
  a ``variance_epsilon`` and a ``forward`` whose code is Llama's (``x̂ = x·rsqrt(mean(x²) + eps)`` in float32, cast
  back, times ``weight``). Matching the code, not the class name, keeps variants with another formula (Gemma's
  ``1 + weight``) off this rule.

:func:`register_hook_rule` adds a rule for your own module class. Rules are not trusted blindly: the first
micro-batch of every per-sample computation is verified against autograd, and a parameter whose hook-captured
gradients disagree moves to ``torch.func`` with a warning. :attr:`InfluenceResult.layout["parameter_paths"]
<tikmix.InfluenceResult>` says which path every parameter took (:func:`parameter_paths`).
"""
from __future__ import annotations

import inspect
import textwrap
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HookRule", "KINDS", "hook_rule", "is_factorable", "register_hook_rule", "parameter_paths"]

KINDS = ("linear", "linear_t", "embedding", "norm")
_FACTORABLE_KINDS = ("linear", "linear_t", "embedding")


@dataclass(frozen=True)
class HookRule:
    """How a module's parameter gradients are formed per sample from its input and output gradient.

    Attributes:
        name: the rule's name, reported in the influence result.
        kind: ``"linear"``, ``"linear_t"``, ``"embedding"`` or ``"norm"`` (the table in the module docstring).
        normalize: ``norm`` only: ``normalize(module, x) -> x̂`` with ``output = weight ⊙ x̂ (+ bias)``.
    """

    name: str
    kind: str
    normalize: Optional[Callable[[nn.Module, torch.Tensor], torch.Tensor]] = None


def _layer_norm_hat(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, module.normalized_shape, None, None, module.eps)


def _rms_norm_hat(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, module.normalized_shape, None, module.eps)


def _hf_rms_norm_hat(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
    return h.to(x.dtype)


_LINEAR = HookRule("linear", "linear")
_EMBEDDING = HookRule("embedding", "embedding")
_LAYER_NORM = HookRule("layer_norm", "norm", _layer_norm_hat)
_RMS_NORM = HookRule("rms_norm", "norm", _rms_norm_hat)
_CONV1D = HookRule("conv1d", "linear_t")
_HF_RMS_NORM = HookRule("hf_rms_norm", "norm", _hf_rms_norm_hat)

# The body of transformers' LlamaRMSNorm.forward (and its many copies), whitespace-normalised.
_HF_RMS_FORWARDS = (
    "input_dtype = hidden_states.dtype\n"
    "hidden_states = hidden_states.to(torch.float32)\n"
    "variance = hidden_states.pow(2).mean(-1, keepdim=True)\n"
    "hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)\n"
    "return self.weight * hidden_states.to(input_dtype)",
)

_lock = threading.Lock()
_user_rules: Dict[type, HookRule] = {}
_class_cache: Dict[type, Optional[HookRule]] = {}


def register_hook_rule(cls: Type[nn.Module], kind: str, *, name: Optional[str] = None,
                       normalize: Optional[Callable[[nn.Module, torch.Tensor], torch.Tensor]] = None) -> HookRule:
    """Capture per-sample gradients of ``cls`` modules (exactly this class, not subclasses) from hooks.

    ``kind`` and ``normalize`` as in :class:`HookRule`; the module must register its parameters as ``weight`` (and
    optionally ``bias``) and its ``forward`` must take the sample-major input ``x`` as the first argument and
    compute what the kind's formula assumes. Returns the registered rule.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"cls must be an nn.Module subclass, got {cls!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if (kind == "norm") != (normalize is not None):
        raise ValueError("normalize must be given for kind='norm' and only then")
    rule = HookRule(name or cls.__name__, kind, normalize)
    with _lock:
        _user_rules[cls] = rule
        _class_cache.clear()
    return rule


def _normalised_body(fn: Callable) -> Optional[str]:
    try:
        src = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return None
    lines = [ln.strip() for ln in src.splitlines()]
    start = next((i for i, ln in enumerate(lines) if ln.startswith("def ")), None)
    if start is None:
        return None
    body = [ln for ln in lines[start + 1 :] if ln and not ln.startswith("#")]
    return "\n".join(body)


def _class_rule(cls: type) -> Optional[HookRule]:
    if cls in _user_rules:
        return _user_rules[cls]
    for base, rule in ((nn.Linear, _LINEAR), (nn.Embedding, _EMBEDDING), (nn.LayerNorm, _LAYER_NORM),
                       (getattr(nn, "RMSNorm", None), _RMS_NORM)):
        if base is not None and issubclass(cls, base):
            return rule if cls.forward is base.forward else None
    if cls.__name__ == "Conv1D" and cls.__module__ == "transformers.pytorch_utils":
        return _CONV1D
    if cls.__name__.endswith("RMSNorm") and cls.__module__.startswith("transformers."):
        if _normalised_body(cls.forward) in _HF_RMS_FORWARDS:
            return _HF_RMS_NORM
    return None


def hook_rule(module: nn.Module) -> Optional[HookRule]:
    """The :class:`HookRule` for ``module``, or None (its parameters then go through ``torch.func``)."""
    cls = type(module)
    with _lock:
        if cls in _class_cache:
            rule = _class_cache[cls]
        else:
            rule = _class_cache[cls] = _class_rule(cls)
    if rule is None:
        return None
    # Per-instance conditions under which the class rule's formula does not hold.
    if rule is _EMBEDDING and module.scale_grad_by_freq:
        return None
    if rule is _HF_RMS_NORM and (getattr(module, "weight", None) is None or module.weight.dim() != 1
                                 or not hasattr(module, "variance_epsilon")):
        return None
    if rule is _CONV1D and getattr(module, "weight", None) is not None and module.weight.dim() != 2:
        return None
    return rule


def is_factorable(param: nn.Parameter, owners: List[Tuple[nn.Module, str]]) -> bool:
    """True when ``param`` is 2-D and registered only as the ``weight`` of modules whose rules factor it
    consistently: ``linear``/``embedding`` owners (tied embeddings included) or ``linear_t`` owners only."""
    if param.dim() != 2 or not owners:
        return False
    kinds = set()
    for module, attr in owners:
        rule = hook_rule(module)
        if attr != "weight" or rule is None or rule.kind not in _FACTORABLE_KINDS:
            return False
        kinds.add(rule.kind)
    return kinds <= {"linear", "embedding"} or kinds == {"linear_t"}


def parameter_paths(slots, owners: Dict[int, List[Tuple[nn.Module, str]]],
                    sources: Optional[Dict[int, str]]) -> Dict[str, str]:
    """Parameter name -> how its gradient reached the sketch, for :attr:`InfluenceResult.layout`.

    ``"<block> <- <capture>"`` with block ``kronecker`` / ``dense`` / ``exact`` (the sketch-space block) and capture
    ``hook rule '<name>'`` or ``torch.func`` in per-sample mode (``sources`` from the capture), ``autograd`` in group
    mode (``sources`` None).
    """
    block_names = {"kron": "kronecker", "dense": "dense", "flat": "exact"}
    out: Dict[str, str] = {}
    for s in slots:
        block = block_names.get(s.kind, s.kind)
        if sources is None:
            how = "autograd"
        elif sources.get(s.index) == "hooks":
            rules = sorted({hook_rule(m).name for m, _ in owners.get(id(s.param), []) if hook_rule(m) is not None})
            how = "hook rule " + "+".join(repr(r) for r in rules)
        else:
            how = "torch.func"
        out[s.name] = f"{block} <- {how}"
    return out

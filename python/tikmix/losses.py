"""Per-sequence losses in the ``loss_fn(model, batch) -> Tensor[B]`` protocol of :class:`tikmix.GroupInfluence`.

:func:`causal_lm_loss` covers causal language models fed Hugging Face style dict batches (``input_ids``,
``attention_mask``, ``labels`` with ``-100`` for ignored positions): any module whose output is a ``[B, T, V]``
logits tensor or has a ``.logits`` attribute (``transformers`` ``*ForCausalLM`` models). Nothing here imports
``transformers``.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IGNORE_INDEX", "causal_lm_loss", "logits_of"]

IGNORE_INDEX = -100  # the label value Hugging Face losses (and torch's cross_entropy default) skip


def logits_of(output: Any, where: str = "the model's output") -> torch.Tensor:
    """The ``[B, T, V]`` logits in a model output: the tensor itself, ``output.logits`` or ``output["logits"]``."""
    logits = output
    if not isinstance(logits, torch.Tensor):
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, Mapping):
            logits = output.get("logits")
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{where} has no logits: expected a [B, T, V] tensor or an object with .logits "
                        f"(a causal LM), got {type(output).__name__}")
    if logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"{where}: expected floating-point logits of shape [B, T, V] (a causal LM), got "
                         f"{logits.dtype} {tuple(logits.shape)}")
    return logits


def _is_concrete(t: torch.Tensor) -> bool:
    """False inside ``torch.func`` transforms (vmap/grad), where reading values for a Python check is impossible."""
    return not torch._C._functorch.is_functorch_wrapped_tensor(t)


def _takes_position_ids(model: nn.Module) -> bool:
    """True when ``model.forward`` accepts a ``position_ids`` keyword (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "position_ids" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def causal_lm_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy of every sequence in a dict batch: ``Tensor[B]`` (float32).

    ``batch``: ``input_ids`` ``[B, T]`` (required); ``attention_mask`` ``[B, T]`` (optional, passed to the model);
    ``labels`` ``[B, T]`` (optional; positions equal to ``-100`` are ignored; default: ``input_ids`` with padding,
    ``attention_mask == 0``, ignored). Other keys (``position_ids``, ...) are passed to the model, ``labels`` never
    is (the model's own loss is not needed). Labels are shifted as in ``transformers``: position ``t``'s logits
    predict ``labels[t + 1]``.

    Padding: with an ``attention_mask``, positions ``mask.cumsum(1) - 1`` are passed as ``position_ids`` (unless
    the batch has its own, or the model's ``forward`` takes none), and a label predicted from a padding position
    (``attention_mask[t] == 0``) is not counted. So a left-padded row has the loss — and the gradient, hence the
    influence — of the same row right-padded, and the width a row is padded to changes nothing. A left-padded
    batch for a model whose ``forward`` takes no ``position_ids`` is refused (ValueError), since its positions
    would count the padding.

    The loss of sequence ``b`` is the mean over its ``n_b`` counted tokens, so for right-padded (or unpadded)
    batches the token-weighted mean ``Σ_b n_b·loss_b / Σ_b n_b`` equals the batch loss a ``transformers`` causal LM
    computes from the same batch (logits upcast to float32, as there); on a left-padded row ``transformers`` also
    counts the first real token, predicted from padding. A sequence with no counted token has no defined loss:
    ValueError.
    """
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        got = sorted(map(str, batch)) if isinstance(batch, Mapping) else type(batch).__name__
        raise TypeError(f"causal_lm_loss needs a dict batch with 'input_ids' (and optional 'attention_mask', "
                        f"'labels'), got {got}")
    input_ids = batch["input_ids"]
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"batch['input_ids'] must be a [B, T] tensor, got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)}")
    labels = batch.get("labels")
    if labels is None:
        labels = input_ids
        mask = batch.get("attention_mask")
        if mask is not None:
            labels = labels.masked_fill(mask == 0, IGNORE_INDEX)
    elif labels.shape != input_ids.shape:
        raise ValueError(f"batch['labels'] has shape {tuple(labels.shape)}, batch['input_ids'] {tuple(input_ids.shape)}")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    mask = batch.get("attention_mask")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.shape != input_ids.shape:
            raise ValueError(f"batch['attention_mask'] must be a tensor of the shape of input_ids "
                             f"{tuple(input_ids.shape)}, got "
                             f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
        if "position_ids" not in inputs:
            if _takes_position_ids(model):
                # positions count real tokens only, so a left-padded row sees the positions of its right-padded twin
                inputs["position_ids"] = (mask.long().cumsum(1) - 1).clamp_min(0)
            elif _is_concrete(mask) and bool((mask[:, :1] == 0).any() & (mask != 0).any()):
                raise ValueError(
                    "causal_lm_loss: the batch has left-padded rows (attention_mask starts with 0), and the model's "
                    "forward takes no position_ids, so its positions would count the padding; pad on the right "
                    "(tokenizer.padding_side = 'right') or pass batch['position_ids']")
    logits = logits_of(model(**inputs), "causal_lm_loss: the model's output")
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(f"causal_lm_loss: logits of shape {tuple(logits.shape)} do not match input_ids "
                         f"{tuple(input_ids.shape)} (expected [B, T, V])")
    b, t, v = logits.shape
    target = labels[:, 1:]
    if mask is not None:
        # a token predicted from a padding position (the first real token of a left-padded row) is not counted:
        # its right-padded twin has no such prediction either
        target = target.masked_fill(mask[:, :-1] == 0, IGNORE_INDEX)
    token_loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, v), target.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="none").view(b, t - 1)
    counted = (target != IGNORE_INDEX).sum(1)
    if _is_concrete(counted) and bool((counted == 0).any()):
        i = int((counted == 0).nonzero()[0, 0])
        raise ValueError(f"causal_lm_loss: sequence {i} of the batch has no token to predict (all labels after the "
                         "first position are -100 or padding), so it has no per-sequence loss; drop it")
    return token_loss.sum(1) / counted.clamp_min(1).to(token_loss.dtype)

"""The model ``tikmix run`` trains and its per-sequence loss: the built-in GPT (tikmix.models), a Hugging Face causal LM, or a factory.

* built-in (default): :class:`tikmix.models.GPT` sized by the ``model`` section; loss
  :func:`tikmix.models.sequence_loss`.
* ``model.hf``: ``AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))`` or
  ``from_pretrained(path, local_files_only=True)``; loss :func:`tikmix.losses.causal_lm_loss` on the token rows.
* ``model.factory: "pkg.module:fn"``: ``fn(vocab_size=V, seq_len=T)`` returns ``(model, loss_fn)`` with
  ``loss_fn(model, rows[B, T+1]) -> Tensor[B]``. The function is code the config's author wrote; it is imported by
  name from the Python path, never from a checkpoint.

Training batches are token rows ``[B, seq_len + 1]`` (inputs and the shifted next tokens). :func:`check_model`
runs the loss once on a real batch before training, so a model whose loss cannot be made per-sequence is refused
with a :class:`ConfigError` naming the ``model`` key.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any

import torch

from .schema import ConfigError, RunConfig

__all__ = ["build_model", "check_model", "rows_causal_lm_loss", "import_callable"]

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]


def rows_causal_lm_loss(model: torch.nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """:func:`tikmix.losses.causal_lm_loss` of token rows ``[B, T+1]`` (every position counted): ``Tensor[B]``."""
    from tikmix.losses import causal_lm_loss

    return causal_lm_loss(model, {"input_ids": rows})


def _key(cfg: RunConfig) -> str:
    return f"model.{cfg.model.kind}" if cfg.model.kind != "builtin" else "model"


def build_model(cfg: RunConfig, vocab: int, device: torch.device) -> tuple[torch.nn.Module, LossFn]:
    """A freshly initialised model (seeded by the caller) on ``device`` and its per-sequence loss.

    Initialised on the CPU and moved, so a seed gives the same weights on every device. On the ``meta`` device
    (shapes only, for the checks before training) the built-in GPT (tikmix.models) and ``model.hf.config`` are built there directly.
    """
    kind = cfg.model.kind
    on_meta = torch.device("meta") if device.type == "meta" else contextlib.nullcontext()
    if kind == "builtin":
        from tikmix.models import GPT, GPTConfig, sequence_loss

        m = cfg.model
        with on_meta:
            model = GPT(GPTConfig(vocab_size=vocab, seq_len=cfg.data.seq_len, n_layer=m.n_layer, n_head=m.n_head,
                                  d_model=m.d_model, dropout=float(m.dropout)))
        return model.to(device), sequence_loss
    if kind == "hf":
        with on_meta:
            model = _hf_model(cfg, vocab)
        return model.to(device), rows_causal_lm_loss
    return _factory_model(cfg, vocab, device)


def _hf_model(cfg: RunConfig, vocab: int) -> torch.nn.Module:
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        raise ConfigError("model.hf", "needs transformers: pip install 'tikmix[hf]'") from None
    spec = cfg.model.hf
    assert spec is not None
    try:
        if spec.config is not None:
            raw = dict(spec.config)
            hf_cfg = AutoConfig.for_model(raw.pop("model_type"), **raw)
            model = AutoModelForCausalLM.from_config(hf_cfg)
            key = "model.hf.config"
        else:
            model = AutoModelForCausalLM.from_pretrained(spec.path, local_files_only=True)
            key = "model.hf.path"
    except (ValueError, KeyError, OSError, TypeError) as exc:
        raise ConfigError("model.hf", f"transformers could not build the model: {exc}") from None
    n_vocab = model.get_input_embeddings().num_embeddings
    if n_vocab < vocab:
        raise ConfigError(f"{key}.vocab_size" if spec.config is not None else key,
                          f"the model's vocabulary ({n_vocab}) is smaller than the data's ({vocab} token ids)")
    n_pos = getattr(model.config, "max_position_embeddings", None)
    if n_pos is not None and n_pos < cfg.data.seq_len + 1:
        raise ConfigError(f"{key}.max_position_embeddings" if spec.config is not None else key,
                          f"{n_pos} positions, but rows hold data.seq_len + 1 = {cfg.data.seq_len + 1} tokens")
    return model


def import_callable(target: str, key: str) -> Callable[..., Any]:
    """The function named by ``"package.module:function"`` (the config's own code; never from a checkpoint)."""
    module_name, _, fn_name = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(key, f"cannot import {target!r}: {exc}") from None
    if not callable(fn):
        raise ConfigError(key, f"{target!r} is not callable")
    return fn


def _factory_model(cfg: RunConfig, vocab: int, device: torch.device) -> tuple[torch.nn.Module, LossFn]:
    target = cfg.model.factory
    assert target is not None
    fn = import_callable(target, "model.factory")
    out = fn(vocab_size=vocab, seq_len=cfg.data.seq_len)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.nn.Module) and callable(out[1])):
        raise ConfigError("model.factory", f"{target} must return (model: torch.nn.Module, loss_fn), got "
                                           f"{type(out).__name__}")
    return out[0].to(device), out[1]


def check_model(cfg: RunConfig, model: torch.nn.Module, loss_fn: LossFn, rows: torch.Tensor) -> None:
    """Run ``loss_fn`` once on ``rows`` (two training rows) and check the per-sequence protocol: ConfigError if not."""
    from tikmix.influence.capture import run_loss

    was = model.training
    model.eval()
    try:
        run_loss(model, loss_fn, rows, "a batch of two training rows")
    except Exception as exc:
        raise ConfigError(_key(cfg), f"its loss cannot be used per sequence: {exc}") from None
    finally:
        model.train(was)
        model.zero_grad(set_to_none=True)

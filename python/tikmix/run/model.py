"""The model ``tikmix run`` trains: the demo GPT sized by the ``model`` section."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .config import RunConfig

__all__ = ["vocab_size", "build_model"]


def vocab_size(cfg: RunConfig, datasets: Iterable[Any]) -> int:
    """``data.vocab_size``, else the largest vocab size in the token-file headers (at least 256)."""
    if cfg.data.vocab_size is not None:
        return cfg.data.vocab_size
    return max([getattr(ds, "vocab_size", None) or 0 for ds in datasets] + [256])


def build_model(cfg: RunConfig, vocab: int, device: torch.device) -> torch.nn.Module:
    """A freshly initialised GPT (seeded by the caller) on ``device``."""
    from tikmix.demo.model import GPT, GPTConfig

    m = cfg.model
    return GPT(GPTConfig(vocab_size=vocab, seq_len=cfg.data.seq_len, n_layer=m.n_layer, n_head=m.n_head,
                         d_model=m.d_model, dropout=float(m.dropout))).to(device)

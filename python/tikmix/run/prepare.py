"""A ``tikmix run`` config made ready to train: tokenizer loaded, sources opened, vocabulary known, targets split.

:func:`prepare` does this once; :func:`tikmix.run.train` accepts its :class:`PreparedRun` (or a :class:`RunConfig`,
which it prepares itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from .config import RunConfig

__all__ = ["PreparedRun", "prepare"]


@dataclass
class PreparedRun:
    """Everything :func:`tikmix.run.train` needs from the config's data.

    Attributes:
        config: the validated config.
        tokenizer: the run's tokenizer (used for text sources), or None.
        vocab_size: the model's vocabulary size (covers every token id of every source).
        domains: domain name -> dataset of LongTensor rows ``[seq_len + 1]``, in config order.
        dev: target name -> LongTensor rows ``[n, seq_len + 1]`` the influence is measured on.
        test: target name -> LongTensor rows ``[n, seq_len + 1]`` the reported loss is evaluated on.
    """

    config: RunConfig
    tokenizer: Any | None
    vocab_size: int
    domains: dict[str, Dataset]
    dev: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]


def prepare(cfg: RunConfig, *, rank: int = 0, log: Callable[..., Any] = print) -> PreparedRun:
    """Load the tokenizer, open every source (rank 0 tokenises text sources into ``<out>/data``), find the
    vocabulary size and split each target into dev and test rows; ``log`` receives warnings (e.g. a target given
    as one source)."""
    from tikmix.data.tokenizers import load_tokenizer

    from .preflight import check_data
    from .sources import open_sources, split_targets

    if not isinstance(cfg, RunConfig):
        raise TypeError(f"cfg must be a RunConfig (tikmix.run.load_config), got {type(cfg).__name__}")
    tokenizer = load_tokenizer(cfg.tokenizer)
    domains = open_sources(cfg, "domains", rank, tokenizer)
    targets = open_sources(cfg, "targets", rank, tokenizer)
    vocab = check_data(cfg, tokenizer)
    dev, test = split_targets(cfg, targets, warn=log)
    return PreparedRun(config=cfg, tokenizer=tokenizer, vocab_size=int(vocab), domains=domains, dev=dev, test=test)

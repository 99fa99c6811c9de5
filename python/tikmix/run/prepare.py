"""A validated config made ready to train: :func:`prepare` reads the data once and checks it on the way.

``load_config`` (no data read) then ``prepare`` is the whole of ``tikmix run`` up to building the model: the
tokenizer is loaded once, each source file is opened once (a text source is read once, when it is tokenised into
``<out>/data``; a token file is opened once, and its vocabulary read from that opening), and everything that needs
the data is checked before anything is written: the vocabulary covers every token id, and the influence options fit
the model (built on the ``meta`` device).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from tikmix._distributed import check_same_on_all_ranks

from .preflight import check_influence, check_vocab, load_run_tokenizer
from .schema import ConfigError, RunConfig, TokenFileSource
from .sources import SourceEntry, cap_rows, config_sources, needed_vocab, open_token_file, split_targets, tokenize_source

__all__ = ["PreparedRun", "prepare"]


@dataclass
class PreparedRun:
    """What a run trains on, read once from a :class:`RunConfig`.

    Attributes:
        config: the config it was prepared from.
        tokenizer: the run's tokenizer (:func:`tikmix.data.load_tokenizer`), or None when no source needs one and
            the config names none.
        vocab_size: the model's vocabulary size (``data.vocab_size``, or what the data needs, at least 256).
        domains: domain name -> dataset of LongTensor rows ``[seq_len + 1]`` (at most ``max_sequences``), in config
            order.
        dev: target name -> LongTensor ``[rows, seq_len + 1]`` on which influence is measured.
        test: target name -> LongTensor ``[rows, seq_len + 1]`` on which the loss is reported.
    """

    config: RunConfig
    tokenizer: Any | None
    vocab_size: int
    domains: dict[str, Dataset]
    dev: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]


def prepare(cfg: RunConfig, *, rank: int = 0, log: Callable[..., Any] = print) -> PreparedRun:
    """Open the data of ``cfg`` once, check it, and return it ready to train on.

    Args:
        cfg: a config from :func:`tikmix.run.load_config` (or :func:`~tikmix.run.parse_config`).
        rank: this process's rank; rank 0 tokenises text sources, the others wait for it.
        log: where warnings for the user go (rank 0 only), e.g. a target split by position.

    Under a process group the ranks first check that they were given the same config (every key but ``out`` and
    the eval/checkpoint cadence) and refuse to start otherwise. Raises :class:`ConfigError` naming the key of
    whatever does not fit: the tokenizer file, a source that does not open, ``data.vocab_size``, an influence
    option, dev and test rows that overlap.
    """
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"cfg must be a RunConfig (from tikmix.run.load_config), got {type(cfg).__name__}")
    check_same_on_all_ranks(cfg.comparable(), "run config")
    entries = config_sources(cfg)
    text = [e for e in entries if not isinstance(e.src, TokenFileSource)]
    tokenizer = load_run_tokenizer(cfg) if text or cfg.tokenizer != "bytes" else None

    # Token files are opened here, once; text sources need the tokenizer's vocabulary and are read when tokenised,
    # after every check, so a config error leaves nothing behind.
    opened: dict[str, Any] = {}
    needs: dict[str, int] = {}
    for e in entries:
        if isinstance(e.src, TokenFileSource):
            opened[e.key] = open_token_file(cfg, e.key, e.src.token_file, e.src.dtype)
            needs[e.key] = needed_vocab(opened[e.key], cfg.data.vocab_size)
        else:
            needs[e.key] = int(tokenizer.vocab_size)
    vocab = check_vocab(cfg, needs)
    check_influence(cfg, vocab)
    for e in text:
        opened[e.key] = open_token_file(cfg, e.key, tokenize_source(cfg, e, tokenizer, rank))

    domains: dict[str, Dataset] = {}
    targets: dict[str, Any] = {}
    for e in entries:
        ds = opened[e.key]
        if e.section == "domains":
            domains[e.name] = _capped(ds, e)
        elif e.part is None:
            targets[e.name] = ds
        else:
            targets[e.name] = (*targets.get(e.name, ()), ds)
    say = log if rank == 0 else None
    dev, test = split_targets(cfg, targets, warn=say)
    return PreparedRun(config=cfg, tokenizer=tokenizer, vocab_size=vocab, domains=domains, dev=dev, test=test)


def _capped(ds: Any, entry: SourceEntry) -> Dataset:
    n = cap_rows(ds, entry.src)
    if n == 0:  # pragma: no cover - TokenFileDataset refuses files without one row
        raise ConfigError(entry.key, "holds no sequence")
    return ds if n == len(ds) else Subset(ds, range(n))

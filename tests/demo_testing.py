"""Shared helper of the ``tikmix run`` / ``tikmix compare`` tests: the demo corpus written as token files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tikmix.data import write_token_file
from tikmix.demo.corpus import build_corpus

DEMO_DOMAINS = ("arith", "facts", "noise")


def write_demo_domains(root: Path, *, seq_len: int, train_sequences: int):
    """Build the demo corpus (seed 0, 8 dev and 8 test sequences per target) and write its three training domains
    to ``root/<name>.tokens``; return the corpus."""
    corpus = build_corpus(0, seq_len=seq_len, train_sequences=train_sequences, dev_sequences=8, test_sequences=8)
    for name in DEMO_DOMAINS:
        write_token_file(root / f"{name}.tokens", corpus.domains[name].reshape(-1), vocab_size=256)
    return corpus


def write_demo_run_data(root: Path, *, seq_len: int, train_sequences: int):
    """:func:`write_demo_domains` plus the ``lookup`` target: its dev and test splits as ``root/dev.tokens`` and
    ``root/test.tokens``, and both in one source as ``root/lookup.tokens``; return the corpus."""
    corpus = write_demo_domains(root, seq_len=seq_len, train_sequences=train_sequences)
    write_token_file(root / "dev.tokens", corpus.target_dev["lookup"].reshape(-1), vocab_size=256)
    write_token_file(root / "test.tokens", corpus.target_test["lookup"].reshape(-1), vocab_size=256)
    write_token_file(root / "lookup.tokens", lookup_dev_and_test(corpus), vocab_size=256)
    return corpus


def lookup_dev_and_test(corpus) -> np.ndarray:
    """The ``lookup`` target's dev tokens followed by its test tokens (one source holding both splits)."""
    return np.concatenate([corpus.target_dev["lookup"].reshape(-1), corpus.target_test["lookup"].reshape(-1)])

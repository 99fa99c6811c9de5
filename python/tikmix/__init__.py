"""tikmix — influence-driven dynamic data mixtures for LLM pre-training (TiKMiX, arXiv 2508.17677).

Public API (everything else is internal):

* influence: :class:`GroupInfluence`, :class:`InfluenceResult` (the sign convention lives in its docstring),
  :func:`kendall_tau`, :func:`rank_stability`
* solvers: :func:`solve_direct` (TiKMiX-D), :func:`solve_tikmix_m` (TiKMiX-M from S and per-unit influence),
  :func:`solve_regression` (its surrogate search), :func:`mixture_score_fn`; :class:`Decision` (how a measured S
  becomes the solver's input)
* data: :class:`MixtureSampler`, :class:`MixtureIterableDataset`, :class:`TokenFileDataset`, tokenizers
  (:func:`load_tokenizer`) and the text -> token-file path (:func:`tokenize_to_token_file`)
* training glue: :class:`Controller`; optional framework integrations in :mod:`tikmix.integrations`
  (``transformers.Trainer``, Lightning) and the causal-LM loss :func:`tikmix.losses.causal_lm_loss`

The native ops are ``torch.ops.tikmix.*`` with typed wrappers in :mod:`tikmix_ext`.
"""
from __future__ import annotations

import tikmix_ext  # noqa: F401  (loads the native library, which registers torch.ops.tikmix.*)

from .data import (
    ByteTokenizer,
    DomainConcatDataset,
    MixtureIterableDataset,
    MixtureSampler,
    RealisedCounts,
    TokenFileDataset,
    TokenFileWriter,
    TokenizerSpecError,
    build_domain_token_files,
    build_token_file_from_texts,
    concat_domains,
    load_tokenizer,
    tokenize_to_token_file,
    write_token_file,
)
from .influence import GroupInfluence, InfluenceResult, RankAgreement, kendall_tau, rank_stability
from .solvers import (
    InfeasibleConstraintsError,
    MixtureResult,
    mixture_score_fn,
    solve_direct,
    solve_regression,
    solve_tikmix_m,
)
from .decision import Decision
from .controller import Controller
from .formats import VERSION

__version__ = VERSION

__all__ = [
    "Controller",
    "Decision",
    "GroupInfluence",
    "InfeasibleConstraintsError",
    "InfluenceResult",
    "MixtureResult",
    "RankAgreement",
    "kendall_tau",
    "mixture_score_fn",
    "rank_stability",
    "solve_direct",
    "solve_regression",
    "solve_tikmix_m",
    "ByteTokenizer",
    "DomainConcatDataset",
    "MixtureIterableDataset",
    "MixtureSampler",
    "RealisedCounts",
    "TokenFileDataset",
    "TokenFileWriter",
    "TokenizerSpecError",
    "build_domain_token_files",
    "build_token_file_from_texts",
    "concat_domains",
    "load_tokenizer",
    "tokenize_to_token_file",
    "write_token_file",
]

"""Data: the mixture sampler, its iterable counterpart, token files and a byte-level text pipeline.

* :class:`MixtureSampler` -- sampler over per-domain map-style datasets (with :func:`concat_domains`);
  the global stream is a pure function of (seed, schedule, position), so it reweights live and resumes
  exactly on any world size.
* :class:`MixtureIterableDataset` -- the same stream over per-domain iterables, DataLoader-worker aware.
* :class:`TokenFileDataset` / :class:`TokenFileWriter` -- memmapped flat token files in fixed-length chunks.
* :func:`load_tokenizer` -- a tokenizer from a local file (or ``"bytes"``: :class:`ByteTokenizer`), all with one
  protocol (``name``, ``fingerprint``, ``vocab_size``, ``eos_id``, ``encode_batch``).
* :func:`tokenize_to_token_file` -- the one text -> tokens path: jsonl, parquet, text files and folders, streamed
  into a token file; :func:`build_token_file_from_texts` and :func:`build_domain_token_files` are its byte-level
  shortcuts for folders of text files.
"""
from __future__ import annotations

from ._base import RealisedCounts
from ._stream import Stage
from .iterable import MixtureIterableDataset
from .sampler import DomainConcatDataset, MixtureSampler, concat_domains, locate_index
from .text import ByteTokenizer, build_domain_token_files, build_token_file_from_texts
from .text_sources import iter_texts, tokenize_to_token_file
from .tokenizers import TokenizerSpecError, load_tokenizer
from .token_file import TokenFileDataset, TokenFileWriter, read_token_file_header, write_token_file

__all__ = [
    "MixtureSampler",
    "MixtureIterableDataset",
    "DomainConcatDataset",
    "concat_domains",
    "locate_index",
    "RealisedCounts",
    "Stage",
    "TokenFileDataset",
    "TokenFileWriter",
    "write_token_file",
    "read_token_file_header",
    "load_tokenizer",
    "TokenizerSpecError",
    "tokenize_to_token_file",
    "iter_texts",
    "ByteTokenizer",
    "build_token_file_from_texts",
    "build_domain_token_files",
]

"""Data: the mixture sampler, its iterable counterpart, token files and a byte-level text pipeline.

* :class:`MixtureSampler` -- sampler over per-domain map-style datasets (with :func:`concat_domains`);
  the global stream is a pure function of (seed, schedule, position), so it reweights live and resumes
  exactly on any world size.
* :class:`MixtureIterableDataset` -- the same stream over per-domain iterables, DataLoader-worker aware.
* :class:`TokenFileDataset` / :class:`TokenFileWriter` -- memmapped flat token files in fixed-length chunks.
* :class:`ByteTokenizer`, :func:`build_token_file_from_texts`, :func:`build_domain_token_files` -- text
  folders to token files.
"""
from __future__ import annotations

from ._base import RealisedCounts
from ._stream import Stage
from .iterable import MixtureIterableDataset
from .sampler import DomainConcatDataset, MixtureSampler, concat_domains, locate_index
from .text import ByteTokenizer, build_domain_token_files, build_token_file_from_texts
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
    "ByteTokenizer",
    "build_token_file_from_texts",
    "build_domain_token_files",
]

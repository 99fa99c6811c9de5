"""The byte-level tokenizer, and builders from folders of text files to token files through the one text -> tokens
path (:func:`tikmix.data.tokenize_to_token_file`).

Token ids are the file's raw bytes (0-255) plus an optional end-of-document id 256, so any file (any
encoding) round-trips exactly and no vocabulary has to be trained or downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .text_sources import list_text_files, tokenize_to_token_file

__all__ = ["ByteTokenizer", "build_token_file_from_texts", "build_domain_token_files"]


class ByteTokenizer:
    """Bytes 0-255 are tokens 0-255; ``eos_id`` = 256 ends a document (when ``add_eos``).

    ``vocab_size`` is 257 (ids up to 256 may appear in files written with an EOS) or 256 without EOS. It follows the
    tokenizer protocol of :func:`tikmix.data.load_tokenizer` (``name``, ``fingerprint``, ``vocab_size``, ``eos_id``,
    ``encode_batch``); ``load_tokenizer("bytes")`` is ``ByteTokenizer(add_eos=True)``.
    """

    EOS_ID = 256
    name = "bytes"

    def __init__(self, add_eos: bool = True) -> None:
        if not isinstance(add_eos, bool):
            raise TypeError(f"add_eos must be a bool, got {type(add_eos).__name__}")
        self.add_eos = add_eos

    @property
    def eos_id(self) -> int | None:
        return self.EOS_ID if self.add_eos else None

    @property
    def vocab_size(self) -> int:
        return 257 if self.add_eos else 256

    @property
    def fingerprint(self) -> str:
        """Names the token files built with it (``<out>/data`` caches of ``tikmix run``)."""
        return "bytes" if self.add_eos else "bytes-noeos"

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        """Token ids of each text (:meth:`encode`)."""
        return [self.encode(t) for t in texts]

    def encode(self, text: str | bytes | bytearray | memoryview, *, add_eos: bool | None = None) -> np.ndarray:
        """Token ids (int64) of ``text``: its UTF-8 bytes (bytes are taken as they are), then EOS if asked."""
        if isinstance(text, str):
            data = text.encode("utf-8")
        elif isinstance(text, (bytes, bytearray, memoryview)):
            data = bytes(text)
        else:
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
        if self.add_eos if add_eos is None else add_eos:
            ids = np.append(ids, np.int64(self.EOS_ID))
        return ids

    def decode_bytes(self, ids: Any) -> bytes:
        """Bytes of ``ids`` with EOS ids dropped; ids outside 0-256 raise ValueError."""
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        arr = np.asarray(ids)
        if arr.size and arr.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64).ravel()
        if arr.size and (arr.min() < 0 or arr.max() > self.EOS_ID):
            raise ValueError(f"ids must be in [0, {self.EOS_ID}], got {int(arr.min())}..{int(arr.max())}")
        return arr[arr != self.EOS_ID].astype(np.uint8).tobytes()

    def decode(self, ids: Any, errors: str = "replace") -> str:
        """Text of ``ids`` (UTF-8; undecodable bytes handled by ``errors``), EOS ids dropped."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)


def build_token_file_from_texts(
    folder: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    pattern: str = "**/*.txt",
    add_eos: bool = True,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tokenise every file under ``folder`` matching ``pattern`` with :class:`ByteTokenizer` into one token
    file at ``out_path`` (files in sorted relative-path order, each followed by EOS when ``add_eos``).

    :func:`tikmix.data.tokenize_to_token_file` with the byte tokenizer. Returns ``{"path", "num_files",
    "num_tokens"}``. The header records ``vocab_size`` (257 or 256), ``eos_id`` and metadata ``{"tokenizer": "bytes",
    "num_files": ..., **metadata}``.
    """
    files = list_text_files(folder, pattern)
    info = tokenize_to_token_file([folder], out_path, ByteTokenizer(add_eos=add_eos), fmt="text_folder",
                                  pattern=pattern, progress=False,
                                  metadata={"num_files": len(files), **(metadata or {})})
    return {"path": Path(out_path), "num_files": len(files), "num_tokens": info["num_tokens"]}


def build_domain_token_files(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    pattern: str = "**/*.txt",
    add_eos: bool = True,
    domains: Iterable[str] | None = None,
) -> dict[str, Path]:
    """One token file per domain: each subfolder ``root/<name>`` becomes ``out_dir/<name>.tokens``.

    ``domains`` picks and orders the subfolders (default: all, sorted by name). Returns ``{name: path}`` in
    domain order, ready for ``[TokenFileDataset(p, seq_len) for p in result.values()]``.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"root {str(base)!r} is not a directory")
    names = sorted(p.name for p in base.iterdir() if p.is_dir()) if domains is None else list(domains)
    if not names:
        raise ValueError(f"root {str(base)!r} has no domain subfolders")
    out = Path(out_dir)
    result: dict[str, Path] = {}
    for name in names:
        if not (base / name).is_dir():
            raise ValueError(f"domains: {name!r} is not a subfolder of {str(base)!r}")
        info = build_token_file_from_texts(
            base / name, out / f"{name}.tokens", pattern=pattern, add_eos=add_eos, metadata={"domain": name}
        )
        result[name] = info["path"]
    return result

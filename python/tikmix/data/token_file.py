"""Flat binary token files (numpy memmap) cut into fixed-length chunks, and a writer for them.

File layout written by :class:`TokenFileWriter` (all integers little-endian)::

    bytes 0-7    magic  b"TKMXTOK\\0"
    bytes 8-11   uint32 header size H (bytes before the tokens; a multiple of 64)
    bytes 12-15  uint32 length of the JSON header text
    bytes 16-    JSON: {"version": 1, "dtype": "uint16", "num_tokens": N, "vocab_size": V|null,
                        "eos_id": E|null, "metadata": {...}}, space-padded up to H
    bytes H-     N token ids of that dtype

Headerless files (e.g. a nanoGPT ``train.bin``) are read with a sidecar ``<path>.json`` holding at least
``{"dtype": "uint16"}`` (optionally ``"offset"``, ``"vocab_size"``, ``"eos_id"``), or with ``dtype=...``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .._validation import check_int

__all__ = ["TokenFileDataset", "TokenFileWriter", "write_token_file", "read_token_file_header"]

MAGIC = b"TKMXTOK\0"
FORMAT_VERSION = 1
_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "int64")
_PREFIX = struct.Struct("<8sII")


def _check_dtype(dtype: Any, name: str = "dtype") -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be one of {_DTYPES}, got {dtype!r}") from None
    if dt.name not in _DTYPES:
        raise ValueError(f"{name} must be one of {_DTYPES}, got {dt.name!r}")
    return dt.newbyteorder("<")


def _dtype_for_vocab(vocab_size: int) -> np.dtype:
    for name in ("uint8", "uint16", "uint32"):
        if vocab_size - 1 <= np.iinfo(name).max:
            return np.dtype(name).newbyteorder("<")
    return np.dtype("int64").newbyteorder("<")


def read_token_file_header(path: str | os.PathLike[str], dtype: Any = None) -> dict[str, Any]:
    """Describe a token file: ``dtype`` (name), ``offset`` (bytes), ``num_tokens``, ``vocab_size``,
    ``eos_id``, ``metadata`` and ``source`` (``"header"``, ``"sidecar"`` or ``"argument"``).

    Order of precedence: the file's own header, then ``<path>.json``, then ``dtype``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path {str(p)!r} is not a file")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(_PREFIX.size)
        if len(head) == _PREFIX.size and head[:8] == MAGIC:
            _, hsize, jlen = _PREFIX.unpack(head)
            if hsize < _PREFIX.size + jlen or hsize > size:
                raise ValueError(f"{p}: corrupt token file header (header size {hsize}, file size {size})")
            info = json.loads(f.read(jlen).decode("utf-8"))
            dt = _check_dtype(info.get("dtype"), f"{p} header dtype")
            n = (size - hsize) // dt.itemsize
            if (size - hsize) % dt.itemsize or ("num_tokens" in info and info["num_tokens"] != n):
                raise ValueError(
                    f"{p}: the header says {info.get('num_tokens')} tokens but the file holds "
                    f"{(size - hsize) / dt.itemsize:g}; truncated, or still being written?"
                )
            return {
                "dtype": dt.name,
                "offset": hsize,
                "num_tokens": n,
                "vocab_size": info.get("vocab_size"),
                "eos_id": info.get("eos_id"),
                "metadata": info.get("metadata", {}),
                "source": "header",
            }
    sidecar = p.with_name(p.name + ".json")
    if sidecar.is_file():
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        if "dtype" not in info:
            raise ValueError(f"sidecar {sidecar} has no 'dtype' key")
        dt = _check_dtype(info["dtype"], f"{sidecar} dtype")
        offset = int(info.get("offset", 0))
        source = "sidecar"
    elif dtype is not None:
        dt = _check_dtype(dtype)
        offset, info, source = 0, {}, "argument"
    else:
        raise ValueError(
            f"{p} has no tikmix header and no sidecar {sidecar.name}: pass dtype=... for a raw token file"
        )
    if (size - offset) % dt.itemsize or offset > size:
        raise ValueError(f"{p}: {size - offset} data bytes is not a whole number of {dt.name} tokens")
    return {
        "dtype": dt.name,
        "offset": offset,
        "num_tokens": (size - offset) // dt.itemsize,
        "vocab_size": info.get("vocab_size"),
        "eos_id": info.get("eos_id"),
        "metadata": info.get("metadata", {}),
        "source": source,
    }


class TokenFileDataset(Dataset):
    """Fixed-length chunks of a flat token file, read through a numpy memmap (nothing loaded up front).

    Item ``i`` is a ``torch.LongTensor``: with ``with_targets=False`` (default) the ``seq_len`` tokens
    ``[i*seq_len, (i+1)*seq_len)``; with ``with_targets=True`` the ``seq_len + 1`` tokens
    ``[i*seq_len, (i+1)*seq_len + 1)`` -- inputs ``x[:-1]`` and next-token targets ``x[1:]``, overlapping the
    next chunk by one token. ``len()`` is the number of whole chunks; a trailing remainder is unused.

    Pickles without the memmap (each DataLoader worker reopens the file). Also iterable, with
    ``iter_from(i)``, so it serves as a seekable source of :class:`~tikmix.data.MixtureIterableDataset`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        seq_len: int,
        *,
        with_targets: bool = False,
        dtype: Any = None,
    ) -> None:
        seq_len = check_int(seq_len, "seq_len", minimum=1)
        if not isinstance(with_targets, bool):
            raise TypeError(f"with_targets must be a bool, got {type(with_targets).__name__}")
        self.path = Path(path)
        info = read_token_file_header(self.path, dtype=dtype)
        self.seq_len = int(seq_len)
        self.with_targets = with_targets
        self.dtype = np.dtype(info["dtype"]).newbyteorder("<")
        self.offset: int = info["offset"]
        self.num_tokens: int = info["num_tokens"]
        self.vocab_size: int | None = info["vocab_size"]
        self.eos_id: int | None = info["eos_id"]
        self.metadata: dict[str, Any] = info["metadata"]
        extra = 1 if with_targets else 0
        self._len = max(self.num_tokens - extra, 0) // self.seq_len
        if self._len == 0:
            raise ValueError(
                f"{self.path} holds {self.num_tokens} tokens, fewer than one chunk of seq_len={seq_len}"
                + (" + 1 (with_targets)" if with_targets else "")
            )
        self._mm: np.memmap | None = None

    @property
    def tokens(self) -> np.ndarray:
        """The whole file as a read-only memmap of token ids."""
        if self._mm is None:
            self._mm = np.memmap(
                self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=(self.num_tokens,)
            )
        return self._mm

    @property
    def item_len(self) -> int:
        """Tokens per item: ``seq_len`` (+1 with targets)."""
        return self.seq_len + (1 if self.with_targets else 0)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> torch.Tensor:
        i = check_int(index, "index")
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"index {index} is out of range for {self._len} chunks")
        a = i * self.seq_len
        chunk = np.array(self.tokens[a : a + self.item_len], dtype=np.int64)
        return torch.from_numpy(chunk)

    def iter_from(self, start: int) -> Iterator[torch.Tensor]:
        """Chunks ``start, start + 1, ...`` to the end."""
        for i in range(int(start), self._len):
            yield self[i]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.iter_from(0)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_mm"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"TokenFileDataset({str(self.path)!r}, seq_len={self.seq_len}, with_targets={self.with_targets}, "
            f"chunks={self._len}, tokens={self.num_tokens}, dtype={self.dtype.name})"
        )


class TokenFileWriter:
    """Append token ids to a new token file; the header is finalised on :meth:`close`.

    Writes to ``<path>.tmp`` and renames on close, so a crashed write leaves no half file under ``path``.
    ``dtype`` defaults to the smallest unsigned type holding ``vocab_size`` (uint32 without one). Use as a
    context manager; on an exception inside the ``with`` block the temporary file is removed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        vocab_size: int | None = None,
        dtype: Any = None,
        eos_id: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if vocab_size is not None:
            vocab_size = check_int(vocab_size, "vocab_size", minimum=1)
        if dtype is not None:
            dt = _check_dtype(dtype)
        elif vocab_size is not None:
            dt = _dtype_for_vocab(vocab_size)
        else:
            dt = np.dtype("uint32").newbyteorder("<")
        info = np.iinfo(dt)
        if vocab_size is not None and vocab_size - 1 > info.max:
            raise ValueError(f"dtype={dt.name} cannot hold token ids up to vocab_size - 1 = {vocab_size - 1}")
        if eos_id is not None:
            eos_id = check_int(eos_id, "eos_id")
            hi = info.max if vocab_size is None else vocab_size - 1
            if not 0 <= eos_id <= hi:
                raise ValueError(f"eos_id={eos_id} is outside the token range [0, {hi}]")
            eos_id = int(eos_id)
        meta = dict(metadata or {})
        try:
            json.dumps(meta)
        except TypeError as exc:
            raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
        self.path = Path(path)
        self.dtype = dt
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.metadata = meta
        self._lo = 0
        self._hi = info.max if vocab_size is None else vocab_size - 1
        self.num_tokens = 0
        self._header_size = _round_up(_PREFIX.size + len(self._json(2**63 - 1)), 64)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: Any = open(self._tmp, "wb")
        self._f.write(b"\0" * self._header_size)

    def _json(self, n: int) -> bytes:
        return json.dumps(
            {
                "version": FORMAT_VERSION,
                "dtype": self.dtype.name,
                "num_tokens": n,
                "vocab_size": self.vocab_size,
                "eos_id": self.eos_id,
                "metadata": self.metadata,
            },
            sort_keys=True,
        ).encode("utf-8")

    def write(self, tokens: Any) -> None:
        """Append token ids (any integer array-like or tensor); each must be in ``[0, vocab_size)``."""
        if self._f is None:
            raise ValueError("write() on a closed TokenFileWriter")
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        arr = np.asarray(tokens)
        if arr.size == 0:
            return
        if arr.dtype.kind not in "iu":
            raise TypeError(f"tokens must be integers, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < self._lo or hi > self._hi:
            bad = lo if lo < self._lo else hi
            raise ValueError(f"token id {bad} is outside [0, {self._hi}] (vocab_size={self.vocab_size}, dtype={self.dtype.name})")
        self._f.write(np.ascontiguousarray(arr.ravel(), dtype=self.dtype).tobytes())
        self.num_tokens += arr.size

    def close(self) -> Path:
        """Write the header, move the file into place and return its path."""
        if self._f is None:
            return self.path
        text = self._json(self.num_tokens)
        header = _PREFIX.pack(MAGIC, self._header_size, len(text)) + text
        header += b" " * (self._header_size - len(header))
        self._f.seek(0)
        self._f.write(header)
        self._f.close()
        self._f = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Discard everything written (removes the temporary file)."""
        if self._f is not None:
            self._f.close()
            self._f = None
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> TokenFileWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def write_token_file(
    path: str | os.PathLike[str],
    tokens: Any,
    *,
    vocab_size: int | None = None,
    dtype: Any = None,
    eos_id: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``tokens`` (1-D integer array-like) to a new token file in one call; returns its path."""
    with TokenFileWriter(path, vocab_size=vocab_size, dtype=dtype, eos_id=eos_id, metadata=metadata) as w:
        w.write(tokens)
    return w.path

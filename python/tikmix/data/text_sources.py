"""Streamed text sources (``jsonl``, ``parquet``, text folders) and :func:`tokenize_to_token_file`.

Every reader yields documents in file order, in chunks, never holding a whole file: ``jsonl`` one line at a time,
``parquet`` one record batch of the text column at a time (``pyarrow.parquet.ParquetFile.iter_batches``), a text
folder one file at a time. A record without the text field (or a parquet file without the column) raises ValueError
naming the file, the line or column, and the field.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

from .._extras import progress_bar, require
from .token_file import TokenFileWriter

__all__ = ["TEXT_FORMATS", "detect_format", "check_text_source", "iter_texts", "list_text_files", "tokenize_to_token_file"]

TEXT_FORMATS = ("jsonl", "parquet", "text_folder", "text")


def detect_format(path: str | os.PathLike[str]) -> str:
    """``jsonl`` (``.jsonl``/``.json``/``.ndjson``), ``parquet``, ``text_folder`` (a directory) or ``text``."""
    p = Path(path)
    if p.is_dir():
        return "text_folder"
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    return "text"


def _jsonl(path: Path, field: str) -> Iterator[str]:
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"{path}:{lineno}: record has no {field!r} field (it has {keys})")
            text = record[field]
            if not isinstance(text, str):
                raise ValueError(f"{path}:{lineno}: field {field!r} is a {type(text).__name__}, expected a string")
            yield text


def _parquet(path: Path, field: str, batch_rows: int = 1024) -> Iterator[str]:
    pq = require("pyarrow.parquet", "data", "reading parquet sources")

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise ValueError(f"{path}: not a parquet file ({exc})") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise ValueError(f"{path}: parquet file has no {field!r} column (columns: {names})")
    for batch in pf.iter_batches(batch_size=batch_rows, columns=[field]):
        for text in batch.column(0).to_pylist():
            if text is None:
                continue
            if not isinstance(text, str):
                raise ValueError(f"{path}: column {field!r} holds {type(text).__name__}, expected strings")
            yield text


def list_text_files(folder: str | os.PathLike[str], pattern: str = "**/*.txt") -> list[Path]:
    """The files of a text folder matching ``pattern``, in the order they are read (sorted by relative path).

    FileNotFoundError when ``folder`` is not a folder, ValueError when nothing matches."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a folder")
    files = sorted((p for p in path.glob(pattern) if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
    if not files:
        raise ValueError(f"{path}: no files match {pattern!r}")
    return files


def _folder(path: Path, pattern: str) -> Iterator[bytes]:
    for f in list_text_files(path, pattern):
        yield f.read_bytes()


def iter_texts(path: str | os.PathLike[str], *, fmt: str | None = None, field: str = "text",
               pattern: str = "**/*.txt") -> Iterator[str | bytes]:
    """Documents of one source, streamed (see the module docstring). ``fmt`` default: :func:`detect_format`."""
    p = Path(path)
    fmt = fmt or detect_format(p)
    if fmt not in TEXT_FORMATS:
        raise ValueError(f"fmt must be one of {TEXT_FORMATS}, got {fmt!r}")
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if fmt == "jsonl":
        return _jsonl(p, field)
    if fmt == "parquet":
        return _parquet(p, field)
    if fmt == "text_folder":
        return _folder(p, pattern)
    return iter([p.read_bytes()])


def check_text_source(path: str | os.PathLike[str], *, fmt: str | None = None, field: str = "text",
                      pattern: str = "**/*.txt") -> None:
    """Cheap up-front check: the source opens and its first record has ``field`` (ValueError otherwise)."""
    it = iter_texts(path, fmt=fmt, field=field, pattern=pattern)
    next(it, None)


def tokenize_to_token_file(
    sources: Sequence[str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
    tokenizer: Any,
    *,
    fmt: str | None = None,
    field: str = "text",
    pattern: str = "**/*.txt",
    chunk_docs: int = 512,
    progress: bool | None = None,
    metadata: dict[str, Any] | None = None,
    log: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Tokenise documents from ``sources`` (files/folders, in order) into one token file, EOS after each document.

    ``tokenizer``: from :func:`tikmix.data.load_tokenizer` (or any object with ``name``, ``fingerprint``,
    ``vocab_size``, ``eos_id`` and ``encode_batch``). Documents are encoded ``chunk_docs`` at a time
    (batched encoders run in parallel) and written as they come, so memory stays bounded. A tqdm bar counts
    documents and shows tokens/s; on error the partial file is removed. Returns ``{"path", "num_docs", "num_tokens",
    "seconds", "tokens_per_s"}``; the header records the tokenizer's name, fingerprint, ``vocab_size`` and ``eos_id``.
    """
    srcs = [Path(s) for s in sources]
    if not srcs:
        raise ValueError("sources is empty: give at least one file or folder")
    meta = {"tokenizer": tokenizer.name, "tokenizer_fingerprint": tokenizer.fingerprint,
            "sources": [str(s) for s in srcs], **(metadata or {})}
    t0 = time.perf_counter()
    n_docs = 0
    bar = progress_bar(progress, "tokenizing", desc="tokenize", unit="doc", dynamic_ncols=True)
    try:
        with TokenFileWriter(out_path, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id,
                             metadata=meta) as w:
            for src in srcs:
                chunk: list[Any] = []
                for text in iter_texts(src, fmt=fmt, field=field, pattern=pattern):
                    chunk.append(text)
                    if len(chunk) >= chunk_docs:
                        n_docs += _write(w, tokenizer, chunk, bar, t0)
                        chunk = []
                if chunk:
                    n_docs += _write(w, tokenizer, chunk, bar, t0)
            n_tokens = w.num_tokens
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    info = {"path": Path(out_path), "num_docs": n_docs, "num_tokens": n_tokens, "seconds": seconds,
            "tokens_per_s": n_tokens / seconds if seconds > 0 else float("inf")}
    if log is not None:
        log(f"[tikmix] tokenized {n_docs:,} documents into {n_tokens:,} tokens in {seconds:.1f} s "
            f"({info['tokens_per_s']:,.0f} tokens/s) -> {out_path}")
    return info


def _write(w: TokenFileWriter, tokenizer: Any, chunk: list[Any], bar: Any, t0: float) -> int:
    for ids in tokenizer.encode_batch(chunk):
        w.write(ids)
    bar.update(len(chunk))
    elapsed = max(time.perf_counter() - t0, 1e-9)
    bar.set_postfix(tokens=f"{w.num_tokens:,}", tok_s=f"{w.num_tokens / elapsed:,.0f}", refresh=False)
    return len(chunk)

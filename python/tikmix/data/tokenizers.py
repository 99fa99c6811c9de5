"""Tokenizers from local files: bytes, a Hugging Face ``tokenizer.json``, or a tiktoken-style BPE rank file.

:func:`load_tokenizer` is the one entry point; every tokenizer it returns has ``name``, ``vocab_size``, ``eos_id``
(None when it has none), ``fingerprint`` (changes when the file changes: token files built with it are cached under
it) and ``encode_batch(texts) -> list[np.ndarray]`` (int64 ids, EOS appended when the tokenizer has one): the one
tokenizer protocol of :func:`tikmix.data.tokenize_to_token_file` and ``tikmix run``. Nothing is
downloaded: a spec that is not ``"bytes"`` must be an existing local file.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._extras import require
from .text import ByteTokenizer

__all__ = ["load_tokenizer", "TokenizerSpecError", "HFTokenizer", "TiktokenBPE", "ByteTokenizer", "GPT2_PATTERN"]

# The pre-tokenisation regex of GPT-2 / r50k (tiktoken's default for a bare BPE rank file).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "[SEP]", "<|end_of_text|>")


class TokenizerSpecError(ValueError):
    """A tokenizer spec that cannot be loaded (missing file, not local, does not parse)."""


def _fingerprint(path: Path, kind: str) -> str:
    h = hashlib.sha256(kind.encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"{kind}-{h.hexdigest()[:12]}"


def _why_not_a_tokenizer(path: Path, exc: Exception) -> str:
    """Why ``tokenizers`` refused ``path``: not JSON, JSON that is not a tokenizer, or a tokenizer it cannot read."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        return f"{path} is not a tokenizer.json: not valid JSON ({err})"
    if not isinstance(doc, dict) or "model" not in doc:
        keys = f" (it has {', '.join(map(str, list(doc)[:8]))})" if isinstance(doc, dict) and doc else ""
        return f"{path} is not a tokenizer.json (no `model` section){keys}"
    return f"{path} is not a valid tokenizer.json: {exc}"


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer from a local ``tokenizer.json`` (fast, batched in Rust)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        Tokenizer = require("tokenizers", "data", "HFTokenizer").Tokenizer

        self.path = Path(path)
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerSpecError(_why_not_a_tokenizer(self.path, exc)) from None
        self.name = f"tokenizer.json:{self.path.name}"
        self.fingerprint = _fingerprint(self.path, "hf")
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.eos_id = next((int(vocab[t]) for t in _EOS_CANDIDATES if t in vocab), None)

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        texts = [t.decode("utf-8", "replace") if isinstance(t, (bytes, bytearray)) else t for t in texts]
        out = []
        for enc in self._tok.encode_batch(texts, add_special_tokens=False):
            ids = np.asarray(enc.ids, dtype=np.int64)
            out.append(ids if self.eos_id is None else np.append(ids, np.int64(self.eos_id)))
        return out


class TiktokenBPE:
    """A tiktoken encoding from a local BPE rank file (lines ``<base64 token> <rank>``, as tiktoken ships them).

    ``pattern``: the pre-tokenisation regex (default: GPT-2's). ``<|endoftext|>`` is added as the special EOS token
    right after the largest rank.
    """

    def __init__(self, path: str | os.PathLike[str], pattern: str = GPT2_PATTERN) -> None:
        tiktoken = require("tiktoken", "data", "TiktokenBPE")

        self.path = Path(path)
        ranks: dict[bytes, int] = {}
        try:
            with open(self.path, "rb") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    token, rank = line.split()
                    ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, TypeError) as exc:
            raise TokenizerSpecError(f"{self.path} is not a tiktoken BPE file (line {lineno}: expected "
                                     f"'<base64 token> <rank>'): {exc}") from None
        if not ranks:
            raise TokenizerSpecError(f"{self.path} is not a tiktoken BPE file: it holds no token")
        eos = max(ranks.values()) + 1
        try:
            self._enc = tiktoken.Encoding(name=self.path.stem, pat_str=pattern, mergeable_ranks=ranks,
                                          special_tokens={"<|endoftext|>": eos})
        except Exception as exc:
            raise TokenizerSpecError(f"{self.path}: tiktoken rejected the BPE ranks: {exc}") from None
        self.name = f"tiktoken:{self.path.name}"
        self.fingerprint = _fingerprint(self.path, "tiktoken")
        self.vocab_size = int(self._enc.n_vocab)
        self.eos_id = eos

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        texts = [t.decode("utf-8", "replace") if isinstance(t, (bytes, bytearray)) else t for t in texts]
        return [np.append(np.asarray(ids, dtype=np.int64), np.int64(self.eos_id))
                for ids in self._enc.encode_ordinary_batch(texts)]


def load_tokenizer(spec: Any = "bytes") -> Any:
    """A tokenizer from ``spec``: ``"bytes"``, or the path of a local ``tokenizer.json`` (Hugging Face
    ``tokenizers``) or of a tiktoken BPE rank file (any other file). Raises :class:`TokenizerSpecError`."""
    if spec is None or spec == "bytes":
        return ByteTokenizer(add_eos=True)
    if not isinstance(spec, (str, os.PathLike)):
        raise TokenizerSpecError(f"tokenizer must be 'bytes' or a local file path, got {type(spec).__name__}")
    path = Path(os.path.expanduser(str(spec)))
    if not path.is_file():
        raise TokenizerSpecError(f"tokenizer file not found: {path} (tikmix loads tokenizers from local files only, "
                                 "never from a hub)")
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if path.suffix == ".json" or head.startswith(b"{"):
        return HFTokenizer(path)
    return TiktokenBPE(path)

"""Shared helpers of the tokenizer / text-source tests: small corpora, a BPE trained here, a tiktoken rank file."""
from __future__ import annotations

import base64
import json
from pathlib import Path

DOCS = [f"document {i}: the quick brown fox {'jumps ' * (i % 4)}over {i * 7} lazy dogs. ünïcode ✓" for i in range(40)]


def write_jsonl(path: Path, docs=DOCS, field: str = "text") -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, field: d}) + "\n")
    return path


def write_parquet(path: Path, docs=DOCS, field: str = "text", row_group_size: int = 7) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(docs))), field: docs}), path, row_group_size=row_group_size)
    return path


def train_tokenizer_json(path: Path, vocab_size: int = 300) -> Path:
    """A byte-level BPE trained on DOCS with ``tokenizers`` (no download), saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(DOCS * 3, trainer=trainer)
    tok.save(str(path))
    return path


def write_tiktoken_file(path: Path) -> Path:
    """A rank file with the 256 single bytes and a few merges (``tiktoken``'s format: base64 token, rank)."""
    tokens = [bytes([b]) for b in range(256)] + [b"th", b"the", b" the", b"ox", b" f", b" fox", b"og", b"ogs"]
    with open(path, "wb") as f:
        for rank, t in enumerate(tokens):
            f.write(base64.b64encode(t) + b" " + str(rank).encode() + b"\n")
    return path

"""Tokenizers from local files and ``tikmix tokenize`` (token files built once, streamed sources)."""
from __future__ import annotations

import numpy as np
import pytest

from tikmix.cli import main
from tikmix.data import TokenFileDataset, read_token_file_header
from tikmix.data.text_sources import tokenize_to_token_file
from tikmix.data.tokenizers import TokenizerSpecError, load_tokenizer

from text_testing import DOCS, train_tokenizer_json, write_jsonl, write_parquet, write_tiktoken_file


def _tokens(path) -> np.ndarray:
    return np.asarray(TokenFileDataset(path, 1).tokens).astype(np.int64)


def test_hf_tokenizer_json_matches_tokenizers_library(tmp_path):
    from tokenizers import Tokenizer

    path = train_tokenizer_json(tmp_path / "tokenizer.json")
    tok = load_tokenizer(str(path))
    ref = Tokenizer.from_file(str(path))
    eos = ref.token_to_id("<|endoftext|>")
    assert tok.eos_id == eos and tok.vocab_size == ref.get_vocab_size()
    for doc, ids in zip(DOCS[:5], tok.encode_batch(DOCS[:5])):
        assert ids.tolist() == ref.encode(doc, add_special_tokens=False).ids + [eos]
    assert tok.fingerprint.startswith("hf-") and load_tokenizer(path).fingerprint == tok.fingerprint


def test_tiktoken_file_matches_tiktoken(tmp_path):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    path = write_tiktoken_file(tmp_path / "ranks.tiktoken")
    tok = load_tokenizer(path)
    ranks = load_tiktoken_bpe(str(path))
    gpt2_pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    ref = tiktoken.Encoding("ref", pat_str=gpt2_pattern, mergeable_ranks=ranks, special_tokens={})
    doc = "the fox and the dogs"
    ids = tok.encode_batch([doc])[0]
    assert ids[:-1].tolist() == ref.encode_ordinary(doc) and ids[-1] == tok.eos_id == len(ranks)
    assert len(ids) - 1 < len(doc.encode())  # merges were applied


def test_bytes_tokenizer_and_bad_specs(tmp_path):
    tok = load_tokenizer("bytes")
    assert tok.encode_batch(["ab"])[0].tolist() == [97, 98, 256]
    with pytest.raises(TokenizerSpecError, match="not found.*never from a hub"):
        load_tokenizer("meta-llama/Llama-3-8B")
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"model": {"type": "nonsense"}}')
    with pytest.raises(TokenizerSpecError, match="not a valid tokenizer.json"):
        load_tokenizer(bad)
    junk = tmp_path / "ranks.bpe"
    junk.write_text("this is not base64!! 3\n")
    with pytest.raises(TokenizerSpecError, match="not a tiktoken BPE file"):
        load_tokenizer(junk)
    with pytest.raises(TokenizerSpecError, match="path"):
        load_tokenizer(3)


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_tokenize_command_builds_the_reference_token_file(tmp_path, kind, capsys):
    tok_path = train_tokenizer_json(tmp_path / "tokenizer.json")
    src = write_jsonl(tmp_path / "a.jsonl") if kind == "jsonl" else write_parquet(tmp_path / "a.parquet")
    src2 = write_jsonl(tmp_path / "b.jsonl", docs=DOCS[:3])
    out = tmp_path / "out.tokens"
    assert main(["tokenize", str(src), str(src2), "-o", str(out), "--tokenizer", str(tok_path),
                 "--no-progress"]) == 0
    assert "tokens/s" in capsys.readouterr().out
    tok = load_tokenizer(tok_path)
    ref = np.concatenate(tok.encode_batch(DOCS + DOCS[:3]))
    np.testing.assert_array_equal(_tokens(out), ref)
    head = read_token_file_header(out)
    assert head["vocab_size"] == tok.vocab_size and head["eos_id"] == tok.eos_id
    assert head["metadata"]["tokenizer_fingerprint"] == tok.fingerprint


def test_tokenize_errors_name_the_problem(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", field="body")
    assert main(["tokenize", str(src), "-o", str(tmp_path / "x.tokens"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "a.jsonl:1" in err and "no 'text' field" in err
    assert not (tmp_path / "x.tokens").exists()  # nothing half-written is left
    assert main(["tokenize", str(src), "--field", "body", "-o", str(tmp_path / "x.tokens"), "--no-progress"]) == 0
    pq = write_parquet(tmp_path / "p.parquet", field="content")
    assert main(["tokenize", str(pq), "-o", str(tmp_path / "y.tokens"), "--no-progress"]) == 2
    assert "no 'text' column" in capsys.readouterr().err
    assert main(["tokenize", str(src), "-o", str(tmp_path / "z.tokens"), "--tokenizer", "org/model"]) == 2
    assert "--tokenizer" in capsys.readouterr().err


def test_tokenize_api_reports_throughput(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl")
    info = tokenize_to_token_file([src], tmp_path / "o.tokens", load_tokenizer("bytes"), chunk_docs=7,
                                  progress=False)
    assert info["num_docs"] == len(DOCS) and info["num_tokens"] == sum(len(d.encode()) + 1 for d in DOCS)
    assert info["tokens_per_s"] > 0


def test_one_tokenizer_protocol_and_one_text_to_tokens_path(tmp_path):
    import tikmix.data as data
    from tikmix.data import ByteTokenizer, build_token_file_from_texts

    assert data.load_tokenizer is load_tokenizer and data.tokenize_to_token_file is tokenize_to_token_file
    tok = load_tokenizer("bytes")
    assert isinstance(tok, ByteTokenizer) and (tok.name, tok.fingerprint, tok.vocab_size, tok.eos_id) == \
        ("bytes", "bytes", 257, 256)
    assert [ids.tolist() for ids in tok.encode_batch(["hi", b"\xff"])] == [[104, 105, 256], [255, 256]]
    assert ByteTokenizer(add_eos=False).fingerprint != tok.fingerprint  # their token files differ
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second")
    (folder / "sub" / "a.txt").write_text("héllo")
    # the byte-level folder builder is the same path: the same token ids and header
    info = build_token_file_from_texts(folder, tmp_path / "a.tokens")
    tokenize_to_token_file([folder], tmp_path / "b.tokens", tok, fmt="text_folder", progress=False)
    assert info["num_files"] == 2 and info["num_tokens"] == len("second") + len("héllo".encode()) + 2
    assert _tokens(tmp_path / "a.tokens").tolist() == _tokens(tmp_path / "b.tokens").tolist()
    head_a, head_b = read_token_file_header(tmp_path / "a.tokens"), read_token_file_header(tmp_path / "b.tokens")
    assert (head_a["vocab_size"], head_a["eos_id"]) == (head_b["vocab_size"], head_b["eos_id"]) == (257, 256)
    assert head_a["metadata"]["tokenizer_fingerprint"] == head_b["metadata"]["tokenizer_fingerprint"] == "bytes"

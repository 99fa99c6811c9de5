"""Token files (header, sidecar, raw), fixed-length chunks, the byte tokenizer and the text-folder builders."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from tikmix.data import (
    ByteTokenizer,
    MixtureSampler,
    TokenFileDataset,
    TokenFileWriter,
    build_domain_token_files,
    build_token_file_from_texts,
    concat_domains,
    read_token_file_header,
    write_token_file,
)


def test_chunks_without_and_with_next_token_targets(tmp_path):
    toks = np.arange(23)
    p = write_token_file(tmp_path / "t.tokens", toks, vocab_size=100)
    ds = TokenFileDataset(p, 5)
    assert len(ds) == 4  # 23 // 5, the remainder 20..22 is unused
    assert ds[0].dtype == torch.int64 and ds[0].tolist() == [0, 1, 2, 3, 4]
    assert ds[3].tolist() == [15, 16, 17, 18, 19]
    assert ds[-1].tolist() == ds[3].tolist()
    tgt = TokenFileDataset(p, 5, with_targets=True)
    assert len(tgt) == 4  # (23 - 1) // 5
    x = tgt[1]
    assert x.tolist() == [5, 6, 7, 8, 9, 10]  # inputs x[:-1], targets x[1:]
    assert tgt.item_len == 6
    exact = write_token_file(tmp_path / "e.tokens", np.arange(20), vocab_size=100)
    assert len(TokenFileDataset(exact, 5)) == 4 and len(TokenFileDataset(exact, 5, with_targets=True)) == 3
    with pytest.raises(IndexError):
        ds[4]


def test_header_records_dtype_vocab_and_metadata(tmp_path):
    p = write_token_file(tmp_path / "h.tokens", [1, 2, 3], vocab_size=70000, eos_id=5, metadata={"name": "x"})
    info = read_token_file_header(p)
    assert info["dtype"] == "uint32" and info["num_tokens"] == 3 and info["source"] == "header"
    assert info["vocab_size"] == 70000 and info["eos_id"] == 5 and info["metadata"] == {"name": "x"}
    assert info["offset"] % 64 == 0
    small = write_token_file(tmp_path / "s.tokens", [1, 255], vocab_size=256)
    assert read_token_file_header(small)["dtype"] == "uint8"
    assert read_token_file_header(write_token_file(tmp_path / "m.tokens", [3], vocab_size=257))["dtype"] == "uint16"


def test_raw_files_via_sidecar_or_dtype_argument(tmp_path):
    raw = tmp_path / "train.bin"
    np.arange(12, dtype="<u2").tofile(raw)  # nanoGPT-style: no header
    with pytest.raises(ValueError, match="no tikmix header and no sidecar"):
        TokenFileDataset(raw, 4)
    ds = TokenFileDataset(raw, 4, dtype="uint16")
    assert ds[2].tolist() == [8, 9, 10, 11]
    (tmp_path / "train.bin.json").write_text(json.dumps({"dtype": "uint16", "offset": 4}))
    side = TokenFileDataset(raw, 2)
    assert side[0].tolist() == [2, 3] and side.num_tokens == 10


def test_truncated_file_and_bad_arguments_are_reported(tmp_path):
    p = write_token_file(tmp_path / "t.tokens", np.arange(10), vocab_size=300)
    data = p.read_bytes()
    (tmp_path / "cut.tokens").write_bytes(data[:-2])
    with pytest.raises(ValueError, match="truncated"):
        TokenFileDataset(tmp_path / "cut.tokens", 2)
    with pytest.raises(ValueError, match="fewer than one chunk"):
        TokenFileDataset(p, 11)
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        TokenFileDataset(p, 0)
    with pytest.raises(TypeError, match="seq_len must be an int"):
        TokenFileDataset(p, 2.0)
    with pytest.raises(FileNotFoundError):
        TokenFileDataset(tmp_path / "missing", 2)
    with pytest.raises(ValueError, match="token id 300 is outside"):
        write_token_file(tmp_path / "bad.tokens", [1, 300], vocab_size=300)
    assert not (tmp_path / "bad.tokens").exists() and not (tmp_path / "bad.tokens.tmp").exists()
    with pytest.raises(TypeError, match="tokens must be integers"):
        write_token_file(tmp_path / "f.tokens", [1.5])
    with pytest.raises(ValueError, match="dtype must be one of"):
        TokenFileWriter(tmp_path / "x", dtype="float32")
    with pytest.raises(ValueError, match="cannot hold"):
        TokenFileWriter(tmp_path / "x", dtype="uint8", vocab_size=300)


def test_writer_appends_in_pieces(tmp_path):
    with TokenFileWriter(tmp_path / "w.tokens", vocab_size=10) as w:
        w.write([1, 2])
        w.write(torch.tensor([3]))
        w.write(np.array([], dtype=np.int64))
    assert TokenFileDataset(tmp_path / "w.tokens", 3)[0].tolist() == [1, 2, 3]


def test_pickles_without_the_memmap_and_loads_in_workers(tmp_path):
    p = write_token_file(tmp_path / "t.tokens", np.arange(64) % 50, vocab_size=50)
    ds = TokenFileDataset(p, 8)
    _ = ds[0]  # opens the memmap
    blob = pickle.dumps(ds)
    assert len(blob) < 2000
    assert torch.equal(pickle.loads(blob)[3], ds[3])
    batches = list(DataLoader(ds, batch_size=4, num_workers=2))
    assert torch.equal(torch.cat(batches), torch.stack([ds[i] for i in range(8)]))


@settings(max_examples=30, deadline=None)
@given(text=st.text(max_size=200))
def test_byte_tokenizer_round_trips_any_text(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids[-1] == 256 and len(ids) == len(text.encode("utf-8")) + 1
    assert ((ids >= 0) & (ids <= 256)).all()
    assert tok.decode(ids) == text


def test_byte_tokenizer_details():
    tok = ByteTokenizer(add_eos=False)
    assert tok.vocab_size == 256 and tok.eos_id is None
    assert tok.encode(b"\xff\x00").tolist() == [255, 0]
    assert tok.decode_bytes([104, 105, 256, 33]) == b"hi!"
    with pytest.raises(ValueError, match=r"ids must be in \[0, 256\]"):
        tok.decode([300])
    with pytest.raises(TypeError, match="text must be str or bytes"):
        tok.encode(5)


def test_text_folder_to_token_file_and_into_the_sampler(tmp_path):
    root = tmp_path / "corpus"
    (root / "web" / "sub").mkdir(parents=True)
    (root / "code").mkdir()
    (root / "web" / "b.txt").write_text("second file")
    (root / "web" / "sub" / "a.txt").write_text("héllo")  # sorted by relative path: b.txt < sub/a.txt
    (root / "web" / "skip.md").write_text("not matched")
    (root / "code" / "x.txt").write_bytes(b"def f(): pass\n" * 10)
    info = build_token_file_from_texts(root / "web", tmp_path / "web.tokens")
    assert info["num_files"] == 2
    tok = ByteTokenizer()
    ds = TokenFileDataset(info["path"], 4)
    assert tok.decode_bytes(ds.tokens[:]) == b"second file" + "héllo".encode()
    assert ds.tokens[:].tolist().count(256) == 2 and ds.eos_id == 256 and ds.vocab_size == 257
    assert info["num_tokens"] == ds.num_tokens == len(b"second file") + len("héllo".encode()) + 2
    files = build_domain_token_files(root, tmp_path / "out")
    assert list(files) == ["code", "web"]
    domains = [TokenFileDataset(p, 8, with_targets=True) for p in files.values()]
    cat = concat_domains(domains)
    sampler = MixtureSampler(cat.domain_sizes, [0.5, 0.5], batch_size=4, seed=0)
    batch = next(iter(DataLoader(cat, batch_size=4, sampler=sampler)))
    assert batch.shape == (4, 9) and batch.dtype == torch.int64
    with pytest.raises(ValueError, match="no files match"):
        build_token_file_from_texts(root / "web", tmp_path / "n.tokens", pattern="*.csv")
    with pytest.raises(FileNotFoundError):
        build_token_file_from_texts(root / "nope", tmp_path / "n.tokens")

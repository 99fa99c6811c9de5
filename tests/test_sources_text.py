"""Streamed jsonl / parquet / text-folder readers."""
from __future__ import annotations

import pytest

from tikmix.data.text_sources import check_text_source, detect_format, iter_texts

from text_testing import DOCS, write_jsonl, write_parquet


def test_jsonl_and_parquet_stream_every_document_in_order(tmp_path):
    assert list(iter_texts(write_jsonl(tmp_path / "a.jsonl"))) == DOCS
    pq = write_parquet(tmp_path / "a.parquet", row_group_size=5)
    it = iter_texts(pq)
    assert next(it) == DOCS[0]  # lazily: the first record comes before the rest is read
    assert [DOCS[0], *it] == DOCS
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "b.txt").write_text("two")
    (tmp_path / "f" / "a.txt").write_text("one")
    assert list(iter_texts(tmp_path / "f")) == [b"one", b"two"]
    assert detect_format(tmp_path / "f") == "text_folder" and detect_format(pq) == "parquet"


def test_parquet_reads_record_batches_not_the_whole_file(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    calls = []
    orig = pq.ParquetFile.iter_batches

    def spy(self, *a, **kw):
        calls.append(kw)
        return orig(self, *a, **kw)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert len(list(iter_texts(write_parquet(tmp_path / "a.parquet")))) == len(DOCS)
    assert calls and calls[0]["columns"] == ["text"]


def test_missing_field_and_bad_records(tmp_path):
    with pytest.raises(ValueError, match=r"a.jsonl:1: record has no 'text' field"):
        check_text_source(write_jsonl(tmp_path / "a.jsonl", field="body"))
    check_text_source(tmp_path / "a.jsonl", field="body")
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"b.jsonl:2: not valid JSON"):
        list(iter_texts(bad))
    bad.write_text('{"text": 3}\n')
    with pytest.raises(ValueError, match="expected a string"):
        list(iter_texts(bad))
    with pytest.raises(ValueError, match=r"no 'text' column \(columns: \['id', 'content'\]\)"):
        check_text_source(write_parquet(tmp_path / "p.parquet", field="content"))
    with pytest.raises(FileNotFoundError):
        check_text_source(tmp_path / "nope.jsonl")

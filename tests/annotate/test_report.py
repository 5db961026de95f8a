"""Leaderboard files: JSON rows sorted by accuracy, HTML with the table and inline SVG plots."""
import json

import pytest

from flagstack.annotate.report import load_records, save_record, write_leaderboard


def test_leaderboard_files(tmp_path):
    bins = [{"lo": 0.9, "hi": 1.0, "count": 3, "accuracy": 0.67, "confidence": 0.95}]
    save_record({"run": "knn", "llm": True, "accuracy": 0.9, "docs_per_s": 2.0, "metrics": {"reliability": bins}},
                tmp_path)
    save_record({"run": "majority", "llm": False, "accuracy": 0.2, "docs_per_s": 1e4}, tmp_path)
    save_record({"run": "zero<shot>", "llm": True, "accuracy": 0.4, "docs_per_s": 3.0}, tmp_path)
    records = load_records(tmp_path)
    assert [r["run"] for r in records] == ["knn", "zero<shot>", "majority"]
    json_path, html_path = write_leaderboard(records[::-1], tmp_path / "lb")
    rows = json.loads(json_path.read_text())["rows"]
    assert [r["run"] for r in rows] == ["knn", "zero<shot>", "majority"] and rows[2]["llm"] is False
    page = html_path.read_text()
    assert page.count("<svg") == 3 and "zero&lt;shot&gt;" in page and "<script" not in page
    assert page.index(">knn<") < page.index(">majority<")
    with pytest.raises(ValueError, match="run"):
        save_record({"accuracy": 1.0}, tmp_path)

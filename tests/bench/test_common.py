"""bench/common.py: the results writer (resume, crash safety, table format), timing and helpers."""
import json
import os
import time

import pytest
import torch

from flagstack.bench.common import (ResultsFile, copy_time_us, device_description, gbps, interleaved_medians,
                                    markdown_table, slug, time_us, write_results)

META = {"device": "Test GPU 80GB", "note": "x"}


def test_markdown_table_format():
    rows = [{"op": "a|b", "us": 1234.5, "ratio": 0.123456, "gbps": 12.345},
            {"op": "c", "us": None, "ratio": float("nan"), "extra": 7}]
    expected = ("| op | us | ratio | gbps | extra |\n"
                "|---|---|---|---|---|\n"
                "| a\\|b | 1234 | 0.123 | 12.3 | - |\n"
                "| c | - | - | - | 7 |\n")
    assert markdown_table(rows) == expected
    assert markdown_table(rows, ["extra", "op"]).splitlines()[2] == "| - | a\\|b |"


def test_results_file_paths_and_contents(tmp_path):
    results = ResultsFile("ops", META, key=("op", "rows"), out_dir=tmp_path, date="2026-01-02")
    results.add({"op": "rms_norm", "rows": 1, "us": 4.5})
    json_path, md_path = results.paths
    assert json_path == tmp_path / "ops-test-gpu-80gb-2026-01-02.json"
    assert md_path == tmp_path / "ops-test-gpu-80gb-2026-01-02.md"
    body = json.loads(json_path.read_text())
    assert body == {"kind": "ops", "meta": META, "rows": [{"op": "rms_norm", "rows": 1, "us": 4.5}]}
    md = md_path.read_text()
    assert "- device: Test GPU 80GB" in md and "| rms_norm | 1 | 4.5 |" in md
    assert not list(tmp_path.glob("*.tmp"))  # temporaries renamed away


def test_resume_skips_and_replaces(tmp_path):
    first = ResultsFile("ops", META, key=("op", "rows"), out_dir=tmp_path, date="2026-01-02")
    first.add({"op": "a", "rows": 1, "us": 1.0})
    first.add({"op": "a", "rows": 2, "us": 2.0})
    again = ResultsFile("ops", META, key=("op", "rows"), out_dir=tmp_path, date="2026-01-02")
    assert again.has({"op": "a", "rows": 2}) and not again.has({"op": "a", "rows": 3})
    again.add({"op": "a", "rows": 2, "us": 9.0})  # same key: replaced, not duplicated
    rows = json.loads(again.json_path.read_text())["rows"]
    assert rows == [{"op": "a", "rows": 1, "us": 1.0}, {"op": "a", "rows": 2, "us": 9.0}]
    other_day = ResultsFile("ops", META, key=("op", "rows"), out_dir=tmp_path, date="2026-01-03")
    assert other_day.rows == []


def test_rows_survive_a_crash(tmp_path):
    def rows():
        yield {"op": "a", "us": 1.0}
        yield {"op": "b", "us": 2.0}
        raise RuntimeError("benchmark crashed")

    with pytest.raises(RuntimeError):
        write_results("ops", rows(), META, key=("op",), out_dir=tmp_path)
    (json_path,) = tmp_path.glob("*.json")
    assert [r["op"] for r in json.loads(json_path.read_text())["rows"]] == ["a", "b"]


def test_bad_kind_and_key(tmp_path):
    with pytest.raises(ValueError, match="kind must be"):
        ResultsFile("Ops Bench", META, key=("op",), out_dir=tmp_path)
    with pytest.raises(ValueError, match="key must name"):
        ResultsFile("ops", META, key=(), out_dir=tmp_path)
    results = ResultsFile("ops", META, key=("op", "rows"), out_dir=tmp_path)
    with pytest.raises(ValueError, match="missing \\['rows'\\]"):
        results.add({"op": "a"})


def test_time_us_measures_a_known_sleep():
    us = time_us(lambda: time.sleep(0.002), "cpu", warmup_ms=0, rep_ms=10)
    assert 1900 < us < 20000


def test_interleaved_medians_times_each_variant_and_leaves_out_failures(capsys):
    order = []

    def broken():
        raise RuntimeError("out of resources")

    variants = {"short": lambda: order.append("short") or time.sleep(0.001),
                "long": lambda: order.append("long") or time.sleep(0.004), "broken": broken}
    medians = interleaved_medians(variants, 2, device="cpu", warmup_ms=0, rep_ms=5)
    assert set(medians) == {"short", "long"} and 900 < medians["short"] < medians["long"]
    assert "broken: RuntimeError: out of resources" in capsys.readouterr().out
    first_long = order.index("long")
    assert "short" in order[first_long:]  # the second round timed "short" again after "long"


def test_copy_time_and_helpers():
    assert copy_time_us(1 << 16, "cpu", warmup_ms=0, rep_ms=2) > 0
    assert gbps(10**9, 10**6) == pytest.approx(1.0)  # 1 GB in 1 s
    assert slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3" and slug("??") == "unknown"
    assert device_description("cpu") == f"cpu ({os.cpu_count()} cores)"
    if torch.cuda.is_available():
        assert device_description("cuda") == torch.cuda.get_device_name(0)

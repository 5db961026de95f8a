"""bench/ops.py on CPU: suite selection, rows written and resumed (torch.compile stubbed out: its CPU
compile takes seconds and is not what is under test here)."""
import argparse
import json

import pytest
import torch

from flagstack.bench import ops as bench_ops
from flagstack.ops import get


def _args(tmp_path, **over):
    base = dict(rows=[2], dtype="fp32", ops=["rms_norm"], suite="llm", quick=True, fresh=False,
                out_dir=str(tmp_path))
    return argparse.Namespace(**{**base, **over})


@pytest.fixture(autouse=True)
def on_cpu(monkeypatch):
    """These tests check the CPU mode; on a GPU machine the bench would otherwise pick CUDA."""
    monkeypatch.setattr(bench_ops, "default_device", lambda: "cpu")


@pytest.fixture
def no_compile(monkeypatch):
    monkeypatch.setattr(bench_ops, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)


def test_suites():
    assert bench_ops.suite_of(get("rms_norm")) == "llm"
    assert bench_ops.suite_of(get("store_kv")) == "attention"
    llm = {e.name for e in bench_ops.select_ops(None, "llm")}
    assert "rms_norm" in llm and "store_kv" not in llm
    assert all(get(n).bench_case is not None for n in llm)
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        bench_ops.select_ops(["nope"], "llm")


def test_cpu_run_writes_rows_and_resumes(tmp_path, no_compile, monkeypatch):
    rows = bench_ops.run(_args(tmp_path, cuda_graph=True))  # no CUDA graphs on CPU: plain timing
    (row,) = rows
    assert (row["op"], row["rows"], row["dtype"]) == ("rms_norm", 2, "fp32")
    assert row["triton_us"] is None and row["flaggems_us"] is None  # not timed on CPU
    assert row["eager_us"] > 0 and row["compile_us"] > 0 and row["copy_us"] > 0
    assert row["MB"] == pytest.approx(2 * 2 * 2560 * 4 / 1e6)
    assert row["speedup"] == pytest.approx(row["eager_us"] / row["compile_us"])
    (json_path,) = tmp_path.glob("ops-quick-cpu-*.json")
    meta = json.loads(json_path.read_text())["meta"]
    assert "CPU" in meta["mode"] and meta["cuda_graph"] is False

    def must_not_run(*a, **k):
        raise AssertionError("a stored row was timed again")
    monkeypatch.setattr(bench_ops, "bench_one", must_not_run)
    assert bench_ops.run(_args(tmp_path)) == rows  # resumed from the JSON
    with pytest.raises(AssertionError, match="timed again"):
        bench_ops.run(_args(tmp_path, fresh=True))


def test_failing_implementation_is_noted_not_fatal(tmp_path, monkeypatch):
    def broken(fn, **kwargs):
        raise RuntimeError("no compiler")
    monkeypatch.setattr(bench_ops, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", broken)
    (row,) = bench_ops.run(_args(tmp_path))
    assert row["compile_us"] is None and "compile: RuntimeError: no compiler" in row["notes"]
    assert row["eager_us"] > 0 and row["speedup"] is None


def test_bad_dtype(tmp_path):
    with pytest.raises(ValueError, match="--dtype must be one of"):
        bench_ops.run(_args(tmp_path, dtype="fp8"))


def test_shortfalls_against_the_targets():
    def row(rows, speedup, pct, triton_us=10.0):
        return {"op": "x", "rows": rows, "dtype": "bf16", "triton_us": triton_us, "speedup": speedup,
                "%copy": pct, "best_anchor": "compile", "notes": ""}
    assert bench_ops.shortfalls([row(1, 0.9, 5), row(256, 1.0, 50), row(32768, 1.1, 85)]) == []
    misses = bench_ops.shortfalls([row(1, 0.8, 5), row(4096, 0.99, 90), row(32768, 1.2, 84.0),
                                   row(256, None, None, triton_us=None)])
    assert misses == ["x rows=1 bf16: 0.80x the best anchor (compile), target >= 0.83x",
                      "x rows=4096 bf16: 0.99x the best anchor (compile), target >= 1.0x",
                      "x rows=32768 bf16: 84% of copy bandwidth, target >= 85%",
                      "x rows=256 bf16: Triton not timed (no Triton implementation)"]


def test_op_without_a_case_for_the_dtype_is_skipped(tmp_path, monkeypatch, capsys):
    def no_case(rows, dtype, device):
        raise ValueError("integer op: no fp32 case")
    monkeypatch.setattr(get("rms_norm"), "bench_case", no_case)
    assert bench_ops.run(_args(tmp_path)) == []
    assert "no bench case (integer op: no fp32 case)" in capsys.readouterr().out


def test_attention_suite_hands_over(tmp_path, monkeypatch, capsys):
    import importlib.machinery
    import sys
    import types

    fake = types.ModuleType("flagstack.bench.attention")
    fake.__spec__ = importlib.machinery.ModuleSpec("flagstack.bench.attention", None)
    fake.run = lambda args: [{"case": "decode", "batch": 1, "us": 5.0, "suite_seen": args.suite}]
    monkeypatch.setitem(sys.modules, "flagstack.bench.attention", fake)
    rows = bench_ops.run(_args(tmp_path, ops=None, suite="attention"))
    assert rows == [{"case": "decode", "batch": 1, "us": 5.0, "suite_seen": "attention"}]
    assert "| decode | 1 | 5.0 | attention |" in capsys.readouterr().out
    assert not list(tmp_path.glob("ops*"))  # the attention module writes its own files

"""The `flagstack` CLI: ops list/test, bench and demo wiring, and bad arguments (exit status 2)."""
import pytest
import torch

from flagstack.bench import ops as bench_ops
from flagstack.cli import main
from flagstack.ops import get
from flagstack.ops import selftest


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ops_list(capsys):
    code, out, _ = run(capsys, "ops", "list")
    line = next(l for l in out.splitlines() if l.startswith("rms_norm "))
    assert code == 0 and "triton, reference" in line


def test_ops_test_passes(capsys):
    code, out, _ = run(capsys, "ops", "test", "--ops", "rms_norm", "--rows", "3", "--dtypes", "fp32,bf16")
    lines = [l.split() for l in out.splitlines()[1:-1]]
    assert code == 0 and [(l[0], l[1], l[2], l[3]) for l in lines] == [
        ("rms_norm", "3", "float32", "pass"), ("rms_norm", "3", "bfloat16", "pass")]
    assert out.splitlines()[-1] == "2 pass, 0 FAIL, 0 error, 0 skip"


def test_ops_test_reports_a_wrong_kernel(capsys, monkeypatch):
    entry = get("rms_norm")
    monkeypatch.setattr(entry, "triton", lambda x, w, eps=1e-6: entry.reference(x, w, eps) * 1.01)
    code, out, _ = run(capsys, "ops", "test", "--ops", "rms_norm", "--rows", "2", "--dtypes", "fp32")
    assert code == 1 and " FAIL " in out and "Mismatched elements" in out


def test_ops_test_reports_a_crash(capsys, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("kernel exploded")
    monkeypatch.setattr(get("rms_norm"), "triton", crash)
    code, out, _ = run(capsys, "ops", "test", "--ops", "rms_norm", "--rows", "2", "--dtypes", "fp16")
    assert code == 1 and "error" in out and "RuntimeError: kernel exploded" in out


@pytest.mark.parametrize("argv, message", [
    (["ops", "test", "--ops", "nosuch"], "unknown op 'nosuch'"),
    (["ops", "test", "--dtypes", "fp8"], "--dtypes must be chosen from fp32, fp16, bf16, got fp8"),
    (["bench", "ops", "--ops", "nosuch"], "unknown op 'nosuch'"),
])
def test_bad_values_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["ops", "test", "--rows", "1,x"], "expected a comma-separated list of int, got '1,x'"),
    (["ops", "test", "--rows", "-1"], "non-negative"),
    (["bench", "ops", "--dtype", "fp8"], "invalid choice: 'fp8'"),
    (["bench", "ops", "--suite", "nope"], "invalid choice: 'nope'"),
    (["bench"], "required"),
    ([], "required"),
])
def test_bad_syntax_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_demo_wiring(capsys, monkeypatch, tmp_path):
    checked = []
    monkeypatch.setattr(selftest, "run_selftest",
                        lambda entries, rows, dtypes, on_result: checked.append(entries) or [])
    monkeypatch.setattr(bench_ops, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # its CPU compile is not under test
    code, out, _ = run(capsys, "ops", "demo", "--bench-ops", "rms_norm,not_an_op", "--out-dir", str(tmp_path))
    assert code == 0 and len(checked) == 1 and "demo done: op checks passed" in out
    assert "--ops rms_norm)" in out and len(list(tmp_path.glob("ops-quick-*.json"))) == 1

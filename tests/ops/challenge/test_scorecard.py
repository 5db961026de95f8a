"""The scorecard's bookkeeping: pytest outcomes and categories per op, targets, and the report files."""
import json
import textwrap

import pytest
import torch

from flagstack.ops.score import CATEGORIES, OpScore, geomean, run_tests, score, write_reports

FAKE_TESTS = '''
import pytest

@pytest.mark.covers("small", "errors")
def test_passes():
    assert 1 + 1 == 2

@pytest.mark.covers("out")
def test_fails():
    assert 1 + 1 == 3

@pytest.mark.covers("large")
@pytest.mark.skipif(True, reason="gpu only")
def test_skipped():
    pass
'''


def test_run_tests_counts_outcomes_and_categories(tmp_path):
    (tmp_path / "test_fakeop.py").write_text(textwrap.dedent(FAKE_TESTS))
    scores = {"fakeop": OpScore("fakeop"), "absent": OpScore("absent")}
    run_tests(scores, tmp_path)
    fake = scores["fakeop"]
    assert (fake.passed, fake.failed, fake.skipped) == (1, 1, 1)
    checklist = fake.checklist()
    assert checklist["small"] == "yes" and checklist["errors"] == "yes"
    assert checklist["large"] == "skipped" and checklist["out"] == "missing"
    assert fake.summary()["categories"] == f"2/{len(CATEGORIES)}"
    assert scores["absent"].passed == 0  # an op without a test file is scored, not an error
    assert fake.tested and not scores["absent"].tested


def test_categories_an_op_cannot_have_count_neither_way():
    # roll has no in-place form in ATen: "n/a", and left out of the count; a category it lacks stays "missing"
    assert not hasattr(torch.Tensor, "roll_")
    roll = OpScore("roll", covered={"small", "out"}, tested=True)
    assert roll.checklist()["inplace"] == "n/a" and roll.checklist()["empty"] == "missing"
    assert roll.summary()["categories"] == f"2/{len(CATEGORIES) - 1}"
    log10 = OpScore("log10", covered={"inplace"}, tested=True)
    assert log10.checklist()["inplace"] == "yes" and log10.checklist()["params"] == "n/a"


def test_summary_speed_targets():
    assert geomean([]) is None and geomean([2.0, 8.0]) == pytest.approx(4.0)
    fast = OpScore("a", speed=[{"speedup": 1.5, "vs_flaggems": 1.1}, {"speedup": 1.0, "vs_flaggems": None}])
    row = fast.summary()
    assert row["min_speedup"] == 1.0 and row["geomean_speedup"] == pytest.approx(1.5 ** 0.5)
    assert row["targets_met"] is True
    slow = OpScore("b", speed=[{"speedup": 2.0, "vs_flaggems": 0.8}, {"speedup": 3.0}])
    assert slow.summary()["targets_met"] is False  # slower than FlagGems
    below_bar = OpScore("c", speed=[{"speedup": 0.85}, {"speedup": 4.0}])
    assert below_bar.summary()["targets_met"] is False  # one shape under 0.9x
    assert "targets_met" not in OpScore("d").summary()  # no timings, no verdict
    host_bound = OpScore("e", speed=[{"speedup": 0.5, "gpu_speedup": 1.4}, {"speedup": 2.0, "gpu_speedup": None}])
    row = host_bound.summary()  # GPU-only time is reported beside the wall-time verdict, not in it
    assert row["min_gpu_speedup"] == 1.4 and row["targets_met"] is False
    at_copy = OpScore("f", speed=[{"speedup": 1.0, "speedup_at_copy_speed": 1.02}, {"speedup": 1.0}])
    assert at_copy.summary()["geomean_at_copy_speed"] == pytest.approx(1.02)  # rows without a copy time left out


def test_write_reports(tmp_path):
    s = OpScore("log10", passed=3, covered={"small"}, speed=[{"op": "log10", "shape": "4x4", "speedup": 1.3}],
                tested=True)
    paths = write_reports({"log10": s}, tmp_path, note="a note")
    body = json.loads(paths[0].read_text())
    assert body["summary"][0]["op"] == "log10" and body["meta"]["note"] == "a note"
    assert body["ops"]["log10"]["checklist"]["small"] == "yes"
    assert "## log10" in paths[1].read_text()
    page = paths[2].read_text()
    assert page.startswith("<!doctype html>") and "<h2>log10</h2>" in page


def test_unknown_op():
    with pytest.raises(ValueError, match="challenge ops"):
        score(["nope"], tests=False, speed=False)


def test_run_tests_over_xdist_workers_keeps_categories(tmp_path):
    pytest.importorskip("xdist")
    # its own module name: the collect-only pass imports it in this process, beside the test above's
    (tmp_path / "test_fakeop2.py").write_text(textwrap.dedent(FAKE_TESTS))
    scores = {"fakeop2": OpScore("fakeop2")}
    run_tests(scores, tmp_path, workers=2)
    fake = scores["fakeop2"]
    assert (fake.passed, fake.failed, fake.skipped) == (1, 1, 1)
    assert fake.checklist()["small"] == "yes" and fake.checklist()["large"] == "skipped"


def test_speed_written_as_it_goes_and_resumed(tmp_path, monkeypatch):
    from flagstack.ops import score as score_module
    timed = []

    def fake_time_op(op, rows, cols, dtype, device):
        if op == "cosh" and not timed.count("allow cosh"):
            raise RuntimeError("machine lost")  # the run dies on its second op
        timed.append(op)
        return {"op": op, "shape": f"{rows}x{cols}", "speedup": 1.0}
    monkeypatch.setattr(score_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(score_module, "device_description", lambda: "Test GPU")
    monkeypatch.setattr(score_module, "time_op", fake_time_op)
    with pytest.raises(RuntimeError, match="machine lost"):
        score(["log10", "cosh"], tests=False, out_dir=tmp_path)
    (report,) = tmp_path.glob("score-*.json")
    body = json.loads(report.read_text())
    assert body["meta"]["status"] == "in progress: 1 of 2 ops timed" and len(body["ops"]["log10"]["speed"]) == 3
    assert not list(tmp_path.glob("*.partial"))
    timed.append("allow cosh")
    scores, _ = score(["log10", "cosh"], tests=False, out_dir=tmp_path, note="run on a test GPU")
    assert timed.count("log10") == 3 and timed.count("cosh") == 3  # log10 came from the report, not re-timed
    assert json.loads(report.read_text())["meta"]["status"] == "complete"
    score(["log10"], tests=False, out_dir=tmp_path, fresh=True)
    assert timed.count("log10") == 6
    assert json.loads(report.read_text())["meta"]["note"] == "run on a test GPU"  # kept by a run that gave none
    assert set(json.loads(report.read_text())["ops"]) == {"log10", "cosh"}  # a run of one op keeps the other


def test_what_a_run_skips_stays_as_measured_before(tmp_path):
    earlier = OpScore("log10", passed=5, failed=1, covered={"small"}, gpu_only={"large"},
                      speed=[{"op": "log10", "shape": "4x4", "speedup": 1.3}], tested=True)
    write_reports({"log10": earlier}, tmp_path)
    scores, _ = score(["log10"], tests=False, speed=False, out_dir=tmp_path)
    again = scores["log10"]
    assert (again.passed, again.failed, again.covered, again.gpu_only) == (5, 1, {"small"}, {"large"})
    assert again.speed == earlier.speed


def test_a_speed_only_report_says_its_tests_were_not_run(tmp_path):
    write_reports({"log10": OpScore("log10", speed=[{"op": "log10", "shape": "4x4", "speedup": 1.3}])}, tmp_path)
    (report,) = tmp_path.glob("score-*.json")
    body = json.loads(report.read_text())
    row, checklist = body["summary"][0], body["ops"]["log10"]["checklist"]
    assert (row["passed"], row["failed"], row["categories"]) == (None, None, "not run")  # not "0 passed"
    assert checklist["small"] == "not run" and checklist["params"] == "n/a"
    scores, _ = score(["log10"], tests=False, speed=False, out_dir=tmp_path)
    assert not scores["log10"].tested  # read back as untested, not as zero tests

"""The accuracy summary of a sweep: test and dev rows, the LLM row chosen on dev, and its paired
comparison with every no-LLM row (counts checked by hand)."""
import json

import pytest

from flagstack.annotate.prompt import PromptConfig
from flagstack.annotate.sweep import RunSpec, standard_sweep
from flagstack.bench.annotate import accuracy_summary, main
from tests.annotate.fakes import KeywordBackend, toy_items, toy_task

CFG = PromptConfig(max_prompt_tokens=600, demo_tokens=60, query_tokens=200, overlap=20)


def test_accuracy_summary_chooses_on_dev_and_pairs(tmp_path):
    # ' cherry' is biased: uncalibrated 'zero' says cherry for everything (dev accuracy 1/3); 'knn'
    # with contextual calibration is right everywhere.
    specs = [RunSpec("zero", "none", calibration="none", prompt=CFG), RunSpec("knn", "knn", 2, prompt=CFG)]
    args = (toy_task(), KeywordBackend(bias={"cherry": 14.0}), toy_items(9, "p"), toy_items(6, "dev"), toy_items(4),
            tmp_path, specs)
    standard_sweep(*args, progress=False, dev_only=True)
    standard_sweep(*args, progress=False)
    rows, summary = accuracy_summary(str(tmp_path))
    assert {(r["split"], r["run"]) for r in rows} == {(s, r) for s in ("test", "dev") for r in
                                                     ("zero", "knn", "majority", "tfidf_knn", "tfidf_linear")}
    assert summary["chosen_on_dev"] == "knn"
    majority = next(p for p in summary["paired"] if p["b"] == "majority")
    # Pool labels tie 3/3/3, so majority says 'apple': right on test items 0 and 3 of 4; knn on all 4.
    assert majority == {"a": "knn", "b": "majority", "n": 4, "diff": 0.5, "only_a": 2, "only_b": 0,
                        "p_value": pytest.approx(0.5)}
    assert main(["--out-dir", str(tmp_path / "res"), "accuracy", "--runs-dir", str(tmp_path)]) == 0
    (path,) = (tmp_path / "res").glob("annotate-accuracy-*.json")
    saved = json.loads(path.read_text())
    assert saved["meta"]["chosen_on_dev"] == "knn" and len(saved["rows"]) == 10
    with pytest.raises(ValueError, match="no \\*.eval.json"):
        accuracy_summary(str(tmp_path / "empty"))

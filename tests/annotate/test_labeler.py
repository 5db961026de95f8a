"""The labeler with a hand-computable fake backend: label choice, calibration, chunks, resume after a
crash, multi-label thresholds, review file; and the no-LLM baselines."""
import json

import numpy as np
import pytest

from flagstack.annotate.baselines import run_baseline
from flagstack.annotate.demos import RandomSelector
from flagstack.annotate.labeler import Labeler, LabelerConfig
from flagstack.annotate.output import ResultWriter, read_results
from flagstack.annotate.prompt import PromptBuilder, PromptConfig
from flagstack.annotate.sweep import RunSpec, llm_run
from tests.annotate.fakes import KeywordBackend, toy_items, toy_task

CFG = PromptConfig(max_prompt_tokens=600, demo_tokens=60, query_tokens=200, overlap=20)


def _labeler(backend, calibration="none", task=None, k=0, batch=2):
    task = task or toy_task()
    return Labeler(task, backend, PromptBuilder(task, backend.tokenizer, CFG),
                   [RandomSelector(toy_items(6, "d"), k)], LabelerConfig(calibration=calibration, batch_items=batch))


def test_labels_probs_and_provenance():
    rows = _labeler(KeywordBackend()).run(toy_items(5), progress=False)
    assert [r["label"] for r in rows] == [r["gold"] for r in rows]
    # 'apple' appears twice in item 0: scores [2, 0, 0] per token -> softmax over (2/6, 0, 0) (lengths 6,7,7)
    s = np.array([2 / 6, 0, 0])
    np.testing.assert_allclose(list(rows[0]["probs"].values()), np.exp(s) / np.exp(s).sum(), atol=1e-6)
    assert rows[0]["model"] == "fake" and len(rows[0]["prompt_hash"]) == 16 and rows[0]["chunks"] == 1


def test_contextual_calibration_removes_label_bias():
    biased = KeywordBackend(bias={"cherry": 14.0})  # 2 per token for ' cherry': beats any keyword count
    assert {r["label"] for r in _labeler(biased).run(toy_items(6), progress=False)} == {"cherry"}
    rows = _labeler(KeywordBackend(bias={"cherry": 14.0}), "contextual").run(toy_items(6), progress=False)
    assert [r["label"] for r in rows] == [r["gold"] for r in rows]


def test_dev_prior_and_temperature_fit():
    lab = _labeler(KeywordBackend(bias={"cherry": 14.0}), "dev_prior")
    cal = lab.fit(toy_items(6, "dev"))
    assert cal.bias is not None and cal.temperature != 1.0
    assert [r["label"] for r in lab.run(toy_items(6), progress=False)] == [r["gold"] for r in toy_items(6)]


def test_long_item_is_chunked_and_aggregated():
    item = {"id": "long", "text": "banana " * 30 + "filler " * 60 + "banana", "gold": "banana"}
    row = _labeler(KeywordBackend()).run([item], progress=False)[0]
    assert row["chunks"] > 1 and row["label"] == "banana"


def test_resume_after_crash(tmp_path):
    path = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="simulated crash"):
        with ResultWriter(path) as writer:
            _labeler(KeywordBackend(crash_after=4)).run(toy_items(7), writer, progress=False)
    assert [r["id"] for r in read_results(path)] == ["t0", "t1", "t2", "t3"]  # two batches of 2 made it
    backend = KeywordBackend()
    with ResultWriter(path) as writer:
        new = _labeler(backend).run(toy_items(7), writer, progress=False)
    assert [r["id"] for r in new] == ["t4", "t5", "t6"] and backend.prompts_seen == 3
    assert len(read_results(path)) == 7


def test_multi_label_thresholds():
    task = toy_task(type="multi_label", labels=[{"name": "apple", "threshold": 0.3}, {"name": "banana", "threshold": 0.3},
                                                {"name": "cherry", "threshold": 0.9}])
    item = {"id": "m", "text": "apple apple apple apple apple apple banana banana banana banana banana banana banana",
            "gold": None}
    row = _labeler(KeywordBackend(), task=task).run([item], progress=False)[0]
    assert row["labels"] == ["apple", "banana"]


def test_llm_run_writes_results_review_and_record(tmp_path):
    spec = RunSpec("toy-run", "random", 3, calibration="none", prompt=CFG)
    record = llm_run(spec, toy_task(), KeywordBackend(), toy_items(6, "d"), [], toy_items(4), tmp_path,
                     review_threshold=0.99, progress=False)
    assert record["accuracy"] == 1.0 and record["n"] == 4 and record["shots"] == 3.0
    assert record["review"] == 4 and len((tmp_path / "toy-run.review.jsonl").read_text().splitlines()) == 4
    assert json.loads((tmp_path / "toy-run.eval.json").read_text())["run"] == "toy-run"


def test_baselines():
    pool, items, labels = toy_items(30, "p"), toy_items(6), ["apple", "banana", "cherry"]
    for name in ("tfidf_knn", "tfidf_linear"):
        rows, _ = run_baseline(name, pool, items, labels)
        assert [r["label"] for r in rows] == [r["gold"] for r in rows]
    rows, _ = run_baseline("majority", pool[:4], items, labels)  # pool labels a,b,c,a -> apple 0.5
    assert {r["label"] for r in rows} == {"apple"} and rows[0]["confidence"] == 0.5
    with pytest.raises(ValueError, match="baseline"):
        run_baseline("svm", pool, items, labels)


def test_standard_sweep_rows(tmp_path):
    from flagstack.annotate.report import load_records
    from flagstack.annotate.sweep import standard_sweep

    specs = [RunSpec("zero", "none", calibration="none", prompt=CFG),
             RunSpec("knn", "knn", 2, calibration="contextual", prompt=CFG),
             RunSpec("mmr-sc", "mmr", 2, prompt=CFG), RunSpec("rand-sc", "random", 3, prompt=CFG, demo_sets=2)]
    standard_sweep(toy_task(), KeywordBackend(), toy_items(9, "p"), toy_items(3, "dev"), toy_items(4), tmp_path,
                   specs, progress=False)
    runs = {r["run"]: r for r in load_records(tmp_path)}
    assert set(runs) == {"majority", "tfidf_knn", "tfidf_linear", "zero", "knn", "mmr-sc", "rand-sc"}
    assert runs["knn"]["shots"] == 2.0 and runs["rand-sc"]["shots"] == 6.0  # two demo sets of 3
    assert runs["zero"]["accuracy"] == 1.0 and not runs["majority"]["llm"]


def test_dev_accuracy_of_every_calibration_from_one_pass():
    # ' cherry' has a bias of 2 per token: uncorrected, every item is 'cherry' (1/3 right); the
    # content-free item and the dev prior both remove the bias.
    lab = _labeler(KeywordBackend(bias={"cherry": 14.0}), "contextual")
    lab.fit(toy_items(6, "dev"))
    assert lab.dev_accuracy == {"none": pytest.approx(1 / 3), "contextual": 1.0, "dev_prior": 1.0,
                                "contextual+dev_prior": 1.0}
    plain = _labeler(KeywordBackend(bias={"cherry": 14.0}), "none")
    plain.fit(toy_items(6, "dev"))
    assert set(plain.dev_accuracy) == {"none", "dev_prior"}  # no content-free scores were computed


def test_dev_cache_is_reused_and_extended(tmp_path):
    cache = tmp_path / "dev.jsonl"
    first = _labeler(KeywordBackend(bias={"cherry": 14.0}), "contextual")
    cal = first.fit(toy_items(4, "dev"), cache)
    backend = KeywordBackend(bias={"cherry": 14.0})
    again = _labeler(backend, "contextual+dev_prior")
    again.fit(toy_items(4, "dev"), cache)
    assert backend.prompts_seen == 0 and again.dev_accuracy == first.dev_accuracy
    assert again.calibration.bias is not None and cal.bias is None
    again.fit(toy_items(6, "dev"), cache)  # two new items: 2 prompts + the content-free one
    assert backend.prompts_seen == 3 and len(read_results(cache)) == 6


def test_sweep_dev_only_never_reads_the_test_set(tmp_path):
    from flagstack.annotate.report import load_records
    from flagstack.annotate.sweep import standard_sweep

    class Recording(KeywordBackend):
        def score(self, prompts, candidates):
            self.texts = getattr(self, "texts", []) + [self.tokenizer.decode(p) for p in prompts]
            return super().score(prompts, candidates)

    backend = Recording()
    test = [dict(it, text=it["text"] + " SECRET") for it in toy_items(4)]
    specs = [RunSpec("knn", "knn", 2, prompt=CFG)]
    standard_sweep(toy_task(), backend, toy_items(9, "p"), toy_items(3, "dev"), test, tmp_path, specs,
                   progress=False, dev_only=True)
    assert not any("SECRET" in t for t in backend.texts)
    runs = {r["run"]: r for r in load_records(tmp_path / "dev")}
    assert set(runs) == {"majority", "tfidf_knn", "tfidf_linear", "knn"} and runs["knn"]["n"] == 3
    assert runs["knn"]["split"] == "dev" and runs["knn"]["dev_accuracy"]["contextual"] == runs["knn"]["accuracy"]
    # The test run reuses the dev scores: only test prompts (and content-free ones) are scored.
    backend.texts = []
    record = llm_run(specs[0], toy_task(), backend, toy_items(9, "p"), toy_items(3, "dev"), test, tmp_path,
                     progress=False)
    assert all("SECRET" in t or "N/A" in t for t in backend.texts) and record["accuracy"] == 1.0
    lo, hi = record["accuracy_ci95"]
    assert lo < 1.0 == hi


def test_dev_cache_path_ignores_name_and_calibration_only():
    import dataclasses

    from flagstack.annotate.sweep import dev_cache_path

    spec, pool, task = RunSpec("a", "knn", 2, prompt=CFG), toy_items(9, "p"), toy_task()
    path = dev_cache_path(spec, task, "m", pool, "out")
    assert path == dev_cache_path(dataclasses.replace(spec, name="b", calibration="dev_prior"), task, "m", pool, "out")
    assert len({path, dev_cache_path(dataclasses.replace(spec, shots=3), task, "m", pool, "out"),
                dev_cache_path(spec, task, "other-model", pool, "out"),
                dev_cache_path(spec, task, "m", pool[:8], "out"),
                dev_cache_path(spec, toy_task(instruction="Other."), "m", pool, "out")}) == 5


def test_standard_specs_budgets():
    from flagstack.annotate.sweep import standard_specs

    specs = {s.name: s for s in standard_specs(4, 3000, 224, 120, 80, 1, 2)}
    assert len(specs) == 13 and specs["4-shot-knn"].prompt.demo_tokens == 120
    assert specs["zero-shot-linear-readout"].readout == "linear" and specs["zero-shot-knn-prompting"].readout == "knn"
    assert specs["many-shot-knn-balanced"].per_label == 2 and specs["many-shot-knn"].per_label is None
    many = specs["many-shot-knn-balanced"].prompt
    assert (many.max_prompt_tokens, many.demo_tokens, many.query_tokens, many.max_chunks, many.order) == (
        3000, 80, 224, 1, "nearest_last")

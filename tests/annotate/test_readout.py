"""Readouts of the answer distribution fitted on the demo pool: merge, features, the kNN vote by KL
(checked against a loop over the definition), the linear readout, and the labeler and sweep around them
on the word-counting fake backend."""
import dataclasses
import math

import numpy as np
import pytest

from flagstack.annotate.demos import FixedSelector, RandomSelector
from flagstack.annotate.labeler import Labeler, LabelerConfig
from flagstack.annotate.output import read_results
from flagstack.annotate.prompt import PromptBuilder, PromptConfig
from flagstack.annotate.readout import Readout, merge
from flagstack.annotate.sweep import RunSpec, dev_cache_path, llm_run, standard_specs
from tests.annotate.fakes import ByteTokenizer, KeywordBackend, toy_task

CFG = PromptConfig(max_prompt_tokens=600, demo_tokens=60, query_tokens=200, overlap=20)
# Items name no label: label scoring cannot tell them apart, the rest of the answer distribution can.
WORDS = {"apple": ["red", "round", "crisp"], "banana": ["yellow", "long", "soft"], "cherry": ["dark", "small", "stone"]}


def items(n: int, prefix: str, seed: int = 0) -> list[dict]:
    rng, names = np.random.default_rng(seed), list(WORDS)
    out = []
    for i in range(n):
        gold = names[i % 3]
        words = list(rng.choice(WORDS[gold], 3)) + list(rng.choice(["the", "a", "one", "fruit"], 3))
        out.append({"id": f"{prefix}{i}", "text": " ".join(words), "gold": gold})
    return out


def labeler(backend, readout="linear", selector=None, calibration="none", task=None, **config):
    task = task or toy_task()
    selector = selector or RandomSelector(items(3, "d"), 0)
    return Labeler(task, backend, PromptBuilder(task, backend.tokenizer, CFG), [selector],
                   LabelerConfig(calibration=calibration, readout=readout, **config))


def test_merge_is_the_mean_in_probability():
    a, b = {"x": math.log(0.6), "y": math.log(0.3)}, {"x": math.log(0.5)}
    got = merge([a, b])
    # y is missing from b: it counts at b's floor, one nat below b's smallest kept log-prob
    assert got["x"] == pytest.approx(math.log((0.6 + 0.5) / 2))
    assert got["y"] == pytest.approx(math.log((0.3 + 0.5 * math.exp(-1)) / 2))
    assert merge([a]) is a


def test_features_floor_tokens_outside_the_top_k():
    readout = Readout("linear", 2).fit([{"a": -1.0, "b": -3.0}, {"c": -0.5}], [0, 1])
    np.testing.assert_allclose(readout.features([{"a": -1.0, "b": -3.0}, {"z": -2.0}]),
                               [[-1.0, -3.0, -4.0], [-3.0, -3.0, -3.0]])


def test_knn_readout_votes_by_kl_to_each_anchor():
    rng = np.random.default_rng(1)
    tokens = ["t0", "t1", "t2", "t3"]
    anchors = [dict(zip(tokens, np.log(rng.dirichlet(np.ones(4))).tolist())) for _ in range(7)]
    gold = [0, 1, 2, 0, 1, 2, 0]
    query = dict(zip(tokens, np.log(rng.dirichlet(np.ones(4))).tolist()))
    for k in (1, 3):
        readout = Readout("knn", 3, k=k).fit(anchors, gold)
        kl = []
        for anchor in anchors:  # KL(anchor || query) over the four tokens, straight from the definition
            p = np.exp([anchor[t] for t in tokens])
            q = np.exp([query[t] for t in tokens])
            p, q = p / p.sum(), q / q.sum()
            kl.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
        votes = np.bincount(np.array(gold)[np.argsort(kl)[:k]], minlength=3)
        want = (votes + 0.5 / 3) / (k + 0.5)
        np.testing.assert_allclose(np.exp(readout.log_proba([query])[0]), want, rtol=1e-9)


def test_views_put_features_side_by_side_and_knn_sums_their_kl():
    rng = np.random.default_rng(3)  # a seed where the nearest anchor differs by view 0, view 1 and both
    tokens = [["a0", "a1", "a2"], ["b0", "b1", "b2", "b3"]]
    def doc():  # one distribution per view
        return [dict(zip(t, np.log(rng.dirichlet(np.ones(len(t)))).tolist())) for t in tokens]
    pool, gold, query = [doc() for _ in range(8)], [0, 1, 2, 0, 1, 2, 0, 1], doc()
    linear = Readout("linear", 3).fit(pool, gold)
    # each view's columns are exactly what a one-view readout fitted on that view gives
    for view in range(2):
        alone = Readout("linear", 3).fit([d[view] for d in pool], gold)
        np.testing.assert_array_equal(linear.view_features([query])[view], alone.features([query[view]]))
    assert linear.features([query]).shape == (1, 7)
    def kl(p_view, q_view, toks):  # KL(p || q) straight from the definition
        p = np.exp([p_view[t] for t in toks])
        q = np.exp([q_view[t] for t in toks])
        p, q = p / p.sum(), q / q.sum()
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    total = [sum(kl(a[v], query[v], tokens[v]) for v in range(2)) for a in pool]
    for k in (1, 3):
        votes = np.bincount(np.array(gold)[np.argsort(total)[:k]], minlength=3)
        got = np.exp(Readout("knn", 3, k=k).fit(pool, gold).log_proba([query])[0])
        np.testing.assert_allclose(got, (votes + 0.5 / 3) / (k + 0.5), rtol=1e-9)
    with pytest.raises(ValueError, match="needs 2 view"):
        linear.log_proba([query[0]])
    with pytest.raises(ValueError, match="same number"):
        Readout("linear", 3).fit([pool[0], pool[1][0]], [0, 1])


class ViewBackend(KeywordBackend):
    """Answers after 'Label:' with the same distribution for every item; after any other answer prefix,
    with the item's words (as KeywordBackend): only an extra view can tell the items apart."""

    def answer_distribution(self, prompts, k):
        words = super().answer_distribution(prompts, k)
        return [{"same": 0.0} if self.tokenizer.decode(p).endswith("Label:") else d for p, d in zip(prompts, words)]


def test_an_extra_view_labels_what_the_main_prompt_cannot(tmp_path):
    test, pool, cache = items(9, "t", seed=1), items(30, "p"), tmp_path / "pool.jsonl"
    main_only = labeler(ViewBackend())
    main_only.fit_readout(pool)
    assert len({r["label"] for r in main_only.run(test, progress=False)}) == 1  # every item looks the same
    task = toy_task()
    viewed = Labeler(task, ViewBackend(), PromptBuilder(task, ByteTokenizer(), CFG), [RandomSelector(items(3, "d"), 0)],
                     LabelerConfig(calibration="none", readout="linear"), view_prefixes=("Words:",))
    viewed.fit_readout(pool, cache)
    rows = viewed.run(test, progress=False)
    assert [r["label"] for r in rows] == [r["gold"] for r in rows] and rows[0]["views"] == ["Words:"]
    backend = ViewBackend()  # the pool's views come back from the cache, token keys and all
    again = Labeler(task, backend, PromptBuilder(task, ByteTokenizer(), CFG), [RandomSelector(items(3, "d"), 0)],
                    LabelerConfig(calibration="none", readout="linear"), view_prefixes=("Words:",))
    again.fit_readout(pool, cache)
    assert backend.prompts_seen == 0
    assert [r["probs"] for r in again.run(test, progress=False)] == [r["probs"] for r in rows]


def test_view_errors():
    task = toy_task()
    def make(prefixes, readout="linear"):
        return Labeler(task, KeywordBackend(), PromptBuilder(task, ByteTokenizer(), CFG), [RandomSelector([], 0)],
                       LabelerConfig(calibration="none", readout=readout), view_prefixes=prefixes)
    with pytest.raises(ValueError, match="need a readout"):
        make(("Words:",), "labels")
    with pytest.raises(ValueError, match="must differ"):
        make(("Label:",))
    with pytest.raises(ValueError, match="must differ"):
        make(("Words:", "Words:"))
    with pytest.raises(ValueError, match="views need a readout"):
        RunSpec("x", views=("Words:",))


def test_standard_specs_read_the_task_views(tmp_path):
    specs = {s.name: s for s in standard_specs(view_prefixes=("Words:", "Kind:"))}
    assert specs["5-shot-knn-3-view-readout"].views == ("Words:", "Kind:")
    assert specs["zero-shot-3-view-readout"].selection == "none"
    assert not any(s.views for s in standard_specs())
    spec = RunSpec("views", "none", calibration="none", prompt=CFG, readout="linear", views=("Words:",))
    record = llm_run(spec, toy_task(), ViewBackend(), items(30, "p"), items(6, "dev", seed=3), items(9, "t", seed=1),
                     tmp_path, progress=False)
    assert record["accuracy"] == 1.0 and tuple(record["spec"]["views"]) == ("Words:",)


def test_readout_errors():
    with pytest.raises(ValueError, match="readout must be one of"):
        Readout("svm", 2)
    with pytest.raises(ValueError, match="k must be"):
        Readout("knn", 2, k=0)
    with pytest.raises(ValueError, match="not fitted"):
        Readout("linear", 2).log_proba([{"a": -1.0}])
    with pytest.raises(ValueError, match="one gold label per distribution"):
        Readout("linear", 2).fit([{"a": -1.0}], [0, 1])
    with pytest.raises(ValueError, match="two labels"):
        Readout("linear", 2).fit([{"a": -1.0}, {"b": -1.0}], [1, 1])


@pytest.mark.parametrize("kind", ["linear", "knn"])
def test_readout_labels_what_label_scoring_cannot(kind):
    test = items(9, "t", seed=1)
    plain = Labeler(toy_task(), KeywordBackend(), PromptBuilder(toy_task(), KeywordBackend().tokenizer, CFG),
                    [RandomSelector(items(3, "d"), 0)], LabelerConfig(calibration="none"))
    assert {r["label"] for r in plain.run(test, progress=False)} == {"apple"}  # every label scores 0: a tie
    lab = labeler(KeywordBackend(), kind, readout_neighbours=3)
    lab.fit_readout(items(30, "p"))
    rows = lab.run(test, progress=False)
    assert [r["label"] for r in rows] == [r["gold"] for r in rows]
    assert rows[0]["readout"] == kind and abs(sum(rows[0]["probs"].values()) - 1) < 1e-6


def test_fit_readout_leaves_out_pool_documents_among_their_own_demos():
    pool = items(2, "p")
    lab = labeler(KeywordBackend(), selector=FixedSelector(pool, ["p0", "p1"]))
    with pytest.raises(ValueError, match="outside its own demos"):
        lab.fit_readout(pool)
    lab = labeler(KeywordBackend(), selector=FixedSelector(pool, ["p0"]))
    with pytest.raises(ValueError, match="two labels"):  # p1 alone is left: one label
        lab.fit_readout(pool)


def test_readout_config_errors():
    with pytest.raises(ValueError, match="fit_readout"):
        labeler(KeywordBackend()).run(items(2, "t"), progress=False)
    with pytest.raises(ValueError, match="fit_readout"):
        labeler(KeywordBackend()).fit(items(2, "dev"))
    with pytest.raises(ValueError, match="does not apply to readout"):
        LabelerConfig(calibration="contextual", readout="knn")
    with pytest.raises(ValueError, match="readout must be one of"):
        LabelerConfig(readout="probe")
    with pytest.raises(ValueError, match="single_label"):
        labeler(KeywordBackend(), task=toy_task(type="multi_label"))
    with pytest.raises(ValueError, match="needs a readout"):
        Labeler(toy_task(), KeywordBackend(), PromptBuilder(toy_task(), KeywordBackend().tokenizer, CFG),
                [RandomSelector(items(3, "d"), 0)]).fit_readout(items(3, "p"))


class IdKeyBackend(KeywordBackend):
    """Names answer tokens by integer ids, as the engine does (JSON object keys would turn them into strings)."""

    def answer_distribution(self, prompts, k):
        return [{sum(w.encode()): v for w, v in d.items()} for d in super().answer_distribution(prompts, k)]


def test_pool_scores_are_cached_with_their_token_ids(tmp_path):
    cache, pool, test = tmp_path / "pool.jsonl", items(12, "p"), items(6, "t", seed=2)
    first = labeler(IdKeyBackend())
    first.fit_readout(pool, cache)
    want = first.run(test, progress=False)
    backend = IdKeyBackend()
    again = labeler(backend)
    again.fit_readout(pool, cache)
    assert backend.prompts_seen == 0 and len(read_results(cache)) == 12
    assert all(isinstance(key, int) for key in again.readout.vocabs[0])
    assert [r["probs"] for r in again.run(test, progress=False)] == [r["probs"] for r in want]


def test_llm_run_with_a_readout(tmp_path):
    spec = RunSpec("readout", "none", calibration="none", prompt=CFG, readout="linear")
    record = llm_run(spec, toy_task(), KeywordBackend(), items(30, "p"), items(6, "dev", seed=3),
                     items(9, "t", seed=1), tmp_path, progress=False)
    assert record["accuracy"] == 1.0 and record["readout"] == "linear" and record["dev_accuracy"]["none"] == 1.0
    assert len(list((tmp_path / "pool-cache").glob("*.jsonl"))) == 1
    # the knn and linear readouts read the same distributions; label scoring keeps its own cache
    knn = dataclasses.replace(spec, readout="knn")
    pool = items(30, "p")
    assert dev_cache_path(knn, toy_task(), "m", pool, "o") == dev_cache_path(spec, toy_task(), "m", pool, "o")
    assert dev_cache_path(dataclasses.replace(spec, readout="labels"), toy_task(), "m", pool, "o") != \
        dev_cache_path(spec, toy_task(), "m", pool, "o")
    with pytest.raises(ValueError, match="readout must be one of"):
        RunSpec("x", readout="probe")

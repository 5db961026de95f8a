"""Demo selectors: seeded label-balanced random, fixed, kNN (never the item itself), MMR diversity."""
import numpy as np
import pytest

from flagstack.annotate.demos import FixedSelector, KNNSelector, MMRSelector, RandomSelector, TfidfEmbedder


def _pool():
    texts = {"apple": "apple fruit orchard red", "banana": "banana fruit yellow tropical",
             "cherry": "cherry tree small red"}
    return [{"id": f"{g}{i}", "text": f"{texts[g]} {i}", "gold": g} for g in texts for i in range(4)]


def test_random_is_seeded_and_balanced():
    a, b = RandomSelector(_pool(), 6, seed=3).select({}), RandomSelector(_pool(), 6, seed=3).select({})
    assert [d["id"] for d in a] == [d["id"] for d in b]
    assert sorted(d["gold"] for d in a) == ["apple"] * 2 + ["banana"] * 2 + ["cherry"] * 2
    assert [d["id"] for d in RandomSelector(_pool(), 6, seed=4).select({})] != [d["id"] for d in a]
    assert len(RandomSelector(_pool(), 100).select({})) == 12


def test_fixed():
    assert [d["id"] for d in FixedSelector(_pool(), ["cherry1", "apple0"]).select({})] == ["cherry1", "apple0"]
    with pytest.raises(ValueError, match="not in the pool"):
        FixedSelector(_pool(), ["durian"])


class VecEmbedder:
    """Fixed 2-d vectors by text, for hand-checkable similarity."""

    def __init__(self, table):
        self.table = table

    def fit(self, texts):
        return self

    def embed(self, texts):
        return np.array([self.table[t] for t in texts], dtype=float)


def test_knn_ranks_by_similarity_and_skips_itself():
    pool = _pool()
    sel = KNNSelector(pool, 3, TfidfEmbedder())
    got = sel.select({"id": "q", "text": "yellow tropical banana"})
    assert all(d["gold"] == "banana" for d in got)
    assert "apple0" not in [d["id"] for d in sel.select(pool[0])]


def test_mmr_prefers_diverse_demos():
    table = {"a": [1.0, 0.0], "a2": [1.0, 0.0], "b": [0.8, 0.6], "q": [0.99, 0.14]}
    pool = [{"id": k, "text": k, "gold": k} for k in ("a", "a2", "b")]
    item = {"id": "q", "text": "q"}
    assert [d["id"] for d in KNNSelector(pool, 2, VecEmbedder(table)).select(item)] == ["a", "a2"]
    # MMR: after 'a', 'a2' is redundant (sim 1) while 'b' is relevant and different.
    assert [d["id"] for d in MMRSelector(pool, 2, VecEmbedder(table), lam=0.5).select(item)] == ["a", "b"]
    with pytest.raises(ValueError, match="lam"):
        MMRSelector(pool, 2, VecEmbedder(table), lam=2)


def test_knn_per_label_keeps_the_nearest_of_each_label():
    # q is nearest to the three 'a' demos; with per_label=1 the nearest 'a' and then the nearest 'b'.
    table = {"a1": [1.0, 0.0], "a2": [0.99, 0.14], "a3": [0.98, 0.2], "b1": [0.6, 0.8], "b2": [0.0, 1.0],
             "q": [1.0, 0.05]}
    pool = [{"id": k, "text": k, "gold": k[0]} for k in ("a1", "a2", "a3", "b1", "b2")]
    item = {"id": "q", "text": "q"}
    assert [d["id"] for d in KNNSelector(pool, 3, VecEmbedder(table)).select(item)] == ["a1", "a2", "a3"]
    assert [d["id"] for d in KNNSelector(pool, 3, VecEmbedder(table), per_label=1).select(item)] == ["a1", "b1"]
    assert [d["id"] for d in KNNSelector(pool, 3, VecEmbedder(table), per_label=2).select(item)] == ["a1", "a2", "b1"]
    with pytest.raises(ValueError, match="per_label"):
        KNNSelector(pool, 3, VecEmbedder(table), per_label=0)


def test_knn_larger_than_pool_never_returns_the_item():
    pool = _pool()
    got = KNNSelector(pool, 100, TfidfEmbedder()).select(pool[0])
    assert len(got) == len(pool) - 1 and pool[0]["id"] not in [d["id"] for d in got]

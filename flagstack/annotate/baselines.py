"""Labelers that use no LLM, trained on the same demo pool, so the leaderboard shows whether the LLM
earns its cost: majority class, TF-IDF k-nearest-neighbour vote, TF-IDF + logistic regression.
Each returns result rows in the labeler's format (label, confidence, probs), ready for evaluation.
"""
from __future__ import annotations

import collections
import time

import numpy as np

BASELINES = ("majority", "tfidf_knn", "tfidf_linear")


def _rows(items: list[dict], probs: np.ndarray, labels: list[str], method: str) -> list[dict]:
    rows = []
    for item, p in zip(items, probs):
        best = int(np.argmax(p))
        row = {"id": item["id"], "label": labels[best], "confidence": float(p[best]),
               "probs": {n: float(x) for n, x in zip(labels, p)}, "model": method}
        if item.get("gold") is not None:
            row["gold"] = item["gold"]
        rows.append(row)
    return rows


def majority(pool: list[dict], items: list[dict], labels: list[str]) -> np.ndarray:
    """Every item gets the pool's label frequencies (so the most frequent label wins)."""
    counts = collections.Counter(d["gold"] for d in pool)
    freq = np.array([counts[n] for n in labels], dtype=float)
    return np.tile(freq / freq.sum(), (len(items), 1))


def _tfidf(pool: list[dict], items: list[dict]):
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(sublinear_tf=True, stop_words="english")
    return vec.fit_transform([d["text"] for d in pool]), vec.transform([it["text"] for it in items])


def tfidf_knn(pool: list[dict], items: list[dict], labels: list[str], k: int = 5) -> np.ndarray:
    """Vote of the k pool documents nearest by TF-IDF cosine; the vote shares are the probabilities."""
    x_pool, x_items = _tfidf(pool, items)
    sims = (x_items @ x_pool.T).toarray()
    gold = np.array([labels.index(d["gold"]) for d in pool])
    probs = np.zeros((len(items), len(labels)))
    for i, row in enumerate(sims):
        for j in np.argsort(-row, kind="stable")[:k]:
            probs[i, gold[j]] += 1.0 / k
    return probs


def tfidf_linear(pool: list[dict], items: list[dict], labels: list[str]) -> np.ndarray:
    """Logistic regression on TF-IDF features."""
    from sklearn.linear_model import LogisticRegression

    x_pool, x_items = _tfidf(pool, items)
    y = [labels.index(d["gold"]) for d in pool]
    model = LogisticRegression(max_iter=2000, C=10.0).fit(x_pool, y)
    probs = np.zeros((len(items), len(labels)))
    probs[:, model.classes_] = model.predict_proba(x_items)
    return probs


def run_baseline(name: str, pool: list[dict], items: list[dict], labels: list[str]) -> tuple[list[dict], float]:
    """(result rows, seconds) of one no-LLM baseline."""
    fns = {"majority": majority, "tfidf_knn": tfidf_knn, "tfidf_linear": tfidf_linear}
    if name not in fns:
        raise ValueError(f"baseline must be one of {BASELINES}, got {name!r}")
    start = time.perf_counter()
    probs = fns[name](pool, items, labels)
    return _rows(items, probs, labels, name), time.perf_counter() - start

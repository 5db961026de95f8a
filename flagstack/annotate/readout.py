"""Readouts of the model's whole answer distribution, fitted on the demo pool.

Label scoring reads one number per label from the next-token distribution after the answer prefix
("Topic:"). The rest of that distribution (which other words the model expects there) also tells the
topic. A readout uses all of it: every demo-pool document is put through the same prompt, and its
top-k next-token log-probs, with its gold label, train the readout (nothing is fine-tuned; the
model's in-context answer is the feature):
- "knn": kNN prompting (Xu et al., ICLR 2023): the pool documents' distributions are anchors, and an
  item takes the vote of the k anchors nearest to it by KL(anchor || item);
- "linear": multinomial logistic regression on the log-probs of the tokens seen in the pool's top-k.
A token outside a document's top-k gets that document's smallest kept log-prob minus one nat: its
true value is unknown but lower. Distributions are dicts {token key: log-prob}; keys are whatever the
backend names tokens by (ids, or token text from an OpenAI-compatible server), the same for pool and items.
"""
from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, logsumexp

READOUTS = ("labels", "knn", "linear")


def floor(dist: dict) -> float:
    """The log-prob a token outside this top-k distribution is given: one nat below its smallest kept value."""
    return min(dist.values()) - 1.0


def merge(dists: list[dict]) -> dict:
    """The mean (in probability) of several top-k distributions, e.g. of a document's chunks; a token
    missing from one of them counts with that one's floor."""
    if len(dists) == 1:
        return dists[0]
    keys = list(set().union(*dists))
    floors = [floor(d) for d in dists]
    logp = np.array([[d.get(k, f) for k in keys] for d, f in zip(dists, floors)])
    return dict(zip(keys, (logsumexp(logp, axis=0) - np.log(len(dists))).tolist()))


class Readout:
    """Maps answer distributions to label log-probabilities; `fit` on the pool first."""

    def __init__(self, kind: str, n_labels: int, k: int = 9, C: float = 1.0):
        if kind not in READOUTS[1:]:
            raise ValueError(f"readout must be one of {READOUTS[1:]}, got {kind!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.kind, self.n_labels, self.k, self.C = kind, n_labels, k, C
        self.vocab: dict = {}
        self._model = None
        self._anchors: np.ndarray | None = None   # [N, V] normalized probabilities of the pool (knn)
        self._anchor_terms: np.ndarray | None = None  # [N] sum_v p log p of each anchor
        self._gold: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        return bool(self.vocab)

    def features(self, dists: list[dict]) -> np.ndarray:
        """[N, V] log-probs over the pool vocabulary, each row floored below its smallest kept value."""
        x = np.empty((len(dists), len(self.vocab)))
        for row, dist in zip(x, dists):
            row[:] = floor(dist)
            for key, value in dist.items():
                col = self.vocab.get(key)
                if col is not None:
                    row[col] = value
        return x

    def fit(self, dists: list[dict], gold: list[int]) -> "Readout":
        """Fit on pool documents' distributions and their gold label indices."""
        if not dists or len(dists) != len(gold):
            raise ValueError(f"need one gold label per distribution and at least one, got {len(dists)} and {len(gold)}")
        if any(not d for d in dists):
            raise ValueError("every distribution must hold at least one token")
        self.vocab = {key: i for i, key in enumerate(sorted({key for d in dists for key in d}, key=str))}
        x, self._gold = self.features(dists), np.asarray(gold, dtype=int)
        if self.kind == "knn":
            logp = log_softmax(x, axis=1)
            self._anchors = np.exp(logp)
            self._anchor_terms = (self._anchors * logp).sum(1)
        else:
            from sklearn.linear_model import LogisticRegression

            if len(set(self._gold.tolist())) < 2:
                raise ValueError("the linear readout needs pool documents of at least two labels")
            self._model = LogisticRegression(C=self.C, max_iter=3000).fit(x, self._gold)
        return self

    def log_proba(self, dists: list[dict]) -> np.ndarray:
        """[N, n_labels] label log-probabilities (knn: smoothed vote shares)."""
        if not self.fitted:
            raise ValueError("the readout is not fitted: call fit on the demo pool first")
        x = self.features(dists)
        probs = np.zeros((len(dists), self.n_labels))
        if self.kind == "linear":
            probs[:, self._model.classes_] = self._model.predict_proba(x)
        else:
            # KL(anchor || item) = sum_v p_a (log p_a - log p_i): the anchor's own term, minus a matrix product
            kl = self._anchor_terms[None, :] - log_softmax(x, axis=1) @ self._anchors.T
            k = min(self.k, len(self._anchors))
            for row, order in zip(probs, np.argsort(kl, axis=1, kind="stable")[:, :k]):
                np.add.at(row, self._gold[order], 1.0 / k)
            probs = (probs * k + 0.5 / self.n_labels) / (k + 0.5)  # keep every label's log finite
        return np.log(np.clip(probs, 1e-12, None))

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

A document may be read through several prompts ("views": the same question asked in other words, each
a different look at what the model knows). It then has one distribution per view, in a fixed order: the
linear readout puts their features side by side, and kNN prompting sums the views' KL divergences (the
KL of the views taken as independent distributions).
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


def as_views(doc) -> list[dict]:
    """A document's distributions, one per view: a single dict is one view."""
    return [doc] if isinstance(doc, dict) else list(doc)


class Readout:
    """Maps answer distributions (a dict, or a list of dicts: one per view) to label log-probabilities;
    `fit` on the pool first."""

    def __init__(self, kind: str, n_labels: int, k: int = 9, C: float = 1.0):
        if kind not in READOUTS[1:]:
            raise ValueError(f"readout must be one of {READOUTS[1:]}, got {kind!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.kind, self.n_labels, self.k, self.C = kind, n_labels, k, C
        self.vocabs: list[dict] = []  # per view: token key -> column
        self._model = None
        self._anchors: list[np.ndarray] = []  # per view: [N, V] normalized probabilities of the pool (knn)
        self._anchor_terms: np.ndarray | None = None  # [N] sum over views and tokens of p log p of each anchor
        self._gold: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        return bool(self.vocabs)

    def _view_features(self, dists: list[dict], vocab: dict) -> np.ndarray:
        x = np.empty((len(dists), len(vocab)))
        for row, dist in zip(x, dists):
            row[:] = floor(dist)
            for key, value in dist.items():
                col = vocab.get(key)
                if col is not None:
                    row[col] = value
        return x

    def view_features(self, docs: list) -> list[np.ndarray]:
        """Per view, [N, V] log-probs over that view's pool vocabulary, each row floored below its smallest
        kept value."""
        views = [as_views(d) for d in docs]
        if any(len(v) != len(self.vocabs) for v in views):
            raise ValueError(f"every document needs {len(self.vocabs)} view(s), as in the fit; got "
                             f"{sorted({len(v) for v in views})}")
        return [self._view_features([v[i] for v in views], vocab) for i, vocab in enumerate(self.vocabs)]

    def features(self, docs: list) -> np.ndarray:
        """[N, sum of the views' V]: the views' features side by side."""
        return np.hstack(self.view_features(docs))

    def fit(self, docs: list, gold: list[int]) -> "Readout":
        """Fit on pool documents' distributions (one dict, or one per view) and their gold label indices."""
        if not docs or len(docs) != len(gold):
            raise ValueError(f"need one gold label per distribution and at least one, got {len(docs)} and {len(gold)}")
        views = [as_views(d) for d in docs]
        if len({len(v) for v in views}) != 1 or not views[0]:
            raise ValueError(f"every document needs the same number (>= 1) of views, got {sorted({len(v) for v in views})}")
        if any(not d for v in views for d in v):
            raise ValueError("every distribution must hold at least one token")
        self.vocabs = [{key: i for i, key in enumerate(sorted({key for v in views for key in v[view]}, key=str))}
                       for view in range(len(views[0]))]
        self._gold = np.asarray(gold, dtype=int)
        if self.kind == "knn":
            logps = [log_softmax(x, axis=1) for x in self.view_features(docs)]
            self._anchors = [np.exp(logp) for logp in logps]
            self._anchor_terms = sum((p * logp).sum(1) for p, logp in zip(self._anchors, logps))
        else:
            from sklearn.linear_model import LogisticRegression

            if len(set(self._gold.tolist())) < 2:
                raise ValueError("the linear readout needs pool documents of at least two labels")
            self._model = LogisticRegression(C=self.C, max_iter=3000).fit(self.features(docs), self._gold)
        return self

    def log_proba(self, docs: list) -> np.ndarray:
        """[N, n_labels] label log-probabilities (knn: smoothed vote shares)."""
        if not self.fitted:
            raise ValueError("the readout is not fitted: call fit on the demo pool first")
        probs = np.zeros((len(docs), self.n_labels))
        if self.kind == "linear":
            probs[:, self._model.classes_] = self._model.predict_proba(self.features(docs))
        else:
            # KL(anchor || item) = sum_v p_a (log p_a - log p_i): the anchor's own term, minus a matrix product
            kl = self._anchor_terms[None, :] - sum(log_softmax(x, axis=1) @ anchors.T
                                                   for x, anchors in zip(self.view_features(docs), self._anchors))
            k = min(self.k, len(self._gold))
            for row, order in zip(probs, np.argsort(kl, axis=1, kind="stable")[:, :k]):
                np.add.at(row, self._gold[order], 1.0 / k)
            probs = (probs * k + 0.5 / self.n_labels) / (k + 0.5)  # keep every label's log finite
        return np.log(np.clip(probs, 1e-12, None))

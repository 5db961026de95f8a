"""Quality metrics of a labeled set against gold labels: accuracy, macro-F1, per-class P/R/F1,
confusion matrix, expected calibration error with its reliability bins, accuracy at coverage, and
a 95% (Wilson) confidence interval for the accuracy, since test samples are often small.
"""
from __future__ import annotations

import numpy as np

COVERAGES = (1.0, 0.9, 0.8, 0.7, 0.5, 0.3)


def classification_metrics(gold: list[str], pred: list[str], labels: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support; confusion[i][j] counts gold i
    predicted j. A class never predicted has precision 0 (and F1 0), as scikit-learn's zero_division=0."""
    if len(gold) != len(pred) or not gold:
        raise ValueError(f"gold and pred must be non-empty and equally long, got {len(gold)} and {len(pred)}")
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({x for x in list(gold) + list(pred) if x not in index})
    if unknown:
        raise ValueError(f"labels not in the label set {labels}: {unknown}")
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    for g, p in zip(gold, pred):
        confusion[index[g], index[p]] += 1
    tp = np.diag(confusion).astype(float)
    predicted, support = confusion.sum(0), confusion.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support > 0) | (predicted > 0)  # macro average over labels that occur (as sklearn does)
    return {
        "n": len(gold),
        "accuracy": float(tp.sum() / len(gold)),
        "macro_f1": float(f1[present].mean()),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(labels)},
        "confusion": confusion.tolist(),
        "labels": list(labels),
    }


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (z = 1.96: 95%); it stays inside [0, 1] and
    is not degenerate at 0 or n successes, unlike the normal approximation."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need n >= 1 and 0 <= successes <= n, got successes={successes}, n={n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def mcnemar(correct_a: list[bool], correct_b: list[bool]) -> dict:
    """Paired comparison of two labelers on the same items: accuracy difference (a - b), the items
    only a got right and only b got right, and the exact two-sided McNemar p-value (binomial test of
    the discordant items against 1/2)."""
    from scipy.stats import binom

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if len(a) == 0 or len(a) != len(b):
        raise ValueError(f"correct_a and correct_b must be non-empty and equally long, got {len(a)} and {len(b)}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = min(1.0, 2 * float(binom.cdf(min(only_a, only_b), only_a + only_b, 0.5))) if only_a + only_b else 1.0
    return {"n": len(a), "diff": (only_a - only_b) / len(a), "only_a": only_a, "only_b": only_b, "p_value": p}


def calibration_bins(confidence: list[float], correct: list[bool], bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error over equal-width confidence bins, and the bins (for a reliability
    diagram): ECE = sum over bins of |accuracy - mean confidence| weighted by the bin's share."""
    conf, ok = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    if len(conf) == 0 or len(conf) != len(ok):
        raise ValueError("confidence and correct must be non-empty and equally long")
    which = np.minimum((conf * bins).astype(int), bins - 1)
    ece, out = 0.0, []
    for b in range(bins):
        mask = which == b
        if mask.any():
            acc, mean_conf = float(ok[mask].mean()), float(conf[mask].mean())
            ece += mask.mean() * abs(acc - mean_conf)
            out.append({"lo": b / bins, "hi": (b + 1) / bins, "count": int(mask.sum()), "accuracy": acc,
                        "confidence": mean_conf})
    return float(ece), out


def accuracy_at_coverage(confidence: list[float], correct: list[bool], coverages=COVERAGES) -> list[dict]:
    """Accuracy on the most confident fraction of items, for each coverage, with the confidence
    threshold that keeps that fraction (items below it would go to review)."""
    conf, ok = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    order = np.argsort(-conf, kind="stable")
    out = []
    for cov in coverages:
        keep = max(1, int(round(cov * len(conf))))
        out.append({"coverage": cov, "threshold": float(conf[order[keep - 1]]),
                    "accuracy": float(ok[order[:keep]].mean())})
    return out


def evaluate_results(rows: list[dict], labels: list[str]) -> dict:
    """Every quality metric for result rows carrying 'gold', 'label' and 'confidence'."""
    rows = [r for r in rows if r.get("gold") is not None]
    if not rows:
        raise ValueError("no result row has a gold label to evaluate against")
    gold, pred = [r["gold"] for r in rows], [r["label"] for r in rows]
    conf = [float(r.get("confidence", 1.0)) for r in rows]
    correct = [g == p for g, p in zip(gold, pred)]
    metrics = classification_metrics(gold, pred, labels)
    metrics["accuracy_ci95"] = list(wilson_interval(sum(correct), len(correct)))
    metrics["ece"], metrics["reliability"] = calibration_bins(conf, correct)
    metrics["coverage"] = accuracy_at_coverage(conf, correct)
    return metrics

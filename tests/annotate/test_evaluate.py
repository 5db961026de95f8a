"""Metrics against scikit-learn and hand-computed calibration values."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from flagstack.annotate.evaluate import accuracy_at_coverage, calibration_bins, classification_metrics, evaluate_results

LABELS = ["a", "b", "c", "d"]


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    gold = list(rng.choice(LABELS[:3], 200))  # 'd' never occurs in gold
    pred = [g if rng.random() < 0.6 else str(rng.choice(LABELS)) for g in gold]
    m = classification_metrics(gold, pred, LABELS)
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    present = sorted(set(gold) | set(pred))
    assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, labels=present, average="macro", zero_division=0))
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=LABELS, zero_division=0)
    for i, name in enumerate(LABELS):
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert m["confusion"] == confusion_matrix(gold, pred, labels=LABELS).tolist()


def test_metric_errors():
    with pytest.raises(ValueError, match="equally long"):
        classification_metrics(["a"], [], LABELS)
    with pytest.raises(ValueError, match="not in the label set"):
        classification_metrics(["a"], ["z"], LABELS)
    with pytest.raises(ValueError, match="gold"):
        evaluate_results([{"id": 1, "label": "a", "confidence": 1}], LABELS)


def test_ece_and_coverage_by_hand():
    conf = [0.95, 0.95, 0.55, 0.55]
    correct = [True, False, True, True]
    ece, bins = calibration_bins(conf, correct)
    # bin 0.9-1.0: acc 0.5 vs conf 0.95 (weight 1/2); bin 0.5-0.6: acc 1 vs 0.55 (weight 1/2)
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    assert [(b["count"], b["accuracy"]) for b in bins] == [(2, 1.0), (2, 0.5)]
    cov = accuracy_at_coverage([0.9, 0.8, 0.7, 0.6], [True, True, False, True], coverages=(1.0, 0.5))
    assert cov == [{"coverage": 1.0, "threshold": 0.6, "accuracy": 0.75},
                   {"coverage": 0.5, "threshold": 0.8, "accuracy": 1.0}]
    ece1, _ = calibration_bins([1.0], [True])  # confidence 1.0 lands in the top bin
    assert ece1 == 0.0


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    from flagstack.annotate.evaluate import wilson_interval

    for k, n in ((95, 100), (100, 100), (0, 10), (7, 20), (1, 1)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    for k, n in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError, match="successes"):
            wilson_interval(k, n)
    rows = [{"gold": "a", "label": "a", "confidence": 0.9}] * 7 + [{"gold": "a", "label": "b", "confidence": 0.6}] * 13
    ci = binomtest(7, 20).proportion_ci(method="wilson")
    assert evaluate_results(rows, LABELS)["accuracy_ci95"] == pytest.approx([ci.low, ci.high], abs=1e-9)


def test_mcnemar_exact_by_hand():
    from flagstack.annotate.evaluate import mcnemar

    # a alone right on 3 items, b alone on none: p = 2 * P(X <= 0 | n=3, 1/2) = 2 / 8.
    got = mcnemar([True] * 5 + [False], [True, True, False, False, False, False])
    assert got == {"n": 6, "diff": pytest.approx(0.5), "only_a": 3, "only_b": 0, "p_value": pytest.approx(0.25)}
    # 1 vs 4 discordant: p = 2 * (1 + 5) / 32.
    assert mcnemar([1, 0, 0, 0, 0, 1], [0, 1, 1, 1, 1, 1])["p_value"] == pytest.approx(12 / 32)
    assert mcnemar([True, False], [True, False])["p_value"] == 1.0
    with pytest.raises(ValueError, match="equally long"):
        mcnemar([True], [])

"""Calibration math against hand-computed values."""
import numpy as np
import pytest

from flagstack.annotate.calibrate import Calibration, dev_prior, fit_temperature, label_logprobs, nll


def test_length_normalization():
    # scores -2 (1 token) and -3 (3 tokens): per token -2 and -1 -> softmax [e^-2, e^-1] / sum
    got = np.exp(label_logprobs([-2.0, -3.0], [1, 3]))
    want = np.array([np.exp(-2), np.exp(-1)]) / (np.exp(-2) + np.exp(-1))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(np.exp(label_logprobs([-2.0, -3.0], [1, 3], length_norm=False)),
                               [np.exp(1) / (1 + np.exp(1)), 1 / (1 + np.exp(1))], rtol=1e-12)


def test_contextual_calibration_divides_by_content_free():
    p, cf = np.array([0.6, 0.3, 0.1]), np.array([0.5, 0.25, 0.25])
    got = Calibration().apply(np.log(p), content_free=np.log(cf))
    want = (p / cf) / (p / cf).sum()  # [1.2, 1.2, 0.4] / 2.8
    np.testing.assert_allclose(got, [1.2 / 2.8, 1.2 / 2.8, 0.4 / 2.8], rtol=1e-12)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_dev_prior_is_mean_distribution():
    logp = np.log([[0.8, 0.2], [0.4, 0.6]])
    np.testing.assert_allclose(np.exp(dev_prior(logp)), [0.6, 0.4], rtol=1e-12)
    got = Calibration(bias=dev_prior(logp)).apply(np.log([0.6, 0.4]))
    np.testing.assert_allclose(got, [0.5, 0.5], rtol=1e-12)
    with pytest.raises(ValueError, match="logp_dev"):
        dev_prior(np.zeros((0, 2)))


def test_temperature_scaling():
    # NLL at T: -log softmax(z/T)[gold]; hand value for z = log [0.9, 0.1], gold 0, T = 2:
    z = np.log([[0.9, 0.1]])
    want = -np.log(0.9 ** 0.5 / (0.9 ** 0.5 + 0.1 ** 0.5))
    assert nll(z, np.array([0]), 2.0) == pytest.approx(want, rel=1e-12)
    # Overconfident logits (right 70% of the time): the fitted T beats every grid point and T > 1.
    logp = np.log(np.tile([[0.99, 0.01]], (10, 1)))
    gold = np.array([0] * 7 + [1] * 3)
    t = fit_temperature(logp, gold)
    assert t > 1
    assert all(nll(logp, gold, t) <= nll(logp, gold, g) + 1e-9 for g in np.linspace(0.1, 20, 200))
    # the fitted T makes the mean confidence match 70%: 0.99^(1/T) / (0.99^(1/T) + 0.01^(1/T)) = 0.7
    assert Calibration(temperature=t).apply(logp[0])[0] == pytest.approx(0.7, abs=1e-3)
    np.testing.assert_array_equal(np.argmax(Calibration(temperature=t).apply(logp), -1), np.argmax(logp, -1))
    with pytest.raises(ValueError, match="gold"):
        fit_temperature(logp, np.array([0]))

"""From label scores to calibrated probabilities.

1. Length normalization: a label of n tokens gets its summed log-prob divided by n (mean per token),
   so long labels are not penalized for their length.
2. Label-bias correction (small models favour some labels whatever the text):
   - contextual calibration (Zhao et al. 2021): divide by the distribution the same prompt gives a
     content-free item ('N/A'), i.e. subtract its log-probs;
   - dev priors: divide by the mean predicted distribution over the dev set (no gold labels needed).
3. Temperature scaling: one T fit on the dev set's gold labels by minimizing the negative
   log-likelihood; it changes confidence, never the argmax.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp


def label_logprobs(scores: np.ndarray, lengths: list[int] | np.ndarray, length_norm: bool = True) -> np.ndarray:
    """Log-distribution over labels from summed label scores [..., L] (optionally per token)."""
    scores = np.asarray(scores, dtype=np.float64)
    if length_norm:
        scores = scores / np.asarray(lengths, dtype=np.float64)
    return log_softmax(scores, axis=-1)


def dev_prior(logp_dev: np.ndarray) -> np.ndarray:
    """Log of the mean predicted distribution over dev items [N, L] -> [L]."""
    logp_dev = np.asarray(logp_dev, dtype=np.float64)
    if logp_dev.ndim != 2 or len(logp_dev) == 0:
        raise ValueError(f"logp_dev must be a non-empty [items, labels] array, got shape {logp_dev.shape}")
    return logsumexp(logp_dev, axis=0) - np.log(len(logp_dev))


def nll(logp: np.ndarray, gold: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the gold labels after dividing log-probs by `temperature`."""
    scaled = log_softmax(np.asarray(logp) / temperature, axis=-1)
    return float(-scaled[np.arange(len(gold)), gold].mean())


def fit_temperature(logp: np.ndarray, gold: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature in `bounds` minimizing the dev NLL (searched on log T)."""
    gold = np.asarray(gold)
    if len(gold) == 0 or len(gold) != len(logp):
        raise ValueError(f"gold must be a non-empty label index per row of logp ({len(logp)}), got {len(gold)}")
    res = minimize_scalar(lambda t: nll(logp, gold, float(np.exp(t))), bounds=np.log(bounds), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


@dataclasses.dataclass
class Calibration:
    """bias (log-space, subtracted) and temperature applied to label log-probs; identity by default."""
    bias: np.ndarray | None = None
    temperature: float = 1.0

    def apply(self, logp: np.ndarray, content_free: np.ndarray | None = None) -> np.ndarray:
        """Calibrated probabilities from label log-probs [..., L]; `content_free` is this prompt's
        content-free log-distribution for contextual calibration."""
        logits = np.asarray(logp, dtype=np.float64)
        if content_free is not None:
            logits = logits - content_free
        if self.bias is not None:
            logits = logits - self.bias
        return np.exp(log_softmax(logits / self.temperature, axis=-1))

    def as_dict(self) -> dict:
        return {"bias": None if self.bias is None else [round(float(b), 4) for b in self.bias],
                "temperature": round(self.temperature, 4)}

"""Inception Score: ``exp(E_x KL(p(y|x) || p(y)))`` averaged over splits of the samples.

As in the ADM suite, class probabilities are the softmax of ``pool3 @ W`` (the Inception's 1008-way
logits without bias), and the score is computed per split and averaged (10 splits; for 50,000
samples that is ADM's split size of 5,000).
"""

from __future__ import annotations

import numpy as np
from scipy.special import rel_entr, softmax


def probabilities_from_logits(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    return softmax(np.asarray(logits, dtype=np.float64), axis=1)


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` of the Inception Score of ``(N, K)`` class probabilities.

    ``0 * log 0`` counts as 0, so one-hot predictions are fine.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (N, K), got shape {p.shape}")
    if splits < 1 or p.shape[0] < splits:
        raise ValueError(f"need at least one sample per split: {p.shape[0]} samples, {splits} splits")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-4) or (p < 0).any():
        raise ValueError("rows must be probability vectors (non-negative, summing to 1); pass softmax outputs")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = rel_entr(part, marginal).sum(axis=1).mean()
        scores.append(float(np.exp(kl)))
    return float(np.mean(scores)), float(np.std(scores))

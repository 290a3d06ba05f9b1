"""Bootstrap confidence intervals and rank correlations for the metric tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

CORRELATIONS = ("pearson", "spearman", "kendall")


@dataclass(frozen=True)
class Estimate:
    """A point value with a bootstrap interval; ``n`` is the number of values it came from."""

    value: float
    ci_low: float
    ci_high: float
    n: int


def bootstrap_mean(
    values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0, block: int = 200
) -> Estimate:
    """Mean of the finite ``values`` with a percentile bootstrap interval (resampling values).

    NaN entries (e.g. images without a valid SRSS anchor) are dropped first; with none left the
    result is all NaN. The resampling is drawn in blocks so memory stays ``block * n``.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, block):
        stop = min(start + block, n_boot)
        means[start:stop] = v[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(v.mean()), float(lo), float(hi), n)


def correlation(x: np.ndarray, y: np.ndarray, kind: str) -> tuple[float, float]:
    """``(coefficient, p-value)`` of the named correlation (pearson, spearman, kendall)."""
    if kind == "pearson":
        res = sps.pearsonr(x, y)
    elif kind == "spearman":
        res = sps.spearmanr(x, y)
    elif kind == "kendall":
        res = sps.kendalltau(x, y)
    else:
        raise ValueError(f"unknown correlation {kind!r}; valid: {', '.join(CORRELATIONS)}")
    return float(res.statistic), float(res.pvalue)


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of ``x, y (n_boot, n)``; NaN where a row is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(axis=1) / den, np.nan)


def bootstrap_correlation(
    x: np.ndarray, y: np.ndarray, kind: str, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[Estimate, float]:
    """Correlation of ``x`` and ``y`` with a bootstrap interval from resampling the pairs (encoders).

    Resamples where either side is constant (possible with few encoders) have no coefficient and
    are left out of the interval. Returns the estimate and the p-value of the full-sample test.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape} and {y.shape}")
    n = x.size
    if n < 3:
        raise ValueError(f"a correlation needs at least 3 encoders, got {n}")
    value, p = correlation(x, y, kind)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    xb, yb = x[idx], y[idx]
    if kind == "pearson":
        boots = _rowwise_pearson(xb, yb)
    elif kind == "spearman":
        boots = _rowwise_pearson(sps.rankdata(xb, axis=1), sps.rankdata(yb, axis=1))
    else:
        boots = np.array([sps.kendalltau(a, b).statistic for a, b in zip(xb, yb)], dtype=np.float64)
    boots = boots[np.isfinite(boots)]
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(boots, [tail, 100 - tail]) if boots.size else (np.nan, np.nan)
    return Estimate(value, float(lo), float(hi), n), p


def t_interval(values, level: float = 0.95) -> Estimate:
    """Mean of the finite ``values`` with a Student-t interval: ``mean ± t_{(1+level)/2, n-1} · s / sqrt(n)``,
    ``s`` the sample standard deviation (divisor n - 1). For a few training seeds, where a bootstrap over
    2-3 values means nothing. One value: the interval is NaN; none: everything is NaN."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean = float(v.mean())
    if n == 1:
        return Estimate(mean, float("nan"), float("nan"), 1)
    half = float(sps.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
    return Estimate(mean, mean - half, mean + half, n)

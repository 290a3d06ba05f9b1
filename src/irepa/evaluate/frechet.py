"""Gaussian statistics of features and the Fréchet distance between two Gaussians (FID, sFID, FD_DINOv2).

``d² = ||mu1 - mu2||² + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))``, in float64. The trace of the square root
is taken from symmetric eigenvalues, ``tr sqrt(S1 S2) = sum_i sqrt(lambda_i(S1^1/2 S2 S1^1/2))``: the
same number as the ADM suite's ``scipy.linalg.sqrtm`` route, in seconds instead of minutes for
2048-d features (and without the Schur iteration's slow path on the rank-deficient covariances of small
sample sets). Eigenvalues clearly below zero (the imaginary part ``sqrtm`` would produce) raise
:class:`FrechetDistanceError` instead of being patched: a regulariser ``eps`` is only ever added when
the caller asks for it, and callers record the value they used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class FrechetDistanceError(ArithmeticError):
    """The matrix square root of ``S1 S2`` is not usable (non-finite or clearly complex)."""


@dataclass
class FrechetResult:
    """The distance and what it took to get it (recorded next to every reported number)."""

    value: float
    eps: float
    max_imag: float  # largest |imaginary part| dropped from the square root (numerical noise)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (``np.cov``, ddof=1) of ``(N, D)`` features, in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf; the feature extractor or the images are broken")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _check_stats(mu: np.ndarray, sigma: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{which}: mean {mu.shape} and covariance {sigma.shape} do not fit (want (D,) and (D, D))")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise FrechetDistanceError(f"{which}: mean or covariance contains NaN or inf")
    return mu, sigma


def frechet_distance_details(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
    eps: float = 0.0, imag_atol: float = 1e-3,
) -> FrechetResult:
    """Fréchet distance with the regulariser used and the imaginary residue that was dropped.

    ``eps > 0`` adds ``eps * I`` to both covariances before the square root (explicit, never automatic).
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _check_stats(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if eps > 0:
        offset = np.eye(mu1.shape[0]) * eps
        sigma1, sigma2 = sigma1 + offset, sigma2 + offset
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # S1^1/2 (clipping float noise below zero)
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    if not np.isfinite(inner).all():
        raise FrechetDistanceError(
            "the eigenvalues of the covariance product are not finite (the covariances are singular or badly "
            "conditioned: usually too few samples for the feature dimension). Use more samples, or pass an "
            "explicit eps (e.g. 1e-6), which is then recorded with the result."
        )
    max_imag = float(np.sqrt(max(0.0, -float(inner.min()))))  # what sqrt(S1 S2) would carry as imaginary part
    if max_imag > imag_atol:
        raise FrechetDistanceError(
            f"the covariance product has a negative eigenvalue ({inner.min():.3g}): its square root would have an "
            f"imaginary part of {max_imag:.3g} (> {imag_atol}); the covariances are not valid (not positive "
            "semi-definite) or too ill-conditioned. Check the statistics, use more samples, or pass an explicit eps."
        )
    trace_covmean = float(np.sum(np.sqrt(np.clip(inner, 0.0, None))))
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)
    return FrechetResult(value=value, eps=float(eps), max_imag=max_imag)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 0.0
) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (float64)."""
    return frechet_distance_details(mu1, sigma1, mu2, sigma2, eps=eps).value

"""Improved precision and recall (Kynkäänniemi et al., 2019) with k-nearest-neighbour manifolds.

Each point's manifold ball has the radius of its ``k``-th nearest neighbour within its own set
(k = 3, the point itself not counted). Precision is the fraction of samples that fall inside some
reference ball; recall is the fraction of reference points inside some sample ball. Distances are
computed blockwise with torch (so a GPU helps), as squared Euclidean distances, exactly as the ADM
suite's ``ManifoldEstimator`` does.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm


def _as_tensor(x: np.ndarray, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), device=device).to(dtype)


def pairwise_sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(n, m)`` squared Euclidean distances, clamped at 0 against rounding."""
    d = (a * a).sum(1, keepdim=True) - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]
    return d.clamp_min_(0.0)


def manifold_radii(
    features: np.ndarray, k: int = 3, batch_size: int = 1024, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32, progress: bool = False,
) -> np.ndarray:
    """Squared distance from each point to its ``k``-th nearest other point, ``(N,)``."""
    n = len(features)
    if n <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} points, got {n}")
    feats = _as_tensor(features, device, dtype)
    radii = torch.empty(n, dtype=dtype)
    for start in tqdm(range(0, n, batch_size), desc="manifold radii", disable=not progress, leave=False):
        d = pairwise_sq_distances(feats[start:start + batch_size], feats)
        # index k of the sorted row (0 is the point itself) = k-th nearest neighbour
        radii[start:start + batch_size] = d.kthvalue(k + 1, dim=1).values.cpu()
    return radii.numpy()


def precision_recall(
    ref_features: np.ndarray, sample_features: np.ndarray, k: int = 3, batch_size: int = 1024,
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, progress: bool = False,
) -> tuple[float, float]:
    """``(precision, recall)`` of samples against reference features, both ``(N, D)``."""
    if np.shape(ref_features)[1:] != np.shape(sample_features)[1:]:
        raise ValueError(f"feature shapes differ: {np.shape(ref_features)} vs {np.shape(sample_features)}")
    ref_radii = _as_tensor(manifold_radii(ref_features, k, batch_size, device, dtype, progress), device, dtype)
    smp_radii = _as_tensor(manifold_radii(sample_features, k, batch_size, device, dtype, progress), device, dtype)
    ref = _as_tensor(ref_features, device, dtype)
    smp = _as_tensor(sample_features, device, dtype)
    ref_in_samples = torch.zeros(len(ref), dtype=torch.bool, device=device)  # -> recall
    smp_in_ref = torch.zeros(len(smp), dtype=torch.bool, device=device)  # -> precision
    for start in tqdm(range(0, len(ref), batch_size), desc="precision/recall", disable=not progress, leave=False):
        stop = start + batch_size
        d = pairwise_sq_distances(ref[start:stop], smp)  # (rows of ref, all samples)
        smp_in_ref |= (d <= ref_radii[start:stop, None]).any(dim=0)
        ref_in_samples[start:stop] = (d <= smp_radii[None, :]).any(dim=1)
    return float(smp_in_ref.double().mean()), float(ref_in_samples.double().mean())

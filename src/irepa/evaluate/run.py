"""One call from a sample batch and a reference to a full result: the library side of ``irepa eval``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from irepa.errors import ConfigError, DataError

from .evaluator import Activations, Evaluator, ReferenceStats, load_samples
from .features import FeatureExtractor

FEATURES = ("inception", "dinov2")


def pick_device(device: str | None) -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"--device {device!r} is not a device", fix="use cpu, cuda, cuda:1, ... or auto") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} but no CUDA GPU is visible", fix="use --device cpu (or auto)")
    return chosen


def build_extractor(features: str = "inception", device: str | torch.device = "cpu",
                    inception: str | os.PathLike | None = None, inception_resize: str = "tf-legacy",
                    dinov2: str = "dinov2-vit-s", dinov2_weights: str | os.PathLike | None = None) -> FeatureExtractor:
    """The feature network by name: ``"inception"`` (FID, sFID, IS, P&R) or ``"dinov2"`` (FD_DINOv2, P&R)."""
    if features == "inception":
        from .inception import InceptionExtractor

        return InceptionExtractor(inception, device=device, resize=inception_resize)
    if features == "dinov2":
        from .dinov2 import DinoV2Extractor

        return DinoV2Extractor(dinov2, weights=dinov2_weights, device=device)
    raise ValueError(f"unknown features {features!r}; valid: {', '.join(FEATURES)}")


def check_reference(ref: ReferenceStats, probe: Activations, reference: str | Path) -> None:
    """Refuse reference statistics whose shapes do not fit the features (``probe``: those of one sample image)
    or that are not finite, naming the array; raises :class:`~irepa.errors.DataError`."""
    expected = {"mu": (probe.pool.shape[1],), "sigma": (probe.pool.shape[1],) * 2}
    if probe.spatial is not None:
        expected.update(mu_s=(probe.spatial.shape[1],), sigma_s=(probe.spatial.shape[1],) * 2)
    problems = []
    for key, shape in expected.items():
        value = getattr(ref, key)
        if value is None:
            continue
        value = np.asarray(value)
        if value.shape != shape:
            problems.append(f"{key} has shape {value.shape}, the features need {shape}")
        elif not np.isfinite(value).all():
            problems.append(f"{key} holds NaN or inf")
    if ref.features is not None and (ref.features.ndim != 2 or ref.features.shape[1] != probe.pool.shape[1]):
        problems.append(f"features have shape {ref.features.shape}, the features need (N, {probe.pool.shape[1]})")
    if problems:
        source = ref.info.get("cache_file") if ref.info.get("from_cache") else reference
        raise DataError(f"--ref {reference}: the reference statistics do not fit the features of this network "
                        f"({'; '.join(problems)}; read from {source})",
                        fix="give statistics made with the same feature network (--features), or the reference "
                            "images to compute them")


def evaluate_samples(
    samples: str | Path, reference: str, extractor: FeatureExtractor, batch_size: int = 50,
    num_samples: int | None = None, num_ref: int | None = None, resize: bool = False, eps: float = 0.0,
    cache_dir: str | Path | None = None, use_cache: bool = True, progress: bool = True,
) -> dict[str, Any]:
    """Metrics of the ``arr_0`` images of ``samples`` (an ``.npz``) against ``reference``."""
    from .references import reference_stats

    t0 = time.time()
    images, _ = load_samples(samples)
    if num_samples is not None:
        if num_samples > len(images):
            raise ValueError(f"--num-samples {num_samples} > {len(images)} images in {samples}")
        images = images[:num_samples]
    size = tuple(int(v) for v in images.shape[1:3])
    evaluator = Evaluator(extractor, batch_size=batch_size, eps=eps, progress=progress)
    ref = reference_stats(reference, evaluator, size, num_ref, resize, cache_dir, use_cache)
    if ref.image_size is not None and tuple(ref.image_size) != size and not resize:
        raise ValueError(f"resolution mismatch: samples are {size[0]}x{size[1]}, cached reference statistics were "
                         f"made at {ref.image_size[0]}x{ref.image_size[1]}")
    # one image shows the feature sizes: a reference that does not fit is refused before the long part
    check_reference(ref, evaluator.activations(images[:1], desc="probe"), reference)
    acts = evaluator.activations(images, desc="sample features")
    result = evaluator.evaluate(acts, ref)
    result.update(samples=str(samples), reference=str(reference), image_size=list(size),
                  reference_info=ref.info, seconds=round(time.time() - t0, 1))
    settings = Path(samples).with_suffix(".json")
    if settings.is_file():  # the sampling settings travel with the numbers; a damaged record is only named
        try:
            result["sampling"] = json.loads(settings.read_bytes().decode("utf-8"))
        except ValueError as err:  # JSON and UTF-8 errors
            result["warnings"].append(f"the sampling record {settings} is damaged ({err}); results lack it")
    return result

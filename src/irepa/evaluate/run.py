"""One call from a sample batch and a reference to a full result: the library side of ``irepa eval``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from irepa.errors import ConfigError

from .evaluator import Evaluator, load_samples
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
    acts = evaluator.activations(images, desc="sample features")
    result = evaluator.evaluate(acts, ref)
    result.update(samples=str(samples), reference=str(reference), image_size=list(size),
                  reference_info=ref.info, seconds=round(time.time() - t0, 1))
    settings = Path(samples).with_suffix(".json")
    if settings.is_file():
        result["sampling"] = json.loads(settings.read_text())
    return result

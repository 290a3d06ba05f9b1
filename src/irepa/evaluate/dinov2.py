"""DINOv2 features for the Fréchet distance in DINOv2 space (FD_DINOv2) and precision / recall.

The global feature is the mean of the encoder's patch tokens (prefix tokens are not part of the
encoder contract). sFID and the Inception Score are Inception-only and are reported as skipped.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .features import FeatureExtractor, file_sha256, to_nchw_float

DEFAULT_ENCODER = "dinov2-vit-s"


class DinoV2Extractor(FeatureExtractor):
    """Mean-pooled patch tokens of a DINOv2 encoder from :mod:`irepa.encoders`."""

    fd_metric = "fd_dinov2"
    outputs = ("pool",)

    def __init__(self, encoder: str = DEFAULT_ENCODER, weights: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", resolution: int | None = None):
        super().__init__()
        from irepa.encoders import default_weights_path, list_encoders, load_encoder

        dinos = [n for n in list_encoders() if n.startswith("dinov2")]
        if encoder not in dinos:
            raise ValueError(f"unknown DINOv2 encoder {encoder!r}; valid: {', '.join(dinos)}")
        # An evaluation feature, not an alignment target: it keeps the antialiased resize and DINOv2's own
        # position resampling it has always used, so FD-DINOv2 values stay comparable across versions.
        self.encoder = load_encoder(encoder, weights=None if weights is None else str(weights), device=device,
                                    resolution=resolution,  # None: the encoder's native 224 px
                                    resize="antialias", pos_embed="upstream")
        self.name = encoder
        path = default_weights_path(encoder) if weights is None else weights
        # the file the encoder was loaded from (None for random weights)
        self.weights_path = str(path) if weights != "random" and os.path.isfile(path) else None
        self.missing = {
            "spatial": "sFID is defined on Inception mixed_6 features; not computed with --features dinov2",
            "logits": "the Inception Score needs the Inception classifier; not computed with --features dinov2",
        }

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights": self.weights_path or "random (untrained)",
            "sha256": file_sha256(self.weights_path) if self.weights_path else None,
            "input": "{}x{} px, the encoder's own resize and normalisation".format(*self.encoder.resolution),
            "pool": f"mean of {self.encoder.grid[0]}x{self.encoder.grid[1]} patch tokens ({self.encoder.embed_dim})",
        }

    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images01 = to_nchw_float(images, self.device) / 255.0
        return {"pool": self.encoder.encode(images01).float().mean(dim=1)}

"""The feature-extractor interface the evaluator runs, plus the pieces shared by the concrete networks.

An extractor maps uint8 images ``(B, H, W, 3)`` to a dict of float features:

* ``"pool"``: ``(B, D)`` global features (FID / FD, precision and recall);
* ``"spatial"``: ``(B, D_s)`` spatial features (sFID), optional;
* ``"logits"``: ``(B, K)`` classifier logits (Inception Score), optional.

Features an extractor cannot give are listed in :attr:`FeatureExtractor.missing` with the reason,
so the evaluator reports the metric as skipped instead of silently dropping it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from irepa.precision import no_tf32
from irepa.utils.io import file_digest

FEATURE_KINDS = ("pool", "spatial", "logits")
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (memoised per path, size and mtime, since weight files are large)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_digest(p).sha256
    return _SHA_CACHE[key]


class FeatureExtractor(nn.Module):
    """Base class: subclasses set the attributes and implement :meth:`extract`."""

    name: str = "features"
    fd_metric: str = "fd"  # the result key of the Fréchet distance on "pool" features
    outputs: tuple[str, ...] = ("pool",)

    def __init__(self) -> None:
        super().__init__()
        self.missing: dict[str, str] = {}

    def describe(self) -> dict[str, Any]:
        """What network this is (name, weights file and its sha256, preprocessing): stored with results."""
        return {"name": self.name}

    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of uint8 ``(B, H, W, 3)`` images, computed in full float32 on any device.

        TF32 and autocast are off inside (and the caller's settings restored after): reference
        statistics are computed in float32, often on a CPU, and TF32 convolutions (cuDNN's default)
        would shift the features and so the FID.
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"extractors take uint8 (B, H, W, 3) images, got {images.dtype} {tuple(images.shape)}")
        with no_tf32(), torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            out = self.extract(images)
        unknown = set(out) - set(FEATURE_KINDS)
        if unknown:
            raise RuntimeError(f"{self.name} returned unknown feature kinds {sorted(unknown)}")
        return out

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        if p is None:
            p = next(self.buffers(), None)
        return p.device if p is not None else torch.device("cpu")


def to_nchw_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> float32 ``(B, 3, H, W)`` in [0, 255] on ``device``."""
    return images.to(device).permute(0, 3, 1, 2).float()


def legacy_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out, in)`` weights of TF1 ``ResizeBilinear`` (align_corners=False, no half-pixel centres).

    Output pixel ``o`` samples input position ``o * in / out``, interpolating between ``floor`` and
    the next pixel (clamped at the border) -- the resize inside the TF Inception graph of the ADM suite.
    """
    scale = in_size / out_size
    m = np.zeros((out_size, in_size), dtype=np.float64)
    for o in range(out_size):
        src = o * scale
        i0 = min(int(np.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        w = src - i0
        m[o, i0] += 1.0 - w
        m[o, i1] += w
    return m


class Resizer:
    """Resize float ``(B, C, H, W)`` images to a square size with the chosen method."""

    MODES = ("tf-legacy", "torch-bilinear")

    def __init__(self, size: int, mode: str = "tf-legacy"):
        if mode not in self.MODES:
            raise ValueError(f"unknown resize mode {mode!r}; valid: {', '.join(self.MODES)}")
        self.size, self.mode = size, mode
        self._mats: dict[tuple[int, str], torch.Tensor] = {}

    def _matrix(self, n: int, device: torch.device) -> torch.Tensor:
        key = (n, str(device))
        if key not in self._mats:
            self._mats[key] = torch.from_numpy(legacy_bilinear_matrix(n, self.size)).float().to(device)
        return self._mats[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == (self.size, self.size):
            return x
        if self.mode == "torch-bilinear":
            return nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return torch.einsum("oh,bchw,pw->bcop", self._matrix(h, x.device), x, self._matrix(w, x.device))

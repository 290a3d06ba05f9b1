"""Pixels <-> model space, as one object.

A :class:`Codec` is the only place that converts between images and what the generative model
sees: identity pixels (JiT, the small-scale runs), latents of a frozen VAE read from cached posterior
moments (latent SiT), or a live VAE trained end to end (REPA-E). It encodes a loader batch into the
model's space, decodes model-space samples back to pixels, and owns the latent normalisation and
its statistics; its :meth:`~Codec.checkpoint_state` travels in every checkpoint so that sampling and
evaluation decode exactly as training encoded.

Pixels are ``[0, 1]`` floats (or uint8) in batches and ``[-1, 1]`` in the model's pixel space.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from irepa.errors import ConfigError

_UNIT_VALUES: dict[torch.device, torch.Tensor] = {}


def _unit_values(device: torch.device) -> torch.Tensor:
    """``v / 255`` for ``v = 0..255`` in float32, computed on the CPU as the datasets' float items are."""
    if device not in _UNIT_VALUES:
        _UNIT_VALUES[device] = torch.arange(256, dtype=torch.float32).div_(255.0).to(device)
    return _UNIT_VALUES[device]


def unit_images(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Batch images as float32 ``[0, 1]`` on ``device`` (default: where they are).

    uint8 images (``image_mode="uint8"`` datasets) are moved first, a quarter of the bytes, then
    mapped through a table of ``v / 255``: bit-identical to the datasets' float items on any device
    (CUDA divides by a scalar as a multiplication by its reciprocal, which is off in the last bit
    for half the byte values). Float images come back as float32, values untouched.
    """
    if device is not None:
        device = torch.device(device)
        images = images.to(device, non_blocking=device.type == "cuda")  # async only host -> GPU
    if images.dtype == torch.uint8:
        return _unit_values(images.device)[images.int()]
    return images.float()


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` in [-1, 1] -> ``(B, H, W, 3)`` uint8 on the CPU (grey repeated to RGB)."""
    x = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).contiguous().cpu()


class Codec(nn.Module):
    """Base class: ``encode(batch) -> x0`` in model space, ``decode(x) -> [-1, 1]`` pixels."""

    kind = "base"
    channels: int  # channels of the model space
    factor: int = 1  # pixels per model-space cell along each side
    trainable = False  # REPA-E trains its VAE; the others are fixed maps

    def encode(self, batch: dict[str, Any], generator: torch.Generator | None, device) -> torch.Tensor:
        """A loader batch -> ``x0`` on ``device`` (random draws, e.g. a posterior sample, from ``generator``)."""
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples -> float pixels in ``[-1, 1]``."""
        raise NotImplementedError

    def decode_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples -> uint8 ``(B, H, W, 3)`` images on the CPU."""
        return to_uint8(self.decode(x))

    def prepare_decoder(self, device: torch.device | str = "cpu") -> Codec:
        """Load whatever decoding needs (e.g. the VAE) now, so a missing file fails at start-up."""
        return self

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild this codec (no weights of frozen, named networks)."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind


class PixelCodec(Codec):
    """Identity pixels: ``[0, 1]`` RGB -> ``[-1, 1]``; one channel means the grey mean of the three."""

    kind = "pixels"

    def __init__(self, channels: int = 3):
        super().__init__()
        if channels not in (1, 3):
            raise ConfigError(f"pixel-space training needs model.in_channels 1 or 3, got {channels}")
        self.channels = channels

    def to_model(self, images01: torch.Tensor) -> torch.Tensor:
        """``[0, 1]`` RGB images -> the model's pixel space."""
        x0 = images01.float() * 2 - 1
        return x0.mean(dim=1, keepdim=True) if self.channels == 1 else x0

    def encode(self, batch, generator=None, device=None):
        return self.to_model(unit_images(batch["image"], device))

    def decode(self, x):
        return x.float()

    def checkpoint_state(self):
        return {"kind": self.kind, "channels": self.channels}

    def describe(self) -> str:
        return f"pixels ({self.channels} channel{'s' if self.channels > 1 else ''}, [-1, 1])"

"""The encoder contract: a frozen network that turns images into patch tokens.

Every encoder in the zoo (and every user encoder) is an :class:`Encoder`:

* ``preprocess(images)`` takes float images in ``[0, 1]``, shape ``(B, 3, H, W)``, any size,
  and applies the encoder's own resize and normalisation;
* ``forward(x)`` returns patch tokens ``(B, T, D)``: prefix (CLS / register) tokens removed,
  the encoder's final norm applied, ``T = grid[0] * grid[1]``;
* ``encode(images)`` is both, under ``no_grad``.
"""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """Base class of a frozen alignment target. Subclasses set the attributes and ``forward``."""

    name: str = "encoder"
    embed_dim: int
    patch_size: int
    resolution: tuple[int, int]  # (height, width) of the network input
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(H_e, W_e)`` that ``forward`` returns."""
        return (self.resolution[0] // self.patch_size, self.resolution[1] // self.patch_size)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize ``[0, 1]`` images to the input resolution and normalise them."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        images = images.float()
        if tuple(images.shape[-2:]) != tuple(self.resolution):
            kwargs = {"align_corners": False} if self.interpolation in ("bilinear", "bicubic") else {}
            images = nn.functional.interpolate(images, size=self.resolution, mode=self.interpolation, **kwargs)
        mean = images.new_tensor(self.mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.std).view(1, 3, 1, 1)
        return (images - mean) / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, T, D)`` of ``[0, 1]`` images."""
        param = next(self.parameters(), None)
        x = self.preprocess(images.to(param.device if param is not None else images.device))
        if param is not None and param.dtype != x.dtype:
            x = x.to(param.dtype)
        return self(x)

    def freeze(self) -> Encoder:
        """Eval mode, no gradients: encoders are fixed targets."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

"""The encoder contract: a frozen network that turns images into patch tokens.

Every encoder in the zoo (and every user encoder) is an :class:`Encoder`:

* ``preprocess(images)`` takes float images in ``[0, 1]``, shape ``(B, 3, H, W)``, any size,
  and applies the encoder's own resize and normalisation;
* ``forward(x)`` returns patch tokens ``(B, T, D)``: prefix (CLS / register) tokens removed,
  the encoder's final norm applied, ``T = grid[0] * grid[1]``;
* ``encode(images)`` is both, under ``no_grad``, at the encoder's compute precision.

Precision: weights stay float32. An encoder asked to compute in bfloat16 / float16
(:meth:`Encoder.use_precision`, or ``load_encoder(..., dtype=torch.bfloat16)``) runs its network under
``torch.autocast``, as the paper's code does, so layer norms, softmax and the residual stream keep
float32; weight-free encoders (HOG, SIFT) never compute in lower precision. ``encode`` returns
float32 tokens either way.
"""

from __future__ import annotations

import contextlib
import itertools

import torch
from torch import nn

LOW_PRECISION = (torch.bfloat16, torch.float16)


def resample_tokens(tokens: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resample ``(B, src_h*src_w, D)`` tokens laid out row-major onto a ``dst`` grid."""
    if tuple(src) == tuple(dst):
        return tokens
    b, t, d = tokens.shape
    if t != src[0] * src[1]:
        raise ValueError(f"{t} tokens do not fill a {src[0]}x{src[1]} grid")
    grid = tokens.transpose(1, 2).reshape(b, d, src[0], src[1])
    grid = nn.functional.interpolate(grid.float(), size=tuple(dst), mode="bilinear", align_corners=False)
    return grid.to(tokens.dtype).flatten(2).transpose(1, 2)


class Encoder(nn.Module):
    """Base class of a frozen alignment target. Subclasses set the attributes and ``forward``.

    ``resolution`` is the network input size and ``patch_size`` its stride in pixels, so the network
    itself yields ``resolution // patch_size`` tokens per side (:attr:`token_grid`). When a caller
    asked for a different output grid, subclasses set ``output_grid`` and resample (see
    :func:`resample_tokens`); :attr:`grid` is always the grid ``forward`` returns.
    """

    name: str = "encoder"
    embed_dim: int
    patch_size: int
    resolution: tuple[int, int]  # (height, width) of the network input
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    antialias: bool = False  # as the paper's code (F.interpolate); True low-passes when shrinking, like PIL
    output_grid: tuple[int, int] | None = None
    autocast_dtype: torch.dtype | None = None  # compute precision of encode(); None: that of the weights
    supports_autocast: bool = True  # False for weight-free encoders, whose maths must stay float32

    @property
    def token_grid(self) -> tuple[int, int]:
        """Grid the network produces at :attr:`resolution`."""
        return (self.resolution[0] // self.patch_size, self.resolution[1] // self.patch_size)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(H_e, W_e)`` that ``forward`` returns."""
        return tuple(self.output_grid) if self.output_grid is not None else self.token_grid

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize ``[0, 1]`` images to the input resolution and normalise them."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        images = images.float()
        if tuple(images.shape[-2:]) != tuple(self.resolution):
            kwargs = {}
            if self.interpolation in ("bilinear", "bicubic"):
                kwargs = {"align_corners": False, "antialias": self.antialias}
            images = nn.functional.interpolate(images, size=tuple(self.resolution), mode=self.interpolation, **kwargs)
        mean = images.new_tensor(self.mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.std).view(1, 3, 1, 1)
        return (images - mean) / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self, tokens: torch.Tensor, network_grid: tuple[int, int]) -> torch.Tensor:
        """Bring tokens from the grid the network produced onto :attr:`grid`."""
        return resample_tokens(tokens, network_grid, self.grid)

    def use_precision(self, dtype: torch.dtype) -> Encoder:
        """Compute in ``dtype``: bfloat16 / float16 autocast with float32 weights; float32 / float64 cast weights."""
        if dtype in LOW_PRECISION:
            self.to(torch.float32)
            self.autocast_dtype = dtype if self.supports_autocast else None
        elif dtype.is_floating_point:
            self.to(dtype)
            self.autocast_dtype = None
        else:
            raise ValueError(f"{self.name}: cannot compute in {dtype}; use float32, bfloat16 or float16")
        return self

    def _precision(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Autocast to :attr:`autocast_dtype`, or autocast off so an outer autocast cannot lower the precision."""
        if not torch.amp.is_autocast_available(device.type):
            return contextlib.nullcontext()
        if self.autocast_dtype is None:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, T, D)`` of ``[0, 1]`` images (float32 when computed under autocast)."""
        ref = next(itertools.chain(self.parameters(), self.buffers()), None)  # where the network lives
        x = self.preprocess(images.to(ref.device if ref is not None else images.device))
        if ref is not None and ref.is_floating_point() and ref.dtype != x.dtype:
            x = x.to(ref.dtype)
        with self._precision(x.device):
            tokens = self(x)
        return tokens.float() if self.autocast_dtype is not None else tokens

    def freeze(self) -> Encoder:
        """Eval mode, no gradients: encoders are fixed targets."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self


class SpecEncoder(Encoder):
    """An encoder described by a registry entry (:class:`~irepa.encoders.spec.EncoderSpec`) around a network."""

    def __init__(self, spec, model: nn.Module, resolution: tuple[int, int],
                 output_grid: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.embed_dim = spec.embed_dim
        self.patch_size = spec.patch_size
        self.resolution = tuple(resolution)
        self.output_grid = tuple(output_grid) if output_grid is not None else None
        self.mean, self.std, self.interpolation = spec.mean, spec.std, spec.interpolation
        self.antialias = spec.resize_antialias
        self.model = model

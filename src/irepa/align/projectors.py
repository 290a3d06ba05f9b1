"""Projectors that map a diffusion hidden state ``(B, T, C)`` into an encoder space ``(B, T, D)``."""

from __future__ import annotations

import math

import torch
from torch import nn

from irepa.models.layers import xavier_init_linears

PROJECTORS = ("mlp", "linear", "conv")


def _grid_of(num_tokens: int, hw: tuple[int, int] | None) -> tuple[int, int]:
    if hw is not None:
        if hw[0] * hw[1] != num_tokens:
            raise ValueError(f"token grid {hw} has {hw[0] * hw[1]} cells but the input has {num_tokens} tokens")
        return hw
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} tokens are not a square grid; pass hw=(H, W) explicitly")
    return side, side


class MLPProjector(nn.Sequential):
    """REPA's token-wise 3-layer MLP: Linear -> SiLU -> Linear -> SiLU -> Linear.

    Xavier-uniform weights and zero biases: the reference builds the projectors inside SiT, whose
    initialiser covers every ``nn.Linear`` of the model.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048):
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, out_dim),
        )
        xavier_init_linears(self)

    def forward(self, h: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        return super().forward(h)


class LinearProjector(nn.Linear):
    """A single token-wise linear map (xavier-uniform weight, zero bias, as the reference SiT)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(in_dim, out_dim)
        xavier_init_linears(self)

    def forward(self, h: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        return super().forward(h)


class ConvProjector(nn.Module):
    """iREPA's projector: a k x k convolution over the token grid, so neighbours inform each token.

    Initialised with PyTorch's ``nn.Conv2d`` default (kaiming-uniform, a = sqrt(5)), as the reference:
    its SiT initialiser only touches ``nn.Linear`` modules.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"conv projector kernel_size must be odd to keep the grid, got {kernel_size}")
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride=1, padding=kernel_size // 2)

    def forward(self, h: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        b, t, c = h.shape
        height, width = _grid_of(t, hw)
        x = h.transpose(1, 2).reshape(b, c, height, width)
        return self.conv(x).flatten(2).transpose(1, 2)


def build_projector(kind: str, in_dim: int, out_dim: int, kernel_size: int = 3, hidden_dim: int = 2048) -> nn.Module:
    """Build a projector by name: ``mlp`` (REPA), ``linear`` or ``conv`` (iREPA)."""
    if kind == "mlp":
        return MLPProjector(in_dim, out_dim, hidden_dim)
    if kind == "linear":
        return LinearProjector(in_dim, out_dim)
    if kind == "conv":
        return ConvProjector(in_dim, out_dim, kernel_size)
    raise ValueError(f"unknown projector {kind!r}; valid: {', '.join(PROJECTORS)}")

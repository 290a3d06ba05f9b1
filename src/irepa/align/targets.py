"""Alignment targets: encoder tokens brought onto the diffusion model's token grid."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
_warned: set[tuple] = set()


def resample_tokens(tokens: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resample ``(B, H_s*W_s, D)`` tokens to the grid ``dst_hw`` (align_corners=False)."""
    b, t, d = tokens.shape
    if src_hw[0] * src_hw[1] != t:
        raise ValueError(f"{t} tokens do not form the grid {src_hw}")
    if tuple(src_hw) == tuple(dst_hw):
        return tokens
    x = tokens.transpose(1, 2).reshape(b, d, *src_hw).float()
    x = F.interpolate(x, size=dst_hw, mode="bilinear", align_corners=False)
    return x.flatten(2).transpose(1, 2)


def match_grid(
    tokens: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int], name: str = "encoder"
) -> torch.Tensor:
    """Return tokens on ``dst_hw``; resamples (and says so once) when the grids differ."""
    if tuple(src_hw) != tuple(dst_hw):
        key = (name, tuple(src_hw), tuple(dst_hw))
        if key not in _warned:
            _warned.add(key)
            log.warning(
                "%s yields a %dx%d token grid but the model has %dx%d: resampling targets bilinearly",
                name,
                src_hw[0],
                src_hw[1],
                dst_hw[0],
                dst_hw[1],
            )
    return resample_tokens(tokens, src_hw, dst_hw)

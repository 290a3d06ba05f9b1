"""Alignment targets: encoder tokens brought onto the diffusion model's token grid (resampled with the
encoders' own :func:`irepa.encoders.base.resample_tokens`)."""

from __future__ import annotations

import logging

import torch

from irepa.encoders.base import resample_tokens

log = logging.getLogger(__name__)
_warned: set[tuple] = set()


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
        tokens = tokens.float()  # targets are float32: resample at full precision
    return resample_tokens(tokens, src_hw, dst_hw)

"""Spatial normalisation of encoder tokens (iREPA), applied to the alignment target only."""

from __future__ import annotations

import torch

NORMS = ("none", "zscore")


def spatial_zscore(tokens: torch.Tensor, alpha: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Per image and channel, over the token axis: ``(y - alpha * mean_T y) / (std_T y + eps)``.

    The standard deviation is the unbiased one (divisor ``T - 1``) around the plain mean, so
    ``alpha`` only changes how much of the global (mean) component is removed. Computed in float32
    whatever the input dtype, because fp16 statistics over hundreds of tokens overflow.
    """
    if tokens.ndim != 3:
        raise ValueError(f"spatial_zscore expects tokens (B, T, D), got shape {tuple(tokens.shape)}")
    if tokens.shape[1] < 2:
        raise ValueError("spatial_zscore needs at least 2 tokens per image to compute a std")
    y = tokens.float()
    mean = y.mean(dim=1, keepdim=True)
    std = y.std(dim=1, keepdim=True, unbiased=True)
    return (y - alpha * mean) / (std + eps)


def normalize_target(tokens: torch.Tensor, norm: str, alpha: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Apply the named target normalisation (``none`` for REPA, ``zscore`` for iREPA)."""
    if norm == "none":
        return tokens.float()
    if norm == "zscore":
        return spatial_zscore(tokens, alpha=alpha, eps=eps)
    raise ValueError(f"unknown target normalisation {norm!r}; valid: {', '.join(NORMS)}")

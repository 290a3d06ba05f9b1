"""The tiny run the trainer tests start from: a 2-block SiT on 8 px synthetic images, aligned to a
DINOv2-S with random weights (no download, a second's work on a CPU); and the tiny perturbed SiT the
objective tests differentiate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from irepa.config import RunConfig

TINY_RUN: dict[str, Any] = {
    "model.name": "SiT-S/2",
    "model.depth": 2,
    "model.hidden_size": 32,
    "model.num_heads": 2,
    "model.input_size": 8,
    "model.in_channels": 3,
    "model.num_classes": 4,
    "data.source": "synthetic",
    "data.resolution": 8,
    "data.num_classes": 4,
    "data.num_workers": 0,
    "align.encoders": "dinov2-vit-s",
    "align.depth": 1,
    "train.batch_size": 8,
    "train.lr": 1e-3,
    "train.sample_every": 0,
    "train.report_to": ["none"],
}

# the U-Net tests' tiny run on top of TINY_RUN: a two-level U-Net on 8 px images aligned at down.1 (4 x 4 tokens)
TINY_U_NET_RUN: dict[str, Any] = {
    "model.depth": None,  # the tiny SiT's sizes: not U-Net options
    "model.hidden_size": None,
    "model.num_heads": None,
    "align.depth": 2,
    "align.projector": "conv",
    "align.norm": "zscore",
    "data.synthetic_size": 64,
    "train.log_every": 1,
    "train.ema_decay": 0.9,
}


def tiny_overrides(out: str | Path, **extra: Any) -> dict[str, Any]:
    """The tiny run's dotted overrides writing to ``out``, with ``extra`` on top."""
    return {**TINY_RUN, "out": str(out), **extra}


def with_random_encoders(cfg: RunConfig) -> RunConfig:
    """``cfg`` with every alignment encoder built from random weights."""
    for entry in cfg.align.encoders:
        entry.weights = "random"
    return cfg


def perturbed_sit(dtype: torch.dtype = torch.float64, interval_embedding: bool = True,
                  seed: int = 0) -> torch.nn.Module:
    """A tiny SiT (seeded) whose zero-initialised output layers are perturbed, so it is a smooth non-trivial
    function of its inputs (with MeanFlow's interval embedding by default)."""
    from irepa.models import create_model

    torch.manual_seed(seed)
    model = create_model("SiT-S/2", depth=2, hidden_size=32, num_heads=2, input_size=8, in_channels=3,
                         num_classes=4, interval_embedding=interval_embedding)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model.to(dtype).eval()

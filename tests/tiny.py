"""The tiny run the trainer tests start from: a 2-block SiT on 8 px synthetic images, aligned to a
DINOv2-S with random weights (no download, a second's work on a CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def tiny_overrides(out: str | Path, **extra: Any) -> dict[str, Any]:
    """The tiny run's dotted overrides writing to ``out``, with ``extra`` on top."""
    return {**TINY_RUN, "out": str(out), **extra}


def with_random_encoders(cfg: RunConfig) -> RunConfig:
    """``cfg`` with every alignment encoder built from random weights."""
    for entry in cfg.align.encoders:
        entry.weights = "random"
    return cfg

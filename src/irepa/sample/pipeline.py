"""From a checkpoint to images: the model, its objective, its codec, and a seed-per-sample generator.

:class:`~irepa.diffusion.generator.Generator` and the picture helpers live below training (which
draws its sample grids with them); this module adds what reads a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from irepa.codecs import codec_from_checkpoint, to_uint8
from irepa.config import RunConfig, config_from_checkpoint, from_dict, to_dict, with_defaults
from irepa.diffusion.generator import Generator
from irepa.objectives import build_objective
from irepa.precision import AUTO
from irepa.train.aligned_model import build_backbone
from irepa.train.checkpoint import load_checkpoint
from irepa.utils.images import make_grid, save_png

__all__ = ["Generator", "load_generator", "build_model_from_config", "make_grid", "save_png", "to_uint8"]


def build_model_from_config(cfg: dict[str, Any]) -> nn.Module:
    """The backbone described by a checkpoint's config dict."""
    return build_backbone(from_dict(RunConfig, with_defaults(cfg)))


def load_generator(
    ckpt_path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu", vae: str | None = None,
    precision: str = AUTO,
) -> Generator:
    """Rebuild a training checkpoint's model (EMA weights by default), its objective and its codec."""
    ckpt = load_checkpoint(ckpt_path)
    cfg = config_from_checkpoint(ckpt)
    model = build_model_from_config(ckpt["config"])
    weights = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict(weights, strict=True)
    model.to(device).eval()
    objective = build_objective(cfg.objective, cfg.model.num_classes)
    codec = codec_from_checkpoint(ckpt, vae, ema=use_ema).to(device).prepare_decoder(device)
    info = {
        "checkpoint": ckpt["path"],
        "step": int(ckpt["step"]),
        "model": cfg.model.name,
        "recipe": cfg.recipe,
        "objective": objective.describe(),
        "run_sampler": to_dict(cfg.sample),  # the run's own sampler: what `irepa sample` starts from
        "ema": bool(use_ema and ckpt.get("ema") is not None),
        "vae": getattr(codec, "vae_name", None),
        "space": "latent" if codec.kind != "pixels" else "pixel",
    }
    return Generator(model, objective, codec, cfg.model.input_size, info, precision)

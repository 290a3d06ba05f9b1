"""The optimiser of a run and its learning-rate schedule (a pure function of the step)."""

from __future__ import annotations

import math

import torch
from torch import nn

from irepa.config import LR_SCHEDULES
from irepa.errors import ConfigError


def build_optimizer(t_cfg, module: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; with ``decay_1d_params: false`` biases, norms and other 1-D parameters get no weight decay.

    On CUDA the fused kernel is used (one launch for all parameters).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not t_cfg.decay_1d_params and t_cfg.weight_decay > 0:
        params = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": t_cfg.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(
        params, lr=t_cfg.lr, betas=tuple(t_cfg.betas), weight_decay=t_cfg.weight_decay, eps=t_cfg.adam_eps, **extra
    )


def learning_rate(t_cfg, step: int) -> float:
    """The learning rate for optimizer step ``step`` (0-indexed): linear warm-up, then constant or cosine.

    A pure function of the step, so a resumed run needs no scheduler state.
    """
    if t_cfg.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"train.lr_schedule {t_cfg.lr_schedule!r} is unknown; valid: {', '.join(LR_SCHEDULES)}")
    if step < t_cfg.warmup_steps:
        return t_cfg.lr * (step + 1) / t_cfg.warmup_steps
    if t_cfg.lr_schedule == "constant":
        return t_cfg.lr
    span = max(1, t_cfg.steps - t_cfg.warmup_steps)
    progress = min(1.0, (step - t_cfg.warmup_steps) / span)
    return t_cfg.min_lr + (t_cfg.lr - t_cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))

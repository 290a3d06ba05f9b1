"""Exponential moving average of model weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """Keeps ``shadow = decay * shadow + (1 - decay) * param`` after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.shadow = copy.deepcopy(model).eval()
        self.shadow.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used after optimizer step ``step`` (1-indexed).

        With ``warmup`` the decay ramps as ``(1 + step) / (10 + step)`` up to ``decay``, so a short run's
        average is not dominated by the initial weights (0.995 ** 300 still leaves 22 % of them).
        """
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        decay = self.decay if step is None else self.decay_at(step)
        ema_params = [p for p in self.shadow.parameters()]
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise RuntimeError("EMA and model have different parameter lists")
        torch._foreach_lerp_(ema_params, [p.to(e.dtype) for p, e in zip(params, ema_params)], 1.0 - decay)
        for eb, b in zip(self.shadow.buffers(), model.buffers()):
            eb.copy_(b)

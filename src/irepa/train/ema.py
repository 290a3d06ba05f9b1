"""Exponential moving average of model weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def update_average(shadow: nn.Module, model: nn.Module, decay: float) -> None:
    """``shadow <- decay * shadow + (1 - decay) * model`` for parameters and floating-point buffers.

    Floating-point buffers (batch-norm running statistics) are averaged like parameters; integer
    buffers (batch counters) are copied. A constant buffer, such as a fixed position embedding,
    is left bit-identical (``lerp(a, a, w) == a``).
    """
    ema_params = list(shadow.parameters())
    params = [p.detach() for p in model.parameters()]
    if len(ema_params) != len(params):
        raise RuntimeError("EMA and model have different parameter lists")
    if params:
        torch._foreach_lerp_(ema_params, [p.to(e.dtype) for p, e in zip(params, ema_params)], 1.0 - decay)
    for eb, b in zip(shadow.buffers(), model.buffers()):
        if eb.is_floating_point():
            eb.lerp_(b.to(eb.dtype), 1.0 - decay)
        else:
            eb.copy_(b)


def ema_decay(decay: float, warmup: bool, step: int) -> float:
    """The decay used after optimizer step ``step`` (1-indexed).

    With ``warmup`` the decay ramps as ``(1 + step) / (10 + step)`` up to ``decay``, so a short run's
    average is not dominated by the initial weights (0.995 ** 300 still leaves 22 % of them).
    """
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


class EMA(nn.Module):
    """Keeps ``shadow = decay * shadow + (1 - decay) * param`` after every optimizer step (float buffers too)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.shadow = copy.deepcopy(model).eval()
        self.shadow.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used after optimizer step ``step`` (1-indexed); see :func:`ema_decay`."""
        return ema_decay(self.decay, self.warmup, step)

    def update(self, model: nn.Module, step: int | None = None) -> None:
        update_average(self.shadow, model, self.decay if step is None else self.decay_at(step))

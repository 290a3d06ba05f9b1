"""The flow-matching (velocity) objective, with label dropout for classifier-free guidance."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .interpolants import Interpolant
from .time_sampling import sample_time


@dataclass
class FlowBatch:
    """Everything one training step draws at random, kept so it can be reused or inspected."""

    xt: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor  # after dropout to the null class


def drop_labels(labels: torch.Tensor, num_classes: int, prob: float, generator: torch.Generator | None) -> torch.Tensor:
    """Replace each label by the null class ``num_classes`` with probability ``prob``."""
    if prob <= 0:
        return labels
    drop = torch.rand(labels.shape[0], generator=generator) < prob
    return torch.where(drop.to(labels.device), torch.full_like(labels, num_classes), labels)


def make_flow_batch(
    x0: torch.Tensor,
    labels: torch.Tensor,
    interpolant: Interpolant,
    num_classes: int,
    label_dropout: float = 0.1,
    time_sampling: str = "uniform",
    p_mean: float = -1.2,
    p_std: float = 1.2,
    generator: torch.Generator | None = None,
) -> FlowBatch:
    """Draw t, noise and label dropout (from ``generator``, on CPU for exact reproducibility)."""
    b = x0.shape[0]
    t = sample_time(b, time_sampling, p_mean, p_std, generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
    return FlowBatch(
        xt=interpolant.sample_xt(x0, noise, t),
        t=t,
        target=interpolant.velocity(x0, noise, t),
        labels=drop_labels(labels, num_classes, label_dropout, generator),
    )


def velocity_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean ||v_theta - v||^2`` (mean over all elements), in float32."""
    return (pred.float() - target.float()).pow(2).mean()

"""The alignment loss: negative mean cosine similarity between projected states and targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def alignment_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-mean_{b,t} cos(pred_{b,t}, target_{b,t})``, computed in float32 even under autocast."""
    if pred.shape != target.shape:
        raise ValueError(f"alignment pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    with torch.autocast(device_type=pred.device.type, enabled=False):
        cos = F.cosine_similarity(pred.float(), target.float(), dim=-1, eps=1e-8)
    return -cos.mean()

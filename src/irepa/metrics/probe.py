"""Linear probe: top-1 accuracy of a linear classifier on frozen, mean-pooled encoder features.

This measures the "global information" side of an encoder, to set against the spatial metrics.
Features are standardised with the training statistics; the classifier is trained full-batch with
L-BFGS and a small L2 penalty, from a fixed seed, so a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float
    train_accuracy: float
    n_train: int
    n_test: int
    n_classes: int


def train_linear_probe(
    train_x: np.ndarray | torch.Tensor,
    train_y: np.ndarray | torch.Tensor,
    test_x: np.ndarray | torch.Tensor,
    test_y: np.ndarray | torch.Tensor,
    n_classes: int | None = None,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
    seed: int = 0,
) -> ProbeResult:
    """Fit ``softmax(W x + b)`` on the training features and report test top-1 accuracy."""
    xtr = torch.as_tensor(np.asarray(train_x), dtype=torch.float32)
    xte = torch.as_tensor(np.asarray(test_x), dtype=torch.float32)
    ytr = torch.as_tensor(np.asarray(train_y), dtype=torch.int64)
    yte = torch.as_tensor(np.asarray(test_y), dtype=torch.int64)
    if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(xtr.shape)} and {tuple(xte.shape)}")
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError("features and labels differ in length")
    if len(xtr) == 0 or len(xte) == 0:
        raise ValueError("the probe needs at least one training and one test example")
    n_classes = int(n_classes if n_classes is not None else max(int(ytr.max()), int(yte.max())) + 1)
    mean, std = xtr.mean(dim=0), xtr.std(dim=0, unbiased=False).clamp_min(1e-6)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std

    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(xtr.shape[1], n_classes, generator=gen) * 0.01).requires_grad_(True)
    bias = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ weight + bias, ytr) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        train_acc = ((xtr @ weight + bias).argmax(dim=1) == ytr).float().mean().item()
        test_acc = ((xte @ weight + bias).argmax(dim=1) == yte).float().mean().item()
    return ProbeResult(test_acc, train_acc, len(xtr), len(xte), n_classes)

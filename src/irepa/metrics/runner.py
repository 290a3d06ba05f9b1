"""Spatial metrics of several encoders over one image source: per-image values and dataset means.

Each encoder runs at the same token grid; its tokens are streamed batch by batch (from the feature
cache when present) through :func:`~irepa.metrics.registry.compute_metrics`. Mask metrics (SRSS)
only count images whose mask gives enough foreground and background tokens; the others are NaN and
counted as skipped, with the reason kept per image.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from irepa.metrics.features import FeatureRequest, is_cached, iter_features
from irepa.metrics.registry import compute_metrics, get_metric
from irepa.metrics.sources import ImageSource, token_masks
from irepa.metrics.stats import bootstrap_mean

OK = "ok"


@dataclass
class MaskTable:
    """Token masks ``(N, T)`` of a source at one grid, and why an image cannot be used (or ``ok``)."""

    masks: torch.Tensor
    status: list[str]

    @property
    def usable(self) -> np.ndarray:
        return np.array([s == OK for s in self.status])


def build_mask_table(source: ImageSource, grid: tuple[int, int], min_tokens: int = 1) -> MaskTable:
    """Token masks for every image; an image needs ``min_tokens`` foreground and background tokens."""
    T = grid[0] * grid[1]
    masks = torch.zeros(len(source), T, dtype=torch.bool)
    status = []
    for i in range(len(source)):
        pixel = source.mask(i)
        if pixel is None:
            status.append("no-mask")
            continue
        masks[i] = token_masks(pixel, grid)
        n_fg = int(masks[i].sum())
        if n_fg < min_tokens:
            status.append("too-few-foreground-tokens")
        elif T - n_fg < min_tokens:
            status.append("too-few-background-tokens")
        else:
            status.append(OK)
    return MaskTable(masks, status)


@dataclass
class EncoderResult:
    """Per-image metric values of one encoder (NaN = not defined for that image)."""

    encoder: str
    weights: str | None
    ids: list[str]
    values: dict[str, np.ndarray]
    status: dict[str, list[str]] = field(default_factory=dict)

    def skipped(self, metric: str) -> Counter:
        """Reasons images were left out of ``metric``, with counts."""
        return Counter(s for s in self.status.get(metric, []) if s != OK)

    def summary(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
        """One CSV row: mean and bootstrap interval of each metric over images (+ skipped counts)."""
        row: dict[str, Any] = {"encoder": self.encoder, "n_images": len(self.ids)}
        for name, vals in self.values.items():
            est = bootstrap_mean(vals, n_boot=n_boot, level=level, seed=seed)
            row[f"{name}_mean"], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = est.value, est.ci_low, est.ci_high
            if get_metric(name).needs_masks:
                row[f"{name}_n_skipped"] = len(self.ids) - est.n
        return row

    def per_image_rows(self) -> list[dict[str, Any]]:
        rows = []
        for i, image_id in enumerate(self.ids):
            row: dict[str, Any] = {"encoder": self.encoder, "image": image_id}
            for name, vals in self.values.items():
                row[name] = float(vals[i])
                if name in self.status:
                    row[f"{name}_status"] = self.status[name][i]
            rows.append(row)
        return rows


def evaluate_encoder(
    encoder: str,
    source: ImageSource,
    grid: tuple[int, int],
    metrics: Sequence[str],
    weights: str | None = None,
    mask_table: MaskTable | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> EncoderResult:
    """Per-image values of ``metrics`` for one encoder on ``source``."""
    mask_metrics = [m for m in metrics if get_metric(m).needs_masks]
    if mask_metrics and mask_table is None:
        raise ValueError(f"metrics {', '.join(mask_metrics)} need masks; build them with build_mask_table")
    request = FeatureRequest(encoder, weights, grid, source)
    cached = is_cached(request, cache_dir)
    parts: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    desc = f"{encoder} ({'cached features' if cached else 'encoding'})"
    with tqdm(total=len(source), desc=desc, unit="img", disable=not progress) as bar:
        for start, feats in iter_features(request, batch_size, cache_dir, device, progress=False):
            tokens = torch.from_numpy(feats).float()
            masks = mask_table.masks[start : start + len(feats)] if mask_metrics else None
            values = compute_metrics(tokens, grid[0], grid[1], metrics, masks=masks, params=params)
            for name, v in values.items():
                parts[name].append(v.cpu().numpy().astype(np.float64))
            bar.update(len(feats))
    values = {m: np.concatenate(p) for m, p in parts.items()}
    status: dict[str, list[str]] = {}
    for name in mask_metrics:
        usable = mask_table.usable
        values[name][~usable] = np.nan
        status[name] = [
            s if s != OK else (OK if np.isfinite(v) else "no-anchor-with-both-sets")
            for s, v in zip(mask_table.status, values[name])
        ]
    return EncoderResult(encoder, weights, list(source.ids), values, status)


def summary_columns(metrics: Sequence[str]) -> list[str]:
    """Column order of the summary CSV."""
    cols = ["encoder", "n_images"]
    for name in metrics:
        cols += [f"{name}_mean", f"{name}_ci_low", f"{name}_ci_high"]
        if get_metric(name).needs_masks:
            cols.append(f"{name}_n_skipped")
    return cols


def per_image_columns(metrics: Sequence[str]) -> list[str]:
    cols = ["encoder", "image"]
    for name in metrics:
        cols.append(name)
        if get_metric(name).needs_masks:
            cols.append(f"{name}_status")
    return cols

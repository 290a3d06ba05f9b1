"""Spatial-structure metrics of patch tokens: LDS, CDS, SRSS and RMSC (one value per image).

All four work on L2-normalised tokens ``u`` of one image laid out on an ``H x W`` grid, with the
Manhattan distance ``d`` between grid cells:

* **LDS** - mean cosine of 4-neighbour pairs (``d = 1``) minus mean cosine of all ordered pairs with
  ``d >= far_dist``. Higher: nearby tokens agree more than distant ones.
* **CDS** - minus the least-squares slope of "mean cosine of pairs at exactly ``d``" against ``d``
  for ``d = 1..dmax``. Higher: similarity decays faster with distance.
* **SRSS** - per foreground anchor, mean cosine to foreground tokens at ``1 <= d <= d_pos`` minus
  mean cosine to background tokens at ``d >= d_neg``, averaged over anchors that have both sets;
  NaN for an image with no such anchor. Higher: the object is coherent and distinct from background.
* **RMSC** - ``sqrt(mean_t ||u_t - mean_t u||^2)``: how far tokens spread around the image mean.

Everything is batched (Gram blocks and distance-bucket reductions, no per-image or per-anchor loop)
and computed in float32, with float64 accumulators.
"""

from __future__ import annotations

import torch

from irepa.metrics.grid import DEFAULT_CHUNK_BYTES, TokenGrid
from irepa.metrics.registry import register_metric


def _check_distance(name: str, value: int, grid: TokenGrid, minimum: int = 1) -> None:
    if not minimum <= value <= grid.max_distance:
        raise ValueError(
            f"{name}={value} is outside 1..{grid.max_distance}, the distances a {grid.H}x{grid.W} grid has; "
            f"choose a smaller {name} or a larger grid"
        )


@register_metric("lds", description="local (d=1) minus distant (d>=far_dist) mean token cosine")
def lds_metric(grid: TokenGrid, far_dist: int = 6) -> torch.Tensor:
    """Local-vs-distant similarity per image (see module docstring)."""
    _check_distance("far_dist", far_dist, grid)
    sums, counts = grid.distance_profile()
    near = sums[:, 1] / counts[1]
    far = sums[:, far_dist:].sum(dim=1) / counts[far_dist:].sum()
    return (near - far).float()


@register_metric("cds", description="minus the slope of mean token cosine against grid distance 1..dmax")
def cds_metric(grid: TokenGrid, dmax: int = 8) -> torch.Tensor:
    """Correlation-decay slope per image (see module docstring)."""
    if dmax < 2:
        raise ValueError(f"dmax={dmax}: a slope needs at least distances 1 and 2")
    _check_distance("dmax", dmax, grid)
    sums, counts = grid.distance_profile()
    mean_cos = sums[:, 1 : dmax + 1] / counts[1 : dmax + 1]
    d = torch.arange(1, dmax + 1, dtype=torch.float64, device=mean_cos.device)
    dc = d - d.mean()
    slope = ((mean_cos - mean_cos.mean(dim=1, keepdim=True)) * dc).sum(dim=1) / (dc * dc).sum()
    return (-slope).float()


@register_metric(
    "srss",
    needs_masks=True,
    description="foreground-near minus background-far cosine per foreground anchor",
)
def srss_metric(grid: TokenGrid, d_pos: int = 1, d_neg: int = 6) -> torch.Tensor:
    """Semantic-region self-similarity per image; NaN where no anchor has both sets."""
    _check_distance("d_pos", d_pos, grid)
    _check_distance("d_neg", d_neg, grid)
    if grid.masks is None:
        raise ValueError("srss needs foreground masks (B, T) bool")
    fg = grid.masks.to(grid.unit.device)
    fg_f = fg.float()
    bg_f = (~fg).float()
    total = torch.zeros(grid.batch, dtype=torch.float64, device=fg.device)
    n_valid = torch.zeros(grid.batch, dtype=torch.int64, device=fg.device)
    for rows, dist, cos in grid.gram_blocks():
        near = ((dist >= 1) & (dist <= d_pos)).float()  # (c, T)
        far = (dist >= d_neg).float()
        pos_sum = torch.bmm(cos * near, fg_f.unsqueeze(2)).squeeze(2)  # (B, c)
        neg_sum = torch.bmm(cos * far, bg_f.unsqueeze(2)).squeeze(2)
        pos_cnt = fg_f @ near.T  # (B, c)
        neg_cnt = bg_f @ far.T
        valid = fg[:, rows] & (pos_cnt > 0) & (neg_cnt > 0)
        diff = pos_sum.double() / pos_cnt.clamp_min(1) - neg_sum.double() / neg_cnt.clamp_min(1)
        total += torch.where(valid, diff, torch.zeros_like(diff)).sum(dim=1)
        n_valid += valid.sum(dim=1)
    out = total / n_valid.clamp_min(1)
    return torch.where(n_valid > 0, out, torch.full_like(out, float("nan"))).float()


@register_metric("rmsc", description="RMS distance of unit tokens from their image mean")
def rmsc_metric(grid: TokenGrid) -> torch.Tensor:
    """RMS spatial contrast per image (see module docstring)."""
    u = grid.unit
    return torch.linalg.vector_norm(u - u.mean(dim=1, keepdim=True), dim=-1).square().mean(dim=1).sqrt()


def lds(
    tokens: torch.Tensor, H: int, W: int, far_dist: int = 6, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> torch.Tensor:
    """LDS of each image of ``tokens (B, H*W, D)`` -> ``Tensor[B]``."""
    return lds_metric(TokenGrid(tokens, H, W, max_chunk_bytes=max_chunk_bytes), far_dist=far_dist)


def cds(
    tokens: torch.Tensor, H: int, W: int, dmax: int = 8, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> torch.Tensor:
    """CDS of each image of ``tokens (B, H*W, D)`` -> ``Tensor[B]``."""
    return cds_metric(TokenGrid(tokens, H, W, max_chunk_bytes=max_chunk_bytes), dmax=dmax)


def srss(
    tokens: torch.Tensor,
    H: int,
    W: int,
    masks: torch.Tensor,
    d_pos: int = 1,
    d_neg: int = 6,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """SRSS of each image given foreground ``masks (B, H*W)`` bool -> ``Tensor[B]`` (NaN: no anchor)."""
    grid = TokenGrid(tokens, H, W, masks=masks, max_chunk_bytes=max_chunk_bytes)
    return srss_metric(grid, d_pos=d_pos, d_neg=d_neg)


def rmsc(tokens: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """RMSC of each image of ``tokens (B, H*W, D)`` -> ``Tensor[B]``."""
    return rmsc_metric(TokenGrid(tokens, H, W))

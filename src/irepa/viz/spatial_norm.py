"""What spatial normalisation does to encoder tokens, as a picture.

For one image and one anchor patch, each encoder row shows: the image with the anchor marked, the
cosine similarity of every token to the anchor for the raw tokens and for the spatially z-scored
tokens, and a 3-component PCA of each token set as an RGB image. Raw tokens of many encoders share a
large global component (everything looks similar to the anchor); removing it reveals the local
structure that iREPA transfers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from irepa.viz.figures import new_figure


def zscore_tokens(tokens: torch.Tensor, alpha: float) -> torch.Tensor:
    """iREPA's spatial normalisation ``(B, T, D) -> (B, T, D)`` (from ``irepa.align.normalize``)."""
    from irepa.align.normalize import spatial_zscore

    return spatial_zscore(tokens, alpha=alpha)


def cosine_map(tokens: torch.Tensor, anchor: int) -> torch.Tensor:
    """Cosine similarity ``(T,)`` of every token of ``tokens (T, D)`` to token ``anchor``."""
    u = F.normalize(tokens.float(), dim=-1)
    return u @ u[anchor]


def pca_rgb(tokens: torch.Tensor, grid: tuple[int, int], clip: float = 1.0) -> np.ndarray:
    """First three principal components of ``tokens (T, D)`` as an RGB image ``(h, w, 3)`` in [0, 1].

    Each component is scaled by its ``clip``/``100 - clip`` percentiles; signs are fixed so the
    largest loading is positive, which makes the colours reproducible.
    """
    x = tokens.double()
    x = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    comps = vh[:3]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    proj = (x @ (comps * signs).T).numpy()
    if proj.shape[1] < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo = np.percentile(proj, clip, axis=0)
    hi = np.percentile(proj, 100 - clip, axis=0)
    rgb = np.clip((proj - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    return rgb.reshape(grid[0], grid[1], 3)


@dataclass
class SpatialNormRow:
    """The maps drawn for one encoder."""

    encoder: str
    raw_cos: np.ndarray  # (h, w)
    norm_cos: np.ndarray
    raw_pca: np.ndarray  # (h, w, 3)
    norm_pca: np.ndarray


def spatial_norm_row(
    encoder: str, tokens: torch.Tensor, grid: tuple[int, int], anchor: tuple[int, int], alpha: float
) -> SpatialNormRow:
    """Maps of one image's tokens ``(T, D)`` before and after spatial normalisation."""
    h, w = grid
    if tokens.ndim != 2 or tokens.shape[0] != h * w:
        raise ValueError(f"tokens must be (T={h * w}, D) for a {h}x{w} grid, got {tuple(tokens.shape)}")
    i, j = anchor
    if not (0 <= i < h and 0 <= j < w):
        raise ValueError(f"anchor {i},{j} is outside the {h}x{w} token grid (rows 0..{h - 1}, cols 0..{w - 1})")
    idx = i * w + j
    normed = zscore_tokens(tokens[None].float(), alpha)[0]
    return SpatialNormRow(
        encoder=encoder,
        raw_cos=cosine_map(tokens, idx).reshape(h, w).numpy(),
        norm_cos=cosine_map(normed, idx).reshape(h, w).numpy(),
        raw_pca=pca_rgb(tokens, grid),
        norm_pca=pca_rgb(normed, grid),
    )


def draw_spatial_norm(
    image: torch.Tensor, rows: Sequence[SpatialNormRow], anchor: tuple[int, int], alpha: float
) -> Figure:
    """The figure: rows = encoders, columns = image, cos raw, cos normalised, PCA raw, PCA normalised."""
    if not rows:
        raise ValueError("nothing to draw: no encoder rows")
    img = image.permute(1, 2, 0).clamp(0, 1).numpy()
    H0, W0 = img.shape[:2]
    h, w = rows[0].raw_cos.shape
    i, j = anchor
    titles = [
        "image + anchor",
        "cosine to anchor (raw)",
        f"cosine to anchor (z-score, α={alpha:g})",
        "PCA (raw)",
        f"PCA (z-score, α={alpha:g})",
    ]
    fig = new_figure(2.6 * len(titles) + 0.6, 2.5 * len(rows) + 0.3)
    axes = fig.subplots(len(rows), len(titles), squeeze=False)
    last_im = None
    for r, row in enumerate(rows):
        ax = axes[r, 0]
        ax.imshow(img)
        ax.add_patch(Rectangle((j * W0 / w, i * H0 / h), W0 / w, H0 / h, fill=False, ec="red", lw=1.5))
        ax.set_ylabel(row.encoder, fontsize=9)
        for c, cos in ((1, row.raw_cos), (2, row.norm_cos)):
            last_im = axes[r, c].imshow(cos, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
            axes[r, c].add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=1.2))
        axes[r, 3].imshow(row.raw_pca, interpolation="nearest")
        axes[r, 4].imshow(row.norm_pca, interpolation="nearest")
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    fig.colorbar(last_im, ax=axes[:, 1:3].ravel().tolist(), shrink=0.8, label="cosine")
    return fig

"""Weight-free alignment targets: dense HOG and SIFT-like descriptors, one per token, in torch.

Both histogram gradient orientations over a token's pixels and pool them into ``cells x cells``
spatial cells, then normalise (L2, clip at 0.2, L2 again):

* ``hog``: Dalal-Triggs / scikit-image HOG. Central differences (zero on the border), per pixel
  the colour channel with the largest gradient, unsigned orientation in ``[0, 180)`` hard-binned,
  mean magnitude per cell; a token is one block of ``cells x cells`` cells (L2-Hys). A token grid
  equals scikit-image's ``hog(..., cells_per_block=(c, c), feature_vector=False)[::c, ::c]``.
* ``sift``: dense SIFT-like descriptor on luminance: signed orientation soft-assigned to the two
  nearest of ``bins`` bins, bilinear assignment to ``cells x cells`` spatial cells, Gaussian window
  of width half the token, normalise-clip-normalise.

Everything is vectorised: gradients and orientation maps at full resolution, then one matrix
product of each token's pixels with a fixed ``(p*p, cells*cells)`` pooling matrix.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from irepa.encoders.base import Encoder
from irepa.encoders.spec import REPA_POS, EncoderSpec, PosResample

_LUMA = (0.299, 0.587, 0.114)


def _gradients(x: torch.Tensor, border: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences ``(d/drow, d/dcol)`` of ``(B, C, H, W)`` (not halved, as scikit-image)."""
    if border == "zero":
        g_row = torch.zeros_like(x)
        g_col = torch.zeros_like(x)
        g_row[..., 1:-1, :] = x[..., 2:, :] - x[..., :-2, :]
        g_col[..., :, 1:-1] = x[..., :, 2:] - x[..., :, :-2]
        return g_row, g_col
    p = nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    return p[..., 2:, 1:-1] - p[..., :-2, 1:-1], p[..., 1:-1, 2:] - p[..., 1:-1, :-2]


def _pooling_matrix(p: int, cells: int, soft: bool, dtype: torch.dtype) -> torch.Tensor:
    """``(p*p, cells*cells)`` weights from a token's pixels to its spatial cells."""
    pos = torch.arange(p, dtype=torch.float64) + 0.5
    k = torch.arange(cells, dtype=torch.float64)
    size = p / cells
    if soft:  # bilinear to cell centres, times a Gaussian window of sigma = p / 2
        w1 = (1 - (pos[:, None] / size - 0.5 - k[None, :]).abs()).clamp_min(0)
        g = torch.exp(-((pos - p / 2) ** 2) / (2 * (p / 2) ** 2))
        w1 = w1 * g[:, None]
    else:  # box: each pixel in exactly one cell, cell mean
        w1 = ((pos[:, None] // size) == k[None, :]).to(torch.float64) / size
    return torch.einsum("ik,jl->ijkl", w1, w1).reshape(p * p, cells * cells).to(dtype)


class OrientedGradientEncoder(Encoder):
    """Histogram-of-oriented-gradient tokens (HOG or SIFT-like, see the module docstring).

    Always computed in float32 (or float64 when cast): angles, bin edges and the clip at 0.2 are
    too coarse in bfloat16, so a lower-precision request leaves them untouched.
    """

    supports_autocast = False

    def __init__(self, spec: EncoderSpec, resolution: tuple[int, int], output_grid: tuple[int, int] | None = None):
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.patch_size = spec.patch_size
        self.resolution = tuple(resolution)
        self.output_grid = tuple(output_grid) if output_grid is not None else None
        self.mean, self.std, self.interpolation = spec.mean, spec.std, spec.interpolation
        self.antialias = spec.resize_antialias
        self.cells = int(spec.options.get("cells", 2))
        self.bins = int(spec.options.get("bins", 9))
        self.sift = spec.source == "sift"
        if self.patch_size % self.cells:
            raise ValueError(f"{spec.name}: token size {self.patch_size} px is not divisible by {self.cells} cells")
        self.embed_dim = self.cells * self.cells * self.bins
        if spec.embed_dim != self.embed_dim:
            raise ValueError(f"{spec.name}: spec embed_dim {spec.embed_dim} but cells^2*bins = {self.embed_dim}")
        self.register_buffer("pool", _pooling_matrix(self.patch_size, self.cells, self.sift, torch.float32),
                             persistent=False)

    def _orientation_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, bins, H, W)``: gradient magnitude spread over orientation bins."""
        if self.sift:
            gray = (x * x.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
            g_row, g_col = _gradients(gray, "replicate")
            g_row, g_col = g_row[:, 0], g_col[:, 0]
        else:
            g_row, g_col = _gradients(x, "zero")
            mag = torch.hypot(g_row, g_col)
            best = mag.argmax(dim=1, keepdim=True)  # strongest channel per pixel (first on ties)
            g_row, g_col = g_row.gather(1, best)[:, 0], g_col.gather(1, best)[:, 0]
        mag = torch.hypot(g_row, g_col)
        if self.sift:
            angle = torch.atan2(g_row, g_col).remainder(2 * math.pi) * (self.bins / (2 * math.pi))
            lower = angle.floor()
            frac = angle - lower
            lower = lower.long() % self.bins
            maps = torch.zeros(mag.shape[0], self.bins, *mag.shape[1:], dtype=mag.dtype, device=mag.device)
            maps.scatter_add_(1, lower[:, None], (mag * (1 - frac))[:, None])
            maps.scatter_add_(1, ((lower + 1) % self.bins)[:, None], (mag * frac)[:, None])
            return maps
        angle = torch.rad2deg(torch.atan2(g_row, g_col)).remainder(180.0)
        edges = torch.arange(1, self.bins, dtype=torch.float64, device=x.device) * (180.0 / self.bins)
        index = (angle.unsqueeze(-1).to(torch.float64) >= edges).sum(-1)  # bin i: edge_i <= angle < edge_i+1
        return nn.functional.one_hot(index, self.bins).permute(0, 3, 1, 2).to(mag.dtype) * mag[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected (B, 3, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            x = x.float()
        p = self.patch_size
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        maps = self._orientation_maps(x)[..., : gh * p, : gw * p]
        b = maps.shape[0]
        pixels = maps.reshape(b, self.bins, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
        pixels = pixels.reshape(b, gh * gw, self.bins, p * p)
        hist = pixels @ self.pool.to(pixels.dtype)  # (B, T, bins, cells*cells)
        desc = hist.transpose(-1, -2).reshape(b, gh * gw, self.embed_dim)  # (cell_row, cell_col, bin) order
        eps = 1e-5 if not self.sift else 1e-7
        desc = desc / torch.sqrt((desc**2).sum(-1, keepdim=True) + eps**2)
        desc = desc.clamp_max(0.2)
        desc = desc / torch.sqrt((desc**2).sum(-1, keepdim=True) + eps**2)
        return self.finish(desc, (gh, gw))


def create(spec: EncoderSpec, resolution: tuple[int, int], output_grid: tuple[int, int] | None,
           weights: str | None, meta: bool = False, pos: PosResample = REPA_POS) -> OrientedGradientEncoder:
    """HOG / SIFT encoders have no weights (``weights`` must be ``None`` or ``"random"``) nor positions."""
    if weights not in (None, "random"):
        raise ValueError(f"{spec.name} is weight-free; weights={weights!r} cannot be used (pass None)")
    if meta:
        with torch.device("meta"):
            return OrientedGradientEncoder(spec, resolution, output_grid)
    return OrientedGradientEncoder(spec, resolution, output_grid)

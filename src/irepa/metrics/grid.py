"""Patch tokens laid out on their 2-D grid, with the pairwise statistics the spatial metrics share.

The metrics compare every token with every other token through the cosine (Gram) matrix and group
pairs by their Manhattan distance on the grid. For large grids that matrix does not fit in memory
(64 x 64 tokens, batch 16 is 1 GiB in float32), so it is built a block of anchor rows at a time;
the block height follows from a byte budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_BYTES = 256 * 2**20  # memory budget of one (B, rows, T) float32 Gram block


def grid_coordinates(H: int, W: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column index of every token, in row-major token order."""
    idx = torch.arange(H * W, device=device)
    return idx // W, idx % W


def manhattan_distances(H: int, W: int, rows: slice | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Manhattan distance ``(len(rows), T)`` from the anchors in ``rows`` to every token."""
    ys, xs = grid_coordinates(H, W, device)
    rows = rows if rows is not None else slice(0, H * W)
    return (ys[rows, None] - ys[None, :]).abs() + (xs[rows, None] - xs[None, :]).abs()


def validate_tokens(tokens: torch.Tensor, H: int, W: int, masks: torch.Tensor | None = None) -> None:
    """Raise a ``ValueError`` naming the problem when tokens, grid and masks disagree."""
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (B, T, D), got shape {tuple(tokens.shape)}")
    if H < 1 or W < 1:
        raise ValueError(f"grid must be positive, got {H}x{W}")
    if tokens.shape[1] != H * W:
        raise ValueError(
            f"tokens have T={tokens.shape[1]} but the grid {H}x{W} has {H * W} cells; pass the encoder's grid"
        )
    if masks is not None:
        if masks.shape != tokens.shape[:2]:
            raise ValueError(f"masks must be (B, T) = {tuple(tokens.shape[:2])}, got {tuple(masks.shape)}")
        if masks.dtype != torch.bool:
            raise ValueError(f"masks must be a bool tensor (True = foreground), got {masks.dtype}")


@dataclass
class TokenGrid:
    """A batch of patch tokens ``(B, T, D)`` on an ``H x W`` grid (row-major), plus optional masks.

    Metric functions receive one of these so that shared work (normalisation, the distance
    profile) is done once however many metrics are computed.
    """

    tokens: torch.Tensor
    H: int
    W: int
    masks: torch.Tensor | None = None
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES
    _unit: torch.Tensor | None = field(default=None, init=False, repr=False)
    _profile: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)
    _gram: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        validate_tokens(self.tokens, self.H, self.W, self.masks)
        if self.max_chunk_bytes < 1:
            raise ValueError(f"max_chunk_bytes must be positive, got {self.max_chunk_bytes}")

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.H * self.W

    @property
    def max_distance(self) -> int:
        """Largest Manhattan distance on the grid."""
        return self.H + self.W - 2

    @property
    def unit(self) -> torch.Tensor:
        """L2-normalised tokens in float32 (a zero token stays zero)."""
        if self._unit is None:
            self._unit = F.normalize(self.tokens.float(), dim=-1)
        return self._unit

    def chunk_rows(self) -> int:
        """Anchor rows per Gram block so one block stays within ``max_chunk_bytes``."""
        per_row = max(1, self.batch) * self.num_tokens * 4
        return max(1, min(self.num_tokens, self.max_chunk_bytes // per_row))

    def gram_blocks(self) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """Yield ``(rows, dist (c, T), cos (B, c, T))`` for consecutive blocks of anchor rows.

        When the whole Gram matrix fits in the budget it is computed once and kept, so several
        metrics on the same grid share it.
        """
        u = self.unit
        step = self.chunk_rows()
        if step == self.num_tokens:
            if self._gram is None:
                dist = manhattan_distances(self.H, self.W, None, u.device)
                self._gram = (dist, torch.bmm(u, u.transpose(1, 2)))
            yield slice(0, self.num_tokens), *self._gram
            return
        for start in range(0, self.num_tokens, step):
            rows = slice(start, min(start + step, self.num_tokens))
            dist = manhattan_distances(self.H, self.W, rows, u.device)
            yield rows, dist, torch.bmm(u[:, rows], u.transpose(1, 2))

    def distance_profile(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of cosines ``(B, max_distance + 1)`` (float64) and pair counts per distance.

        Entry ``d`` covers all ordered pairs ``(i, j)`` at Manhattan distance ``d``; ``d = 0`` holds
        the self-pairs only.
        """
        if self._profile is None:
            nbins = self.max_distance + 1
            u = self.unit
            sums = torch.zeros(self.batch, nbins, dtype=torch.float64, device=u.device)
            counts = torch.zeros(nbins, dtype=torch.int64, device=u.device)
            for _, dist, cos in self.gram_blocks():
                flat = dist.reshape(-1)
                block = torch.zeros(self.batch, nbins, dtype=cos.dtype, device=u.device)
                block.index_add_(1, flat, cos.reshape(self.batch, -1))
                sums += block.double()
                counts += torch.bincount(flat, minlength=nbins)
            self._profile = (sums, counts)
        return self._profile

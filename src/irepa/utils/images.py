"""Pictures: tile uint8 images into a grid, write a PNG atomically."""

from __future__ import annotations

from pathlib import Path

import torch

from irepa.utils.io import atomic_path


def make_grid(images: torch.Tensor, nrow: int, pad: int = 2) -> torch.Tensor:
    """Tile uint8 ``(N, H, W, 3)`` images into one ``(H', W', 3)`` image with ``nrow`` per row."""
    n, h, w, c = images.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = images[
            i
        ]
    return grid


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Atomically write a uint8 ``(H, W, 3)`` tensor as PNG."""
    from PIL import Image  # only when a picture is written

    with atomic_path(path) as tmp:
        Image.fromarray(image.numpy()).save(tmp, format="PNG")

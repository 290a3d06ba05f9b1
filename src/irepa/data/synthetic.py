"""Synthetic coloured shapes: a tiny, learnable, fully deterministic class-conditional dataset.

Class ``c`` is (shape ``c % 4``, colour ``c // 4``): shapes are square, disc, triangle and cross,
colours red, green, blue and yellow, so up to 16 classes. Each item draws the shape's centre,
size and a faint background gradient from ``numpy.random.default_rng([seed, index])``: the same
(seed, index) always gives the same picture, with class-dependent spatial structure that a small
model can learn in a few hundred steps.
"""

from __future__ import annotations

import numpy as np

from .base import ImageDataset

SHAPES = ("square", "disc", "triangle", "cross")
COLOURS = {
    "red": (0.9, 0.15, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
}
MAX_CLASSES = len(SHAPES) * len(COLOURS)
DEFAULT_CLASSES = 8


def shape_mask(shape: str, resolution: int, cx: float, cy: float, size: float) -> np.ndarray:
    """Boolean ``(R, R)`` mask of a shape centred at (cx, cy) pixels with half-extent ``size``."""
    ys, xs = np.mgrid[0:resolution, 0:resolution].astype(np.float32) + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "square":
        return (np.abs(dx) <= size) & (np.abs(dy) <= size)
    if shape == "disc":
        return dx * dx + dy * dy <= size * size
    if shape == "triangle":  # apex up, base at the bottom
        return (dy >= -size) & (dy <= size) & (np.abs(dx) <= (dy + size) / 2)
    if shape == "cross":
        bar = size / 3
        return ((np.abs(dx) <= bar) & (np.abs(dy) <= size)) | ((np.abs(dy) <= bar) & (np.abs(dx) <= size))
    raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


def render_item(seed: int, index: int, label: int, resolution: int) -> np.ndarray:
    """float32 ``(R, R, 3)`` picture in [0, 1] for one (seed, index, label)."""
    rng = np.random.default_rng([seed, index])
    shape = SHAPES[label % len(SHAPES)]
    colour = np.asarray(list(COLOURS.values())[label // len(SHAPES)], dtype=np.float32)
    size = resolution * rng.uniform(0.15, 0.3)
    cx, cy = rng.uniform(size, resolution - size, size=2)
    ramp = np.linspace(0.0, 1.0, resolution, dtype=np.float32)
    direction = rng.uniform(-1, 1, size=2).astype(np.float32)
    background = 0.15 + 0.1 * (direction[0] * ramp[None, :] + direction[1] * ramp[:, None])
    image = np.repeat(background[..., None], 3, axis=2)
    image[shape_mask(shape, resolution, cx, cy, size)] = colour
    image += rng.normal(0.0, 0.02, size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


class SyntheticShapes(ImageDataset):
    """``size`` items; item ``i`` has class ``i % num_classes`` (balanced) and a seeded picture."""

    def __init__(
        self,
        size: int = 1024,
        resolution: int = 32,
        num_classes: int | None = None,
        seed: int = 0,
        flip: bool = True,
        limit: int | None = None,
        image_mode: str = "float",
    ):
        super().__init__(resolution, flip, on_corrupt="fail", image_mode=image_mode)
        num_classes = DEFAULT_CLASSES if num_classes is None else num_classes
        if not 1 <= num_classes <= MAX_CLASSES:
            raise ValueError(
                f"synthetic data has 1..{MAX_CLASSES} classes (shape x colour), got {num_classes}"
            )
        self.num_classes = num_classes
        self.size = min(size, limit) if limit is not None else size
        self.seed = seed

    def __len__(self) -> int:
        return self.size

    def label(self, index: int) -> int:
        return index % self.num_classes

    def load_pixels(self, index: int) -> np.ndarray:
        return render_item(self.seed, index, self.label(index), self.resolution)

    def fingerprint(self) -> str:
        return (
            f"synthetic:v1:seed={self.seed}:size={self.size}:classes={self.num_classes}:res={self.resolution}"
        )

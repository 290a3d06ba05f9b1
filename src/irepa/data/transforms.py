"""Pixel transforms shared by the datasets: ADM centre crop, small-image fitting, flips, tensors."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def center_crop_arr(image: Image.Image, resolution: int) -> np.ndarray:
    """ADM (guided-diffusion) centre crop to a ``resolution`` square, as uint8 ``(R, R, 3)``.

    While the short side is at least twice the target, the image is halved with a BOX filter
    (cheap anti-aliasing); then one BICUBIC resize brings the short side to ``resolution``; the
    centre square is cut out. Matching this keeps our pixels comparable with published FIDs.
    """
    image = image.convert("RGB")
    while min(image.size) >= 2 * resolution:
        halved = (image.size[0] // 2, image.size[1] // 2)
        image = image.resize(halved, resample=Image.BOX)
    scale = resolution / min(image.size)
    target = (round(image.size[0] * scale), round(image.size[1] * scale))
    image = image.resize(target, resample=Image.BICUBIC)
    pixels = np.asarray(image)
    top = (pixels.shape[0] - resolution) // 2
    left = (pixels.shape[1] - resolution) // 2
    return np.array(pixels[top : top + resolution, left : left + resolution])  # owned, writable


def _check_square(gray: np.ndarray) -> None:
    h, w = gray.shape
    if h != w:
        raise ValueError(f"expected a square image, got {h}x{w}")


def pad_small_image(gray: np.ndarray, resolution: int) -> np.ndarray | None:
    """A small grayscale uint8 ``(h, h)`` image as uint8 ``(R, R, 3)`` when no resampling is needed, else None.

    ``R == h``: unchanged; ``R - h`` even and ``0 < R - h <= 4`` (28 -> 30 or 32): a zero border on
    every side, the classic way to feed 28-px digits to a /2-/4-friendly 32-px model. Grey is
    repeated to RGB.
    """
    _check_square(gray)
    pad = resolution - gray.shape[0]
    if not (pad == 0 or (0 < pad <= 4 and pad % 2 == 0)):
        return None
    padded = np.pad(np.asarray(gray, dtype=np.uint8), pad // 2)
    return np.repeat(padded[..., None], 3, axis=2)


def fit_small_image(gray: np.ndarray, resolution: int) -> np.ndarray:
    """Fit a small grayscale uint8 ``(h, w)`` image to ``(R, R, 3)`` float32 in ``[0, 1]``.

    Sizes :func:`pad_small_image` handles are zero-padded without resampling; any other size is
    resized bilinearly (antialiased when shrinking). Grey is repeated to RGB.
    """
    padded = pad_small_image(gray, resolution)
    if padded is not None:
        return torch.from_numpy(padded).float().div_(255.0).numpy()
    img = torch.from_numpy(np.ascontiguousarray(gray)).float().div_(255.0)
    out = F.interpolate(
        img[None, None],
        size=(resolution, resolution),
        mode="bilinear",
        align_corners=False,
        antialias=resolution < gray.shape[0],
    )[0, 0].clamp_(0.0, 1.0)
    return out[..., None].expand(-1, -1, 3).numpy()


def to_chw_tensor(pixels: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` array -> ``(3, H, W)`` tensor: uint8 stays uint8 (0..255), anything else float32."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
    return tensor.contiguous() if tensor.dtype == torch.uint8 else tensor.float().contiguous()


def to_chw_float(pixels: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 (0..255) or float (0..1) array -> float32 ``(3, H, W)`` in ``[0, 1]``."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    return tensor.float().contiguous()


def hflip_hwc(pixels: np.ndarray) -> np.ndarray:
    """Mirror an ``(H, W, C)`` array left-right."""
    return pixels[:, ::-1]

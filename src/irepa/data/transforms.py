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


def fit_small_image(gray: np.ndarray, resolution: int) -> np.ndarray:
    """Fit a small grayscale uint8 ``(h, w)`` image to ``(R, R, 3)`` float32 in ``[0, 1]``.

    ``R == h``: unchanged. ``R - h`` even and ``0 < R - h <= 4`` (28 -> 30 or 32): zero padding
    on every side, the classic way to feed 28-px digits to a /2-/4-friendly 32-px model without
    resampling. Otherwise: bilinear resize (antialiased when shrinking). Grey is repeated to RGB.
    """
    h, w = gray.shape
    if h != w:
        raise ValueError(f"expected a square image, got {h}x{w}")
    img = torch.from_numpy(np.ascontiguousarray(gray)).float().div_(255.0)
    pad = resolution - h
    if pad == 0:
        out = img
    elif 0 < pad <= 4 and pad % 2 == 0:
        out = F.pad(img, (pad // 2,) * 4)
    else:
        out = F.interpolate(
            img[None, None],
            size=(resolution, resolution),
            mode="bilinear",
            align_corners=False,
            antialias=resolution < h,
        )[0, 0].clamp_(0.0, 1.0)
    return out[..., None].expand(-1, -1, 3).numpy()


def to_chw_float(pixels: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 (0..255) or float (0..1) array -> float32 ``(3, H, W)`` in ``[0, 1]``."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    return tensor.float().contiguous()


def hflip_hwc(pixels: np.ndarray) -> np.ndarray:
    """Mirror an ``(H, W, C)`` array left-right."""
    return pixels[:, ::-1]

"""``load_encoder``: a registered name -> a frozen :class:`Encoder` at the requested grid."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from irepa.encoders import custom, handcrafted, hf_encoder, timm_encoder, transforms
from irepa.encoders.base import Encoder
from irepa.encoders.registry import get_spec, list_encoders
from irepa.encoders.spec import EncoderSpec

log = logging.getLogger(__name__)

_BUILDERS = {
    "timm": timm_encoder.create,
    "mocov3": timm_encoder.create,
    "transformers": hf_encoder.create,
    "hog": handcrafted.create,
    "sift": handcrafted.create,
    "custom": custom.create,
}


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) <= 0:
        raise ValueError(f"{what} must be a positive int or an (h, w) pair, got {value}")
    return value


def plan_input(spec: EncoderSpec, resolution: int | Sequence[int] | None = None,
               grid: int | Sequence[int] | None = None) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """Input resolution and (if it differs from the network's own grid) the output grid.

    * neither given: the native resolution;
    * ``grid`` only: ``grid * patch_size``, so the network yields exactly that grid;
    * ``resolution`` (divisible by the patch size): its own grid, or ``grid`` by bilinear resampling
      of the tokens when both are given and disagree (logged as a warning).
    """
    stride = spec.patch_size
    if resolution is None and grid is None:
        return tuple(spec.native_resolution), None
    if resolution is None:
        g = _pair(grid, "grid")
        return (g[0] * stride, g[1] * stride), None
    res = _pair(resolution, "resolution")
    if res[0] % stride or res[1] % stride:
        ok = tuple(max(stride, round(r / stride) * stride) for r in res)
        raise ValueError(f"{spec.name}: resolution {res} is not divisible by its patch size {stride}; "
                         f"use e.g. {ok}, or pass grid=(h, w) instead")
    natural = (res[0] // stride, res[1] // stride)
    if grid is None or _pair(grid, "grid") == natural:
        return res, None
    g = _pair(grid, "grid")
    log.warning("%s: resolution %s gives a %dx%d token grid; resampling tokens bilinearly to the requested %dx%d",
                spec.name, res, natural[0], natural[1], g[0], g[1])
    return res, g


def load_encoder(name: str, weights: str | None = None, resolution: int | Sequence[int] | None = None,
                 grid: int | Sequence[int] | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, resize: str = "reference",
                 pos_embed: str = "reference") -> Encoder:
    """The registered encoder ``name``, frozen, on ``device``, computing in ``dtype``.

    Args:
        name: a name from :func:`list_encoders` (``irepa encoders list``), optionally followed by token
            transforms, e.g. ``dinov2-vit-s+shuffle`` (see :mod:`irepa.encoders.transforms`).
        weights: ``None`` = the local cache or the hub (offline with nothing local: an immediate error
            naming the file to fetch); ``"random"`` = untrained; otherwise a ``.safetensors`` /
            ``.pt`` / ``.pth`` file (hub layout or plain state dict, loaded strictly).
        resolution: network input size ``(H, W)`` or ``S``; defaults to the native one.
        grid: wanted token grid ``(h, w)``; picks the resolution that yields it.
        device: ``"meta"`` builds shapes only (no memory, no weights; needs ``weights="random"``).
        dtype: compute precision of ``encode``. ``torch.bfloat16`` / ``torch.float16`` keep float32
            weights and run the network under autocast (weight-free HOG / SIFT stay float32);
            ``torch.float32`` / ``torch.float64`` set the weights' dtype.
        resize: how images reach the input size: ``"reference"`` as the paper's code (``F.interpolate``
            without antialias, except DINOv3's antialiased ``Resize``), ``"antialias"`` low-pass filtered
            when shrinking, as PIL / torchvision resizes.
        pos_embed: how absolute position embeddings are resampled when the grid differs from the
            checkpoint's: ``"reference"`` as the paper's code (timm's bicubic with antialias; bilinear
            for the Perception Encoders), ``"upstream"`` as the encoder's own release (DINOv2:
            bicubic without antialias; MoCo v3: sin-cos regenerated for the grid).
    """
    if transforms.is_transformed(name) and name not in list_encoders():
        return transforms.load_transformed(name, load_encoder, weights=weights, resolution=resolution, grid=grid,
                                           device=device, dtype=dtype, resize=resize, pos_embed=pos_embed)
    spec = get_spec(name)
    res, out_grid = plan_input(spec, resolution, grid)
    antialias = spec.resize_antialias_for(resize)
    pos_rule = spec.position_rule(pos_embed)
    meta = torch.device(device).type == "meta"
    if meta and weights != "random":
        raise ValueError("device='meta' builds shapes only; pass weights='random' with it")
    if isinstance(weights, str) and weights != "random" and not weights.strip():
        raise ValueError("weights is an empty string; pass None, 'random' or a file path")
    encoder = _BUILDERS[spec.source](spec, res, out_grid, None if weights is None else str(weights), meta, pos_rule)
    encoder.antialias = antialias
    if not meta:
        encoder = encoder.to(device=device).use_precision(dtype)
    return encoder.freeze()

"""``build_dataset``: a ``DataConfig`` in, the matching dataset out."""

from __future__ import annotations

from .base import ImageDataset
from .config import DataConfig
from .latents import LatentDataset
from .sources import build_image_dataset


def build_dataset(cfg: DataConfig, image_mode: str = "float") -> ImageDataset:
    """The dataset ``cfg.source`` names; items follow the training contract (``image``, ``label``,
    ``moments`` for latents). Every dataset has ``num_classes``; latent datasets also have
    ``latent_stats`` and ``latent_shape``. ``image_mode`` (``float``, ``uint8``, ``none``): what
    items carry as ``image`` (see :class:`~irepa.data.base.ImageDataset`)."""
    cfg.validate()
    if cfg.source != "latents":
        return build_image_dataset(cfg, image_mode)
    return LatentDataset(
        cfg.path,
        cfg.image_root,
        cfg.resolution,
        cfg.flip,
        cfg.on_corrupt,
        cfg.limit,
        cfg.vae,
        cfg.num_classes,
        image_mode,
    )

"""``build_dataset``: a ``DataConfig`` in, the matching dataset out."""

from __future__ import annotations

from .base import ImageDataset
from .config import DataConfig


def build_dataset(cfg: DataConfig, image_mode: str = "float") -> ImageDataset:
    """The dataset ``cfg.source`` names; items follow the training contract (``image``, ``label``,
    ``moments`` for latents). Every dataset has ``num_classes``; latent datasets also have
    ``latent_stats`` and ``latent_shape``. ``image_mode`` (``float``, ``uint8``, ``none``): what
    items carry as ``image`` (see :class:`~irepa.data.base.ImageDataset`)."""
    cfg.validate()
    if cfg.source == "synthetic":
        from .synthetic import SyntheticShapes

        return SyntheticShapes(
            cfg.synthetic_size, cfg.resolution, cfg.num_classes, cfg.seed, cfg.flip, cfg.limit, image_mode
        )
    if cfg.source == "folder":
        from .folder import ImageFolderDataset

        return ImageFolderDataset(
            cfg.path,
            cfg.resolution,
            cfg.split,
            cfg.flip,
            cfg.on_corrupt,
            cfg.num_classes,
            cfg.limit,
            verify=cfg.verify,
            num_workers=max(1, cfg.num_workers),
            image_mode=image_mode,
        )
    if cfg.source == "fashion-mnist":
        from .fashion_mnist import FashionMNISTDataset

        return FashionMNISTDataset(
            cfg.path, cfg.split, cfg.resolution, cfg.flip, cfg.on_corrupt, cfg.num_classes, cfg.limit, image_mode
        )
    if cfg.source == "hf":
        from .hf import HFImageDataset

        return HFImageDataset(
            cfg.path,
            cfg.split,
            cfg.resolution,
            cfg.flip,
            cfg.on_corrupt,
            cfg.num_classes,
            cfg.limit,
            cfg.hf_image_key,
            cfg.hf_label_key,
            image_mode,
        )
    from .latents import LatentDataset

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

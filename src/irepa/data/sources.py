"""The image sources: a ``DataConfig`` of an image source in, its dataset out (latent caches: :mod:`.build`)."""

from __future__ import annotations

from typing import Any

from .base import ImageDataset
from .config import DataConfig


def build_image_dataset(cfg: DataConfig, image_mode: str = "float") -> ImageDataset:
    """The image dataset ``cfg.source`` names (any source but ``latents``); see :func:`.build.build_dataset`."""
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
    raise ValueError(f"data source {cfg.source!r} is not an image source")


def build_source_dataset(record: dict[str, Any], on_corrupt: str = "skip") -> ImageDataset:
    """Rebuild the un-flipped image dataset a cache was (or will be) made from."""
    cfg = DataConfig(**record, flip=False, verify=False, on_corrupt=on_corrupt, num_workers=0)
    if cfg.source == "latents":
        raise ValueError("a latent cache is made from images: source must not be 'latents'")
    return build_image_dataset(cfg)

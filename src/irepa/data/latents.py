"""The ``latents`` source: cached VAE moments read together with the images they came from."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from irepa.codecs.vae import vae_id

from .base import ImageDataset
from .latent_cache import CacheMismatchError, LatentCache
from .sources import build_source_dataset


class LatentDataset(ImageDataset):
    """Items ``{"image", "label", "moments", ...}``; a flipped key gives the mirrored image and the
    cached moments of the mirrored image (so encoder targets and latents see the same flip).
    With ``image_mode="none"`` no image is read: runs without an encoder need only moments and label.

    The cache must match the images: same item count and fingerprint (file list), and, when
    given, the same ``resolution`` and ``vae``; otherwise ``CacheMismatchError`` says what differs.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        image_root: str | None = None,
        resolution: int | None = None,
        flip: bool = True,
        on_corrupt: str = "skip",
        limit: int | None = None,
        vae: str | None = None,
        num_classes: int | None = None,
        image_mode: str = "float",
    ):
        self.cache = LatentCache(cache_dir)
        index = self.cache.index
        where = f"latent cache {cache_dir}"
        if resolution is not None and int(resolution) != int(index["resolution"]):
            raise CacheMismatchError(
                f"{where} was encoded at resolution {index['resolution']}, not {resolution}; "
                "set data.resolution to match or rerun prepare-latents"
            )
        if vae is not None and vae_id(vae) != index["vae"]:
            raise CacheMismatchError(f"{where} was encoded with VAE {index['vae']!r}, not {vae_id(vae)!r}")
        super().__init__(index["resolution"], flip, on_corrupt, image_mode)
        record: dict[str, Any] = dict(index["source"])
        if image_root is not None:
            record["path"] = image_root
        try:
            self.base = build_source_dataset(record, on_corrupt)
        except (FileNotFoundError, ValueError) as err:
            raise CacheMismatchError(f"{where}: cannot open its images ({err}); set data.image_root") from err
        if len(self.base) != index["count"]:
            raise CacheMismatchError(
                f"{where} holds {index['count']} items but the images at {record['path']} number "
                f"{len(self.base)}; rerun prepare-latents for this data"
            )
        if self.base.fingerprint() != index["dataset_fingerprint"]:
            raise CacheMismatchError(
                f"{where} does not match the images at {record['path']}: same count but different files, "
                "order or labels; rerun prepare-latents for this data"
            )
        if num_classes is not None and num_classes != self.base.num_classes:
            raise CacheMismatchError(
                f"{where}: data has {self.base.num_classes} classes, not num_classes={num_classes}"
            )
        self.num_classes = self.base.num_classes
        valid = np.setdiff1d(
            np.arange(index["count"], dtype=np.int64), np.asarray(self.cache.skipped, dtype=np.int64)
        )
        self.items = valid[:limit] if limit is not None else valid

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        return self.base.load(int(self.items[index]))

    def label(self, index: int) -> int:
        return self.base.label(int(self.items[index]))

    def extra(self, index: int, flip: bool) -> dict[str, torch.Tensor]:
        return {"moments": torch.from_numpy(self.cache.moments(int(self.items[index]), flip))}

    def describe(self, index: int) -> str:
        return self.base.describe(int(self.items[index]))

    def fingerprint(self) -> str:
        return f"latents:{self.cache.index['dataset_fingerprint']}:n={len(self)}"

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, r, r)`` of one latent (the moments have ``2C`` channels)."""
        return self.cache.latent_shape

    @property
    def latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of the posterior means, to scale latents as ``(z - mean) / std``."""
        mean, std = self.cache.stats
        return torch.from_numpy(mean), torch.from_numpy(std)

    @property
    def vae(self) -> str:
        return self.cache.index["vae"]

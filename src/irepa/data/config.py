"""``DataConfig``: the plain, YAML-friendly description of a training data source."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from irepa.codecs.latent import LATENT_NORMS
from irepa.errors import ConfigError

SOURCES = ("synthetic", "folder", "fashion-mnist", "hf", "latents")
CORRUPT_POLICIES = ("skip", "fail")


@dataclass
class DataConfig:
    """Where training images come from and how they are prepared.

    ``source`` picks the dataset: ``synthetic`` (coloured shapes, for tests and smoke runs),
    ``folder`` (``root/<class>/<file>`` or ``root/<split>/<class>/<file>``), ``fashion-mnist``,
    ``hf`` (a Hugging Face ``datasets`` name or a ``save_to_disk`` folder) or ``latents`` (a
    cache written by ``irepa prepare-latents``, read together with its images).
    """

    source: str = "synthetic"
    path: str | None = None  # folder root / HF dataset name or folder / latent cache dir
    image_root: str | None = None  # pixels for a latent cache, when not where the cache says
    resolution: int = 256
    flip: bool = True
    num_workers: int = 4
    pin_memory: bool = True
    on_corrupt: str = "skip"  # skip | fail
    num_classes: int | None = None
    limit: int | None = None  # use only the first N items
    split: str = "train"  # folder sub-directory / Fashion-MNIST split / HF split
    seed: int = 0  # synthetic images are a function of (seed, index)
    synthetic_size: int = 1024
    vae: str | None = None  # expected VAE of a latent cache; None accepts the cache's
    # latents to the model: per-channel (z - mean_c) / std_c from the cache's statistics (iREPA), or
    # constant z * 0.18215, no shift (REPA, MeanFlow)
    latent_norm: str = "per-channel"
    verify: bool = False  # decode every folder image up front and report unreadable ones
    hf_image_key: str | None = None  # None: first of image / img / pixel_values
    hf_label_key: str | None = None  # None: first of label / labels / class / target

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and the accepted values."""
        if self.source not in SOURCES:
            raise ConfigError(f"unknown data source {self.source!r}; valid sources: {', '.join(SOURCES)}")
        if self.on_corrupt not in CORRUPT_POLICIES:
            raise ConfigError(
                f"unknown on_corrupt policy {self.on_corrupt!r}; valid: {', '.join(CORRUPT_POLICIES)}"
            )
        if self.source in ("folder", "hf", "latents") and not self.path:
            raise ConfigError(f"data source {self.source!r} needs `path` (see docs/data.md)")
        if int(self.resolution) < 8:
            raise ConfigError(f"resolution must be >= 8 pixels, got {self.resolution}")
        if self.limit is not None and int(self.limit) < 1:
            raise ConfigError(f"limit must be a positive number of items or null, got {self.limit}")
        if self.num_classes is not None and int(self.num_classes) < 1:
            raise ConfigError(f"num_classes must be positive or null, got {self.num_classes}")
        if self.latent_norm not in LATENT_NORMS:
            raise ConfigError(f"unknown latent_norm {self.latent_norm!r}; valid: {', '.join(LATENT_NORMS)}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.synthetic_size < 1:
            raise ConfigError(f"synthetic_size must be >= 1, got {self.synthetic_size}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys are an error listing valid ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"unknown data config key(s) {unknown}; valid keys: {', '.join(names)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (round-trips through ``from_dict``)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> DataConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

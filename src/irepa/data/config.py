"""``DataConfig``: the plain, YAML-friendly description of a training data source."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from irepa.codecs.latent import LATENT_NORMS
from irepa.errors import ConfigError
from irepa.utils.settings import section_from_dict

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
        """Raise ``ConfigError`` naming the bad ``data.`` field and the accepted values."""
        if self.source not in SOURCES:
            raise ConfigError(f"unknown data.source {self.source!r}; valid sources: {', '.join(SOURCES)}")
        if self.on_corrupt not in CORRUPT_POLICIES:
            raise ConfigError(
                f"unknown data.on_corrupt policy {self.on_corrupt!r}; valid: {', '.join(CORRUPT_POLICIES)}"
            )
        if self.source in ("folder", "hf", "latents") and not self.path:
            raise ConfigError(f"data source {self.source!r} needs `path` (data.path)", fix="see docs/data.md")
        at_least = {"resolution": 8, "limit": 1, "num_classes": 1, "num_workers": 0, "synthetic_size": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and int(value) < low:
                raise ConfigError(f"data.{name} must be >= {low}, got {value}",
                                  fix=f"set --data.{name} {low} or more" + (" (or null)" if name in (
                                      "limit", "num_classes") else ""))
        if self.latent_norm not in LATENT_NORMS:
            raise ConfigError(f"unknown data.latent_norm {self.latent_norm!r}; valid: {', '.join(LATENT_NORMS)}",
                              fix="set --data.latent_norm per-channel or constant")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataConfig:
        """Build from a mapping (e.g. a YAML section), strictly; unknown keys are an error listing valid ones."""
        return section_from_dict(cls, values, "data")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (round-trips through ``from_dict``)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> DataConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

"""Training data: image sources, ADM centre crop, latent caches and a resumable deterministic loader."""

from irepa.codecs.latent import denormalize_latents, normalize_latents, sample_posterior

from .base import IMAGE_MODES, CorruptImageError, ImageDataset, SampleKey
from .build import build_dataset
from .config import SOURCES, DataConfig
from .latent_cache import CacheMismatchError
from .latents import LatentDataset
from .loader import StepLoader, make_loader
from .prepare import prepare_latents
from .transforms import center_crop_arr

__all__ = [
    "DataConfig",
    "SOURCES",
    "build_dataset",
    "make_loader",
    "StepLoader",
    "SampleKey",
    "ImageDataset",
    "CorruptImageError",
    "CacheMismatchError",
    "LatentDataset",
    "sample_posterior",
    "normalize_latents",
    "denormalize_latents",
    "prepare_latents",
    "center_crop_arr",
    "IMAGE_MODES",
]

"""Pixels <-> model space: identity pixels, a frozen VAE on cached latents, (later) a trainable VAE."""

from __future__ import annotations

from typing import Any

import torch

from irepa.errors import CheckpointError

from .base import Codec, PixelCodec, to_uint8, unit_images
from .latent import CachedLatentCodec, denormalize_latents, encode_moments, normalize_latents, sample_posterior


def codec_for_dataset(dataset, in_channels: int) -> Codec:
    """The codec a dataset implies: cached latents (the dataset names its VAE and statistics) or pixels."""
    stats = getattr(dataset, "latent_stats", None)
    if stats is not None:
        return CachedLatentCodec(dataset.vae, *stats)
    return PixelCodec(in_channels)


def codec_from_state(state: dict[str, Any], vae: str | None = None) -> Codec:
    """Rebuild a codec from :meth:`Codec.checkpoint_state` (``vae`` overrides the stored VAE)."""
    kind = state.get("kind")
    if kind == "pixels":
        return PixelCodec(int(state["channels"]))
    if kind == "latent":
        return CachedLatentCodec(vae or state["vae"], state["mean"], state["std"], int(state.get("factor", 8)))
    raise CheckpointError(f"unknown codec kind {kind!r} in the checkpoint; is irepa older than the run?")


def codec_from_checkpoint(ckpt: dict[str, Any], vae: str | None = None) -> Codec:
    """The codec a checkpoint was trained with (checkpoints of earlier releases included)."""
    if ckpt.get("codec") is not None:
        return codec_from_state(ckpt["codec"], vae)
    if ckpt.get("latent_stats") is not None:  # written before codecs existed
        name = vae or ckpt.get("vae") or ckpt["config"].get("data", {}).get("vae")
        if not name:
            raise CheckpointError("this checkpoint was trained on latents but names no VAE; pass --vae PATH_OR_ID")
        mean, std = ckpt["latent_stats"]
        return CachedLatentCodec(name, torch.as_tensor(mean), torch.as_tensor(std))
    return PixelCodec(int(ckpt["config"]["model"]["in_channels"]))


__all__ = [
    "Codec",
    "PixelCodec",
    "CachedLatentCodec",
    "codec_for_dataset",
    "codec_from_state",
    "codec_from_checkpoint",
    "to_uint8",
    "unit_images",
    "sample_posterior",
    "normalize_latents",
    "denormalize_latents",
    "encode_moments",
]

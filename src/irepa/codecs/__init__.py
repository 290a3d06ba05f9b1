"""Pixels <-> model space: identity pixels, a frozen VAE on cached latents, a VAE trained end to end."""

from __future__ import annotations

from typing import Any

import torch

from irepa.errors import CheckpointError, ConfigError

from .base import Codec, PixelCodec, to_uint8, unit_images
from .latent import (
    SD_VAE_SCALE,
    CachedLatentCodec,
    denormalize_latents,
    encode_moments,
    normalize_latents,
    sample_posterior,
)
from .trainable import TrainableVAECodec


def codec_for_dataset(dataset, in_channels: int, latent_norm: str = "per-channel") -> Codec:
    """The codec a dataset implies: cached latents (the dataset names its VAE and statistics) or pixels.

    ``latent_norm`` (``per-channel`` or ``constant``) is how latents reach the model; pixels ignore it.
    """
    stats = getattr(dataset, "latent_stats", None)
    if stats is not None:
        return CachedLatentCodec(dataset.vae, *stats, norm=latent_norm)
    return PixelCodec(in_channels)


def codec_for_run(cfg, dataset) -> Codec:
    """The codec a run config implies: the trainable VAE of an end-to-end run, else the dataset's codec.

    The trainable VAE starts from ``cfg.end_to_end.vae`` with the latent statistics its folder
    carries, if any (the end-to-end step estimates them from the data otherwise).
    """
    e2e = cfg.end_to_end
    if not e2e.enabled:
        return codec_for_dataset(dataset, cfg.model.in_channels, cfg.data.latent_norm)
    from .trainable import load_trainable_vae

    vae, stats = load_trainable_vae(e2e.vae)
    mean, std = stats if stats is not None else (None, None)
    return TrainableVAECodec(vae, e2e.vae, mean, std, momentum=e2e.bn_momentum, eps=e2e.bn_eps)


def codec_from_state(state: dict[str, Any], vae: str | None = None, ema: bool = True) -> Codec:
    """Rebuild a codec from :meth:`Codec.checkpoint_state` (``vae`` overrides the stored VAE).

    ``ema``: a trained VAE decodes with the EMA of its latent statistics (False: the live ones),
    matching the EMA (or raw) model weights being sampled.
    """
    kind = state.get("kind")
    if kind == "pixels":
        return PixelCodec(int(state["channels"]))
    if kind == "latent":
        # checkpoints written before the constant scale existed hold per-channel statistics
        return CachedLatentCodec(vae or state["vae"], state["mean"], state["std"], int(state.get("factor", 8)),
                                 norm=state.get("norm", "per-channel"), scale=state.get("scale", SD_VAE_SCALE))
    if kind == TrainableVAECodec.kind:
        if vae is not None:
            raise ConfigError("this run trained its own VAE, which is in the checkpoint; drop --vae (or sample "
                              "a run trained on latents of that VAE)")
        codec = TrainableVAECodec.from_checkpoint_state(state)
        codec.decode_with_ema = ema
        return codec
    raise CheckpointError(f"unknown codec kind {kind!r} in the checkpoint; is irepa older than the run?")


def codec_from_checkpoint(ckpt: dict[str, Any], vae: str | None = None, ema: bool = True) -> Codec:
    """The codec a checkpoint was trained with (checkpoints of earlier releases included)."""
    if ckpt.get("codec") is not None:
        return codec_from_state(ckpt["codec"], vae, ema)
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
    "TrainableVAECodec",
    "codec_for_dataset",
    "codec_for_run",
    "codec_from_state",
    "codec_from_checkpoint",
    "to_uint8",
    "unit_images",
    "sample_posterior",
    "normalize_latents",
    "denormalize_latents",
    "encode_moments",
]

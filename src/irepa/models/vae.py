"""The latent autoencoder (SD-VAE via diffusers), loaded from a local folder or a hub id."""

from __future__ import annotations

import os
from pathlib import Path

import torch

KNOWN_VAES = ("stabilityai/sd-vae-ft-mse", "stabilityai/sd-vae-ft-ema")


def load_vae(name_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """``AutoencoderKL`` from a local diffusers folder or a hub id; fails fast and clearly offline."""
    from diffusers import AutoencoderKL

    local = Path(name_or_path).expanduser()
    if local.exists():
        return AutoencoderKL.from_pretrained(str(local), torch_dtype=dtype).to(device).eval()
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        vae = AutoencoderKL.from_pretrained(name_or_path, torch_dtype=dtype, local_files_only=offline)
    except Exception as err:  # diffusers raises several types for "not found"
        raise FileNotFoundError(
            f"cannot load VAE {name_or_path!r} ({type(err).__name__}). Download it first, e.g. "
            f"`huggingface-cli download {name_or_path} --local-dir PATH`, and pass PATH; known ids: "
            f"{', '.join(KNOWN_VAES)}"
        ) from err
    return vae.to(device).eval()

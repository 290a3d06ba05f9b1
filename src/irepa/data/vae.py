"""Loading a diffusers ``AutoencoderKL`` from a local folder or the hub, failing fast offline."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

log = logging.getLogger(__name__)

KNOWN_VAES = ("stabilityai/sd-vae-ft-mse", "stabilityai/sd-vae-ft-ema")
_TRUE = ("1", "true", "yes", "on")


def vae_id(name_or_path: str) -> str:
    """Stable name recorded in caches: the absolute path of a local folder, else the hub id."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def hub_offline() -> bool:
    return (
        os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE
        or os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in _TRUE
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Quick TCP probe of the hub endpoint, so an offline machine fails in seconds, not minutes."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def vae_downsample(vae: torch.nn.Module) -> int:
    """Spatial reduction of an ``AutoencoderKL`` (8 for SD-VAE): one halving per extra block."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def load_vae(name_or_path: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A frozen ``AutoencoderKL`` in eval mode.

    ``name_or_path``: a local diffusers folder (``config.json`` + weights, or a pipeline folder
    with ``vae/``), or a hub id such as ``stabilityai/sd-vae-ft-mse`` (taken from the local hub
    cache when present, else downloaded). Offline with nothing local raises at once.
    """
    from diffusers import AutoencoderKL

    path = Path(name_or_path).expanduser()
    if path.exists():
        if (path / "config.json").is_file():
            vae = AutoencoderKL.from_pretrained(str(path))
        elif (path / "vae" / "config.json").is_file():
            vae = AutoencoderKL.from_pretrained(str(path), subfolder="vae")
        else:
            raise FileNotFoundError(
                f"{path} is not a diffusers AutoencoderKL folder (no config.json or vae/config.json)"
            )
    else:
        try:
            vae = AutoencoderKL.from_pretrained(name_or_path, local_files_only=True)
        except (OSError, ValueError) as err:
            local_error = err
            why = None
            if hub_offline():
                why = "HF_HUB_OFFLINE is set"
            elif not hub_reachable():
                why = "the hub is unreachable"
            if why:
                raise FileNotFoundError(
                    f"VAE {name_or_path!r} is not a local folder nor in the local hub cache, and {why}. "
                    "Fix: download it on a connected machine "
                    f"(e.g. `huggingface-cli download {name_or_path}`) "
                    f"and copy the hub cache, or pass a local diffusers folder to --vae. Known ids: "
                    f"{', '.join(KNOWN_VAES)}"
                ) from local_error
            log.info("downloading VAE %s from the hub", name_or_path)
            vae = AutoencoderKL.from_pretrained(name_or_path)
    vae.eval().requires_grad_(False)
    return vae.to(device)

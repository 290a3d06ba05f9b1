"""Loading a diffusers ``AutoencoderKL`` from a local folder or the hub, failing fast offline."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from irepa.errors import WeightsError
from irepa.utils.io import hub_reachable, is_offline, offline_reason

log = logging.getLogger(__name__)

KNOWN_VAES = ("stabilityai/sd-vae-ft-mse", "stabilityai/sd-vae-ft-ema")


def vae_id(name_or_path: str) -> str:
    """Stable name recorded in caches: the absolute path of a local folder, else the hub id."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


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
            raise WeightsError(
                f"--vae {path} is not a diffusers AutoencoderKL folder (no config.json or vae/config.json)",
                fix="give a folder saved by AutoencoderKL.save_pretrained, or a hub id such as "
                f"{KNOWN_VAES[0]}",
            )
    else:
        try:
            vae = AutoencoderKL.from_pretrained(name_or_path, local_files_only=True)
        except (OSError, ValueError) as err:
            local_error = err
            why = None
            if is_offline():
                why = offline_reason()
            elif not hub_reachable(timeout=3.0):
                why = "the hub is unreachable"
            if why:
                raise WeightsError(
                    f"VAE {name_or_path!r} is not a local folder nor in the local hub cache, and {why}",
                    fix="download it on a connected machine "
                    f"(e.g. `huggingface-cli download {name_or_path}`) "
                    f"and copy the hub cache, or pass a local diffusers folder to --vae. Known ids: "
                    f"{', '.join(KNOWN_VAES)}",
                ) from local_error
            log.info("downloading VAE %s from the hub", name_or_path)
            vae = AutoencoderKL.from_pretrained(name_or_path)
    vae.eval().requires_grad_(False)
    return vae.to(device)

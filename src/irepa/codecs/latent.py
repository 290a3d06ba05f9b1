"""A frozen VAE: latents sampled from cached posterior moments, normalised; decoded by the VAE.

``irepa prepare-latents`` stores each image's posterior ``(mean, logvar)`` once (:func:`encode_moments`);
training draws ``z = mean + exp(logvar / 2) * eps`` every step and feeds the model either
``(z - mu_c) / sigma_c`` with the per-channel statistics of the cache (``per-channel``, iREPA's latent
code) or ``z * 0.18215`` with no shift (``constant``, the SD-VAE scale REPA and MeanFlow use). Sampling
undoes the normalisation and decodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from irepa.errors import ConfigError

from .base import Codec, unit_images
from .vae import load_vae, vae_downsample

LATENT_NORMS = ("per-channel", "constant")
SD_VAE_SCALE = 0.18215  # Stable Diffusion's latent scaling factor: REPA's and MeanFlow's z * 0.18215


def sample_posterior(moments: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``z = mean + exp(logvar / 2) * eps`` from ``(B, 2C, r, r)`` moments."""
    mean, logvar = moments.chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise


def normalize_latents(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(z - mean) / std`` per channel (dim 1)."""
    shape = (1, -1) + (1,) * (z.ndim - 2)
    return (z - mean.to(z).view(shape)) / std.to(z).view(shape)


def denormalize_latents(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_latents`: ``z * std + mean``."""
    shape = (1, -1) + (1,) * (z.ndim - 2)
    return z * std.to(z).view(shape) + mean.to(z).view(shape)


@torch.no_grad()
def encode_moments(vae: torch.nn.Module, images01: torch.Tensor) -> torch.Tensor:
    """Posterior ``(mean, logvar)`` of ``[0, 1]`` images under ``vae``, concatenated on channels: ``(B, 2C, r, r)``."""
    param = next(vae.parameters())
    x = unit_images(images01, param.device).to(param.dtype) * 2.0 - 1.0
    posterior = vae.encode(x).latent_dist
    return torch.cat([posterior.mean, posterior.logvar], dim=1).float()


class CachedLatentCodec(Codec):
    """Latents of a frozen ``AutoencoderKL`` (named by hub id or folder), read from cached moments.

    ``norm="per-channel"`` maps ``z -> (z - mean) / std``; ``norm="constant"`` maps ``z -> z * scale``
    (``mean`` and ``std`` are then zero and ``1 / scale``, which is how a checkpoint also describes it to
    irepa versions that knew only the per-channel form).
    """

    kind = "latent"

    def __init__(self, vae: str, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor,
                 factor: int = 8, decode_batch: int = 16, norm: str = "per-channel", scale: float = SD_VAE_SCALE):
        super().__init__()
        if norm not in LATENT_NORMS:
            raise ConfigError(f"unknown latent normalisation {norm!r}; valid: {', '.join(LATENT_NORMS)}")
        self.vae_name = vae
        self.norm, self.scale = norm, float(scale)
        channels = torch.as_tensor(mean).numel()
        if norm == "constant":
            mean, std = torch.zeros(channels), torch.full((channels,), 1.0 / self.scale)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).flatten(), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).flatten(), persistent=False)
        self.channels = int(self.mean.numel())
        self.factor = int(factor)
        self.decode_batch = decode_batch
        self._vae: torch.nn.Module | None = None

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> the model's space."""
        return z * self.scale if self.norm == "constant" else normalize_latents(z, self.mean, self.std)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The model's space -> VAE latents."""
        return x / self.scale if self.norm == "constant" else denormalize_latents(x, self.mean, self.std)

    def encode(self, batch, generator=None, device=None):
        """Cached moments of a loader batch, or (when a batch has images only) the VAE's encoding of them."""
        if "moments" in batch:
            moments = batch["moments"]
        else:
            self.prepare_decoder(device or "cpu")  # the same frozen VAE encodes
            moments = encode_moments(self._vae, batch["image"])
        if generator is not None and generator.device.type != "cpu" and device is not None:
            moments = moments.to(device, non_blocking=True)  # sample where the generator lives
        z = self.normalize(sample_posterior(moments.float(), generator))
        return z.to(device, non_blocking=True) if device is not None else z

    def prepare_decoder(self, device="cpu"):
        if self._vae is None:
            self._vae = load_vae(self.vae_name, device=device)
            self.factor = vae_downsample(self._vae)
        return self

    @torch.no_grad()
    def decode(self, x):
        self.prepare_decoder(x.device)
        param = next(self._vae.parameters())
        z = self.denormalize(x.float())
        out = [self._vae.decode(c.to(param.device, param.dtype)).sample.float() for c in z.split(self.decode_batch)]
        return torch.cat(out)

    def checkpoint_state(self):
        state = {"kind": self.kind, "vae": self.vae_name, "mean": self.mean.tolist(), "std": self.std.tolist(),
                 "factor": self.factor, "norm": self.norm}
        if self.norm == "constant":
            state["scale"] = self.scale
        return state

    def describe(self) -> str:
        how = f"z * {self.scale:g}" if self.norm == "constant" else "per-channel mean / std"
        return f"frozen VAE {self.vae_name} (cached posterior moments, {self.channels} channels, f{self.factor}, {how})"


class ChannelMoments:
    """Streaming per-channel mean and variance (float64, Chan et al. pairwise merge)."""

    def __init__(self, channels: int):
        self.count = 0
        self.mean = np.zeros(channels, dtype=np.float64)
        self.m2 = np.zeros(channels, dtype=np.float64)

    def update(self, x: np.ndarray) -> None:
        """Add ``(N, C, ...)`` values."""
        values = np.moveaxis(np.asarray(x, dtype=np.float64), 1, 0).reshape(x.shape[1], -1)
        n = values.shape[1]
        if n == 0:
            return
        mean = values.mean(axis=1)
        m2 = ((values - mean[:, None]) ** 2).sum(axis=1)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))

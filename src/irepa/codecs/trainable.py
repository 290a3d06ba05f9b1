"""A live VAE trained together with the generative model (REPA-E), and its latent batch-norm.

The codec owns the ``AutoencoderKL`` (diffusers) and the normalisation of its latents: a
``BatchNorm2d`` without affine parameters, initialised from the VAE's per-channel latent
statistics, that normalises every training batch with its own statistics and keeps running ones
(REPA-E's batch-norm at the SiT input). An exponential moving average of those running statistics
(``latent_norm_ema``, kept with the same decay as the model's EMA) is what sampling decodes with and
what :meth:`TrainableVAECodec.save_pretrained` exports.

Images are ``[0, 1]`` in batches and ``[-1, 1]`` at the VAE, as everywhere in the library.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from irepa.errors import CheckpointError, ConfigError, DataError

from .base import Codec, unit_images
from .latent import ChannelMoments, sample_posterior
from .vae import load_vae

RANDOM_VAE = "random"  # a small untrained AutoencoderKL (f2, 4 channels): tests and smoke runs
STATS_FILE = "latent_stats.json"
# The small untrained VAE: two resolution levels (f2), four latent channels, a few thousand weights per block.
RANDOM_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
}


@dataclass
class Autoencoded:
    """One pass of images through the VAE: the posterior, a sample of it and its reconstruction."""

    mean: torch.Tensor  # (B, C, r, r) posterior mean
    logvar: torch.Tensor  # (B, C, r, r) posterior log-variance (clamped to [-30, 20] as diffusers does)
    z: torch.Tensor  # (B, C, r, r) posterior sample, raw (not normalised)
    recon: torch.Tensor  # (B, 3, R, R) reconstruction of z in [-1, 1] (not clamped)

    def kl(self) -> torch.Tensor:
        """KL(posterior || N(0, I)) summed over (C, r, r) and averaged over the batch (float32)."""
        mean, logvar = self.mean.float(), self.logvar.float()
        per_image = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)
        return per_image.mean()


def _vae_class():
    from diffusers import AutoencoderKL

    return AutoencoderKL


def random_vae(seed: int = 0) -> nn.Module:
    """The small untrained ``AutoencoderKL`` named ``random`` (same weights for the same seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _vae_class()(**RANDOM_VAE_CONFIG)


def vae_factor(vae: nn.Module) -> int:
    """Pixels per latent cell along each side (8 for SD-VAE): one halving per extra block."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_from_state(config: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """An ``AutoencoderKL`` built from its config and filled with ``state``, without a random initialisation."""
    from accelerate import init_empty_weights

    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with init_empty_weights():
        vae = _vae_class().from_config(config)
    missing, unexpected = vae.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(f"the VAE weights do not fit its config (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}); the checkpoint is damaged or was written by another VAE")
    return vae


def load_trainable_vae(name: str) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor] | None]:
    """The VAE to train end to end, and the latent statistics its folder carries (if any).

    ``name``: ``random`` (:func:`random_vae`), a diffusers ``AutoencoderKL`` folder (as written by
    ``irepa export-vae``) or a hub id such as ``stabilityai/sd-vae-ft-mse``.
    """
    if name == RANDOM_VAE:
        return random_vae(), None
    from irepa.errors import WeightsError

    try:
        vae = load_vae(name)
    except FileNotFoundError as err:
        raise WeightsError(str(err)) from err
    vae.train().requires_grad_(True)
    return vae, statistics_of_folder(name, vae)


def statistics_of_folder(name: str, vae: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel latent ``(mean, std)`` stored with a VAE: ``latent_stats.json`` or its config's latents_mean/std."""
    path = Path(name).expanduser() / STATS_FILE
    if path.is_file():
        stats = json.loads(path.read_text())
        return torch.tensor(stats["mean"]), torch.tensor(stats["std"])
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None and len(mean) == vae.config.latent_channels:
        return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    return None


class TrainableVAECodec(Codec):
    """A live, trainable ``AutoencoderKL`` with batch-norm statistics of its latents (REPA-E)."""

    kind = "trainable-vae"
    trainable = True

    def __init__(self, vae: nn.Module, source: str, mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
                 momentum: float = 0.1, eps: float = 1e-4, decode_batch: int = 16):
        super().__init__()
        self.vae = vae
        self.source = source  # where the initial weights came from: a hub id, a folder or "random"
        self.vae_name = f"{source} (tuned end to end)"
        self.channels = int(vae.config.latent_channels)
        self.factor = vae_factor(vae)
        self.decode_batch = decode_batch
        self.latent_norm = nn.BatchNorm2d(self.channels, eps=eps, momentum=momentum, affine=False)
        self.latent_norm_ema = copy.deepcopy(self.latent_norm).eval().requires_grad_(False)
        self.decode_with_ema = True  # sampling decodes with the EMA statistics (False: the live ones)
        self.statistics_set = False  # True once the statistics were set or restored (else: mean 0, std 1)
        if mean is not None and std is not None:
            self.set_statistics(mean, std)

    # ------------------------------------------------------------------ statistics

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Start both the live and the EMA running statistics at per-channel ``mean`` and ``std``."""
        mean, std = torch.as_tensor(mean).float().flatten(), torch.as_tensor(std).float().flatten()
        if mean.numel() != self.channels or std.numel() != self.channels or not bool((std > 0).all()):
            raise DataError(f"latent statistics must be {self.channels} means and positive stds, got {mean} / {std}")
        for norm in (self.latent_norm, self.latent_norm_ema):
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(std.pow(2))
            norm.num_batches_tracked.zero_()
        self.statistics_set = True

    def statistics(self, ema: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(mean, std)`` that normalise latents at inference: ``std = sqrt(running_var + eps)``."""
        norm = self.latent_norm_ema if ema else self.latent_norm
        return norm.running_mean.clone(), (norm.running_var + norm.eps).sqrt()

    # ------------------------------------------------------------------ training passes

    def autoencode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> Autoencoded:
        """``[-1, 1]`` images -> posterior, a sample ``z`` (noise from ``generator``), ``decode(z)``; differentiable."""
        posterior = self.vae.encode(images).latent_dist
        mean, logvar = posterior.mean, posterior.logvar
        z = sample_posterior(torch.cat([mean, logvar], dim=1), generator)
        return Autoencoded(mean=mean, logvar=logvar, z=z, recon=self.vae.decode(z).sample)

    def normalize_batch(self, z: torch.Tensor) -> torch.Tensor:
        """The model's input during training: ``z`` normalised with its own batch statistics (running ones updated)."""
        self.latent_norm.train()
        return self.latent_norm(z)

    def normalize(self, z: torch.Tensor, ema: bool = False) -> torch.Tensor:
        """``z`` normalised with the running statistics (live, or their EMA); differentiable in ``z``."""
        norm = self.latent_norm_ema if ema else self.latent_norm
        return F.batch_norm(z, norm.running_mean, norm.running_var, training=False, eps=norm.eps)

    def denormalize(self, x: torch.Tensor, ema: bool = True) -> torch.Tensor:
        """Inverse of :meth:`normalize`: ``x * sqrt(running_var + eps) + running_mean``."""
        mean, std = self.statistics(ema)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * std.to(x).view(shape) + mean.to(x).view(shape)

    # ------------------------------------------------------------------ inference (Codec API)

    @torch.no_grad()
    def encode(self, batch, generator=None, device=None):
        """A batch's images -> normalised posterior samples, with the statistics sampling uses."""
        param = next(self.vae.parameters())
        images = unit_images(batch["image"], param.device).to(param.dtype) * 2 - 1
        posterior = self.vae.encode(images).latent_dist
        z = sample_posterior(torch.cat([posterior.mean, posterior.logvar], dim=1).float(), generator)
        x = self.normalize(z, ema=self.decode_with_ema)
        return x.to(device) if device is not None else x

    @torch.no_grad()
    def decode(self, x):
        param = next(self.vae.parameters())
        z = self.denormalize(x.float(), ema=self.decode_with_ema)
        out = [self.vae.decode(c.to(param.device, param.dtype)).sample.float() for c in z.split(self.decode_batch)]
        return torch.cat(out)

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything sampling needs to decode as trained: the VAE's config and weights, both statistics."""
        return {
            "kind": self.kind,
            "source": self.source,
            "vae_config": {k: _plain(v) for k, v in self.vae.config.items() if not k.startswith("_")},
            "vae": {k: v.detach().cpu().clone() for k, v in self.vae.state_dict().items()},
            "latent_norm": {k: v.detach().cpu().clone() for k, v in self.latent_norm.state_dict().items()},
            "latent_norm_ema": {k: v.detach().cpu().clone() for k, v in self.latent_norm_ema.state_dict().items()},
            "momentum": self.latent_norm.momentum,
            "eps": self.latent_norm.eps,
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore the weights and statistics written by :meth:`checkpoint_state` (resuming a run)."""
        self.vae.load_state_dict(state["vae"])
        self.latent_norm.load_state_dict(state["latent_norm"])
        self.latent_norm_ema.load_state_dict(state["latent_norm_ema"])
        self.statistics_set = True

    @classmethod
    def from_checkpoint_state(cls, state: dict[str, Any]) -> TrainableVAECodec:
        vae = vae_from_state(state["vae_config"], state["vae"]).eval().requires_grad_(False)
        codec = cls(vae, state["source"], momentum=state["momentum"], eps=state["eps"])
        codec.latent_norm.load_state_dict(state["latent_norm"])
        codec.latent_norm_ema.load_state_dict(state["latent_norm_ema"])
        codec.statistics_set = True
        return codec

    # ------------------------------------------------------------------ export

    def save_pretrained(self, folder: str | os.PathLike, ema: bool = True) -> Path:
        """Write the VAE as a diffusers ``AutoencoderKL`` folder with its latent statistics.

        The statistics go both into ``latent_stats.json`` (``mean``, ``std``: ``(z - mean) / std`` is
        what the model saw) and into the config's ``latents_mean`` / ``latents_std``. The folder is
        written next to ``folder`` and renamed into place, so an interrupted export leaves nothing
        behind; an existing non-empty ``folder`` is refused.
        """
        folder = Path(folder).expanduser()
        if folder.exists() and any(folder.iterdir()):
            raise ConfigError(f"{folder} exists and is not empty; choose another --out (nothing was overwritten)")
        mean, std = self.statistics(ema)
        config = {k: _plain(v) for k, v in self.vae.config.items() if not k.startswith("_")}
        config.update(latents_mean=mean.tolist(), latents_std=std.tolist())
        state = {k: v.detach().float().cpu() for k, v in self.vae.state_dict().items()}
        exported = vae_from_state(config, state)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            exported.save_pretrained(str(tmp), safe_serialization=True)
            record = {"mean": mean.tolist(), "std": std.tolist(), "source": self.source,
                      "statistics": "EMA of the latent batch-norm running statistics" if ema else
                                    "live latent batch-norm running statistics",
                      "normalise": "(z - mean) / std, per channel, z a posterior sample"}
            (tmp / STATS_FILE).write_text(json.dumps(record, indent=2) + "\n")
            if folder.exists():
                folder.rmdir()
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return folder

    def describe(self) -> str:
        return f"trainable VAE from {self.source} ({self.channels} channels, f{self.factor}, batch-norm statistics)"


def _plain(value: Any) -> Any:
    """Config values as JSON-friendly Python (tuples -> lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@torch.no_grad()
def estimate_latent_statistics(codec: TrainableVAECodec, dataset, count: int, batch_size: int = 32,
                               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the posterior means of ``count`` images spread evenly over ``dataset``.

    The same definition as ``irepa prepare-latents`` (population std, float64 accumulation); evenly
    spread indices, because class-sorted folders would give one class from their first images.
    """
    n = len(dataset)
    if n == 0:
        raise DataError("the dataset is empty: no images to estimate the latent statistics from")
    indices = np.unique(np.linspace(0, n - 1, num=min(count, n)).round().astype(int)).tolist()
    moments = ChannelMoments(codec.channels)
    param = next(codec.vae.parameters())
    was_training = codec.vae.training
    codec.vae.eval()
    for start in range(0, len(indices), batch_size):
        images = torch.stack([dataset[i]["image"] for i in indices[start:start + batch_size]])
        x = unit_images(images, device).to(param.dtype) * 2 - 1
        moments.update(codec.vae.encode(x).latent_dist.mean.float().cpu().numpy())
    codec.vae.train(was_training)
    return torch.from_numpy(moments.mean).float(), torch.from_numpy(moments.std()).float()

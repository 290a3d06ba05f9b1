"""From a checkpoint to images: the model, its decoder, and a seed-per-sample generator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from irepa.data.latents import denormalize_latents
from irepa.diffusion.samplers import SamplerConfig, per_sample_noise, sample


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` in [-1, 1] -> ``(B, H, W, 3)`` uint8 (grayscale repeated to RGB)."""
    x = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).contiguous().cpu()


@dataclass
class PixelDecoder:
    """Pixel-space models: the model output is already the image in [-1, 1]."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return to_uint8(x)

    def scale(self) -> int:
        return 1


class LatentDecoder:
    """Undo the per-channel latent scaling, then decode with the VAE."""

    def __init__(self, vae: nn.Module, mean: torch.Tensor, std: torch.Tensor, batch_size: int = 16):
        self.vae, self.batch_size = vae, batch_size
        self.mean = mean.float().view(1, -1, 1, 1)
        self.std = std.float().view(1, -1, 1, 1)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        device = next(self.vae.parameters()).device
        z = denormalize_latents(x.float(), self.mean.flatten(), self.std.flatten())
        out = [
            self.vae.decode(chunk.to(device, next(self.vae.parameters()).dtype)).sample
            for chunk in z.split(self.batch_size)
        ]
        return to_uint8(torch.cat(out))

    def scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


class Generator:
    """Samples images for given labels; each sample's randomness comes only from its own seed."""

    def __init__(
        self,
        model: nn.Module,
        latent_shape: tuple[int, int, int],
        num_classes: int,
        decoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
        info: dict[str, Any] | None = None,
    ):
        self.model = model.eval()
        self.latent_shape = tuple(latent_shape)
        self.num_classes = num_classes
        self.decoder = decoder or PixelDecoder()
        scale = self.decoder.scale() if hasattr(self.decoder, "scale") else 1
        self.image_size = self.latent_shape[-1] * scale
        self.info = dict(info or {})

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def sample_latents(
        self,
        labels: torch.Tensor,
        seeds: list[int],
        sampler: SamplerConfig,
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        if len(seeds) != labels.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels but {len(seeds)} seeds")
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}] ({self.num_classes} = unconditional)")
        dtype = next(self.model.parameters()).dtype
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        noise = per_sample_noise((len(seeds), *self.latent_shape), generators, self.device, dtype)
        return sample(self.model, noise, labels.to(self.device), sampler, self.num_classes, generators, progress)

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        seeds: list[int],
        sampler: SamplerConfig,
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """uint8 images ``(B, H, W, 3)``."""
        return self.decoder(self.sample_latents(labels, seeds, sampler, progress))


def build_model_from_config(cfg: dict[str, Any]) -> nn.Module:
    """The backbone described by a checkpoint's config dict."""
    from irepa.config import ModelSection, from_dict
    from irepa.models import create_model

    section = from_dict(ModelSection, cfg["model"], "model")
    return create_model(section.name, **section.overrides())


def load_generator(
    ckpt_path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu", vae: str | None = None
) -> Generator:
    """Rebuild the model of a training checkpoint (EMA weights by default) and its decoder."""
    from irepa.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    cfg = ckpt["config"]
    model = build_model_from_config(cfg)
    weights = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict(weights, strict=True)
    model.to(device).eval()
    m = cfg["model"]
    latent_shape = (m["in_channels"], m["input_size"], m["input_size"])
    vae_id = vae or ckpt.get("vae") or cfg.get("data", {}).get("vae")
    decoder = None
    if ckpt.get("latent_stats") is not None:
        if not vae_id:
            raise ValueError("this checkpoint was trained on latents but names no VAE; pass vae=PATH_OR_ID")
        from irepa.data.vae import load_vae

        mean, std = ckpt["latent_stats"]
        decoder = LatentDecoder(load_vae(vae_id, device=device), torch.as_tensor(mean), torch.as_tensor(std))
    info = {
        "checkpoint": ckpt["path"],
        "step": int(ckpt["step"]),
        "model": m["name"],
        "ema": bool(use_ema and ckpt.get("ema") is not None),
        "vae": vae_id if decoder is not None else None,
        "space": "latent" if decoder is not None else "pixel",
    }
    return Generator(model, latent_shape, m["num_classes"], decoder, info)


def make_grid(images: torch.Tensor, nrow: int, pad: int = 2) -> torch.Tensor:
    """Tile uint8 ``(N, H, W, 3)`` images into one ``(H', W', 3)`` image with ``nrow`` per row."""
    n, h, w, c = images.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = images[
            i
        ]
    return grid


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Atomically write a uint8 ``(H, W, 3)`` tensor as PNG."""
    from PIL import Image

    from irepa.utils.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(image.numpy()).save(tmp, format="PNG")

"""From a checkpoint to images: the model, its objective, its codec, and a seed-per-sample generator."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from irepa.codecs import Codec, codec_from_checkpoint, to_uint8
from irepa.config import RunConfig, config_from_checkpoint, to_dict, with_defaults
from irepa.diffusion.samplers import SamplerConfig, per_sample_noise, sample
from irepa.objectives import Objective, build_objective
from irepa.precision import AUTO, autocast_model, resolve_precision

__all__ = ["Generator", "load_generator", "build_model_from_config", "make_grid", "save_png", "to_uint8"]


class Generator:
    """Samples images for given labels; each sample's randomness comes only from its own seed.

    ``model`` is the (EMA) backbone, ``objective`` turns it into the field the sampler integrates,
    and ``codec`` decodes model-space samples to pixels. ``precision`` (``auto``, ``fp32``, ``bf16``,
    ``fp16``) applies to the model call only (see :func:`irepa.precision.autocast_model`): the state,
    the times and the objective's arithmetic stay float32. ``auto`` is bf16 on CUDA, fp32 elsewhere.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        codec: Codec,
        input_size: int,
        info: dict[str, Any] | None = None,
        precision: str = AUTO,
    ):
        self.model = model.eval()
        self.objective = objective
        self.codec = codec
        self.num_classes = objective.num_classes
        self.latent_shape = (codec.channels, input_size, input_size)
        self.image_size = input_size * codec.factor
        self.info = dict(info or {})
        resolve_precision(precision, "cpu")  # refuse an unknown name now, not at the first batch
        self.requested_precision = precision

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def precision(self) -> str:
        """The precision of the model call on the model's current device."""
        return resolve_precision(self.requested_precision, self.device)

    @torch.no_grad()
    def sample_latents(
        self,
        labels: torch.Tensor,
        seeds: list[int],
        sampler: SamplerConfig,
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Model-space samples for ``labels``, sample i drawn from ``seeds[i]`` alone."""
        if len(seeds) != labels.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels but {len(seeds)} seeds")
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}] ({self.num_classes} = unconditional)")
        self.objective.check_sampler(sampler.kind)
        state_dtype = torch.promote_types(next(self.model.parameters()).dtype, torch.float32)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        noise = per_sample_noise((len(seeds), *self.latent_shape), generators, self.device, state_dtype)
        if self.objective.cfg.noise_scale != 1.0:
            noise = noise * self.objective.cfg.noise_scale
        field = self.objective.field(autocast_model(self.model, self.precision))
        return sample(field, noise, labels.to(self.device), sampler, self.num_classes, generators, progress)

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        seeds: list[int],
        sampler: SamplerConfig,
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """uint8 images ``(B, H, W, 3)``."""
        return self.codec.decode_uint8(self.sample_latents(labels, seeds, sampler, progress))


def build_model_from_config(cfg: dict[str, Any]) -> nn.Module:
    """The backbone described by a checkpoint's config dict."""
    from irepa.config import from_dict
    from irepa.train.parts import build_backbone

    return build_backbone(from_dict(RunConfig, with_defaults(cfg), "checkpoint config"))


def load_generator(
    ckpt_path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu", vae: str | None = None,
    precision: str = AUTO,
) -> Generator:
    """Rebuild a training checkpoint's model (EMA weights by default), its objective and its codec."""
    from irepa.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    cfg = config_from_checkpoint(ckpt)
    model = build_model_from_config(ckpt["config"])
    weights = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict(weights, strict=True)
    model.to(device).eval()
    objective = build_objective(cfg.objective, cfg.model.num_classes)
    codec = codec_from_checkpoint(ckpt, vae, ema=use_ema).to(device).prepare_decoder(device)
    info = {
        "checkpoint": ckpt["path"],
        "step": int(ckpt["step"]),
        "model": cfg.model.name,
        "recipe": cfg.recipe,
        "objective": objective.describe(),
        "run_sampler": to_dict(cfg.sample),  # the run's own sampler: what `irepa sample` starts from
        "ema": bool(use_ema and ckpt.get("ema") is not None),
        "vae": getattr(codec, "vae_name", None),
        "space": "latent" if codec.kind != "pixels" else "pixel",
    }
    return Generator(model, objective, codec, cfg.model.input_size, info, precision)


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

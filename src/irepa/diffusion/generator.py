"""A seed-per-sample image generator: a backbone seen through its objective, integrated by a sampler,
decoded by its codec. Training draws its sample grids with it; :mod:`irepa.sample` builds one from a
checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from irepa.precision import AUTO, autocast_model, resolve_precision

from .samplers import SamplerConfig, per_sample_noise, sample

if TYPE_CHECKING:
    from irepa.codecs import Codec
    from irepa.objectives import Objective


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
        noise = self.objective.prior_noise(per_sample_noise((len(seeds), *self.latent_shape), generators,
                                                            self.device, state_dtype))
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

"""Samplers that integrate a velocity model from t = 1 (noise) to t = 0 (data).

ODE: Euler or Heun on ``dx/dt = v``. SDE: Euler-Maruyama with diffusion ``w(t) = 2t`` and drift
``v - w/2 * score``. Classifier-free guidance is applied to the velocity only inside the guidance
interval ``[guidance_low, guidance_high]``; outside it the conditional prediction is used alone.
Randomness comes from one ``torch.Generator`` per sample, so a sample does not depend on which
batch (or which GPU) it was drawn in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from irepa.errors import ConfigError

from .interpolants import get_interpolant

SAMPLERS = ("sde", "ode-euler", "ode-heun")
VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SamplerConfig:
    kind: str = "sde"
    steps: int = 250
    cfg_scale: float = 1.0
    guidance_low: float = 0.0
    guidance_high: float = 1.0
    path: str = "linear"
    sde_last_t: float = 0.04  # the SDE grid stops here; the last step to 0 is the deterministic mean

    def validate(self) -> None:
        if self.kind not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.kind!r}; valid: {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise ConfigError(f"sampler steps must be >= 1, got {self.steps}")
        if not 0 <= self.guidance_low <= self.guidance_high <= 1:
            raise ConfigError(
                f"guidance interval must satisfy 0 <= low <= high <= 1, got [{self.guidance_low}, {self.guidance_high}]"
            )
        if self.cfg_scale < 0:
            raise ConfigError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
        get_interpolant(self.path)


def per_sample_noise(shape: Sequence[int], generators: Sequence[torch.Generator], device, dtype) -> torch.Tensor:
    """Stack one standard normal draw of ``shape[1:]`` from each sample's own generator."""
    noise = torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generators])
    return noise.to(device=device, dtype=dtype)


def guided_velocity(
    model: VelocityFn, x: torch.Tensor, t: float, labels: torch.Tensor, null_label: int, cfg: SamplerConfig
) -> torch.Tensor:
    """Velocity at scalar time ``t``, with classifier-free guidance inside the guidance interval."""
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    guided = cfg.cfg_scale != 1.0 and cfg.guidance_low <= t <= cfg.guidance_high
    if not guided:
        return model(x, t_batch, labels)
    null = torch.full_like(labels, null_label)
    v = model(torch.cat([x, x]), torch.cat([t_batch, t_batch]), torch.cat([labels, null]))
    v_cond, v_uncond = v.chunk(2)
    return v_uncond + cfg.cfg_scale * (v_cond - v_uncond)


@torch.no_grad()
def sample(
    model: VelocityFn,
    noise: torch.Tensor,
    labels: torch.Tensor,
    cfg: SamplerConfig,
    null_label: int,
    generators: Sequence[torch.Generator] | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Integrate from ``noise`` (t = 1) to data (t = 0). ``generators`` feed the SDE's noise."""
    cfg.validate()
    if cfg.kind == "sde":
        if generators is None or len(generators) != noise.shape[0]:
            raise ValueError("the SDE sampler needs one torch.Generator per sample")
        return _euler_maruyama(model, noise, labels, cfg, null_label, generators, progress)
    return _ode(model, noise, labels, cfg, null_label, heun=cfg.kind == "ode-heun", progress=progress)


def _ode(model, x, labels, cfg, null_label, heun, progress):
    times = torch.linspace(1.0, 0.0, cfg.steps + 1, dtype=torch.float64).tolist()
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        dt = t_next - t_cur
        v = guided_velocity(model, x, t_cur, labels, null_label, cfg)
        x_next = x + dt * v
        if heun and i < cfg.steps - 1:  # trapezoid correction on all but the last step
            v_next = guided_velocity(model, x_next, t_next, labels, null_label, cfg)
            x_next = x + dt * 0.5 * (v + v_next)
        x = x_next
        if progress:
            progress(1)
    return x


def _euler_maruyama(model, x, labels, cfg, null_label, generators, progress):
    path = get_interpolant(cfg.path)
    times = torch.linspace(1.0, cfg.sde_last_t, cfg.steps, dtype=torch.float64).tolist() + [0.0]
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        dt = t_next - t_cur
        v = guided_velocity(model, x, t_cur, labels, null_label, cfg)
        t_batch = torch.full((x.shape[0],), t_cur, device=x.device, dtype=torch.float64)
        score = path.score_from_velocity(v.double(), x.double(), t_batch).to(x.dtype)
        diffusion = 2.0 * t_cur
        drift = v - 0.5 * diffusion * score
        if i == len(times) - 2:  # last step: the deterministic mean
            x = x + drift * dt
        else:
            eps = per_sample_noise(x.shape, generators, x.device, x.dtype)
            x = x + drift * dt + (diffusion**0.5) * (abs(dt) ** 0.5) * eps
        if progress:
            progress(1)
    return x

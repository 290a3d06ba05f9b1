"""Samplers that integrate a velocity model from t = 1 (noise) to t = 0 (data).

ODE: Euler or Heun on ``dx/dt = v``. SDE: Euler-Maruyama with diffusion ``w(t) = 2t`` and drift
``v - w/2 * score`` (the score from the velocity on the objective's path). MeanFlow: steps of the
average velocity, ``x_r = x_t - (t - r) u``. Classifier-free guidance is applied only inside the
guidance interval ``[guidance_low, guidance_high]`` (JiT's rule: the open interval, see :func:`in_interval`);
outside it the conditional prediction is used alone.
Randomness comes from one ``torch.Generator`` per sample, so a sample does not depend on which
batch (or which GPU) it was drawn in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from irepa.errors import ConfigError

from .interpolants import get_interpolant

SAMPLERS = ("sde", "ode-euler", "ode-heun", "meanflow")
GUIDANCE_RULES = ("reference", "per-evaluation", "jit")
LABEL_MODES = ("random", "balanced")  # how evaluation draws class labels: irepa.sample.labels
VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SamplerConfig:
    kind: str = "sde"  # sde | ode-euler | ode-heun | meanflow (average-velocity steps, MeanFlow objectives)
    steps: int = 250
    cfg_scale: float = 1.0
    guidance_low: float = 0.0
    guidance_high: float = 1.0
    # reference: a Heun step guides both of its evaluations or neither, decided at the step's start time
    # (as the REPA / SiT samplers do); per-evaluation: each evaluation decides from its own time; jit: as
    # per-evaluation with JiT's strict bounds, low < t < high (a high of 1 includes t = 1)
    guidance_rule: str = "reference"
    # class labels `irepa sample` draws by default: random (the REPA / SiT evaluation) or balanced (N / classes
    # per class, JiT's evaluation); not a sampler setting, so it is left out of the samples' recorded sampler
    labels: str = "random"
    sde_last_t: float = 0.04  # the SDE grid stops here; the last step to 0 is the deterministic mean

    def validate(self) -> None:
        """Refuse settings no sampler can use, naming the ``sample.`` field."""
        if self.kind not in SAMPLERS:
            raise ConfigError(f"sample.kind must be one of {', '.join(SAMPLERS)}, got {self.kind!r}",
                              fix="e.g. --sample.kind ode-heun")
        if self.steps < 1:
            raise ConfigError(f"sample.steps must be >= 1, got {self.steps}", fix="e.g. --sample.steps 50")
        if not 0 <= self.guidance_low <= self.guidance_high <= 1:
            raise ConfigError(
                "the guidance interval must satisfy 0 <= sample.guidance_low <= sample.guidance_high <= 1, got "
                f"[{self.guidance_low}, {self.guidance_high}]", fix="e.g. --sample.guidance_high 0.7"
            )
        if not 0 <= self.cfg_scale < float("inf"):
            raise ConfigError(f"sample.cfg_scale must be a finite number >= 0, got {self.cfg_scale}",
                              fix="e.g. --sample.cfg_scale 1.5 (1 = no guidance)")
        if self.guidance_rule not in GUIDANCE_RULES:
            raise ConfigError(f"sample.guidance_rule must be one of {', '.join(GUIDANCE_RULES)}, "
                              f"got {self.guidance_rule!r}", fix="e.g. --sample.guidance_rule per-evaluation")
        if not 0 < self.sde_last_t < 1:
            raise ConfigError(f"sample.sde_last_t must be in (0, 1), got {self.sde_last_t}",
                              fix="e.g. --sample.sde_last_t 0.04")
        if self.labels not in LABEL_MODES:
            raise ConfigError(f"sample.labels must be one of {', '.join(LABEL_MODES)}, got {self.labels!r}",
                              fix="e.g. --sample.labels balanced")


class _LinearField:
    """A bare velocity function seen as a field on the linear path."""

    def __init__(self, fn: VelocityFn):
        self.velocity = fn
        self.path = get_interpolant("linear")

    def average_velocity(self, x, r, t, y):
        raise ConfigError("the meanflow sampler needs a MeanFlow model (an objective with an average velocity)")


def as_field(field):
    """Samplers take an object with ``velocity(x, t, y)``, ``path`` and optionally ``average_velocity``."""
    return field if hasattr(field, "velocity") else _LinearField(field)


def per_sample_noise(shape: Sequence[int], generators: Sequence[torch.Generator], device, dtype) -> torch.Tensor:
    """Stack one standard normal draw of ``shape[1:]`` from each sample's own generator."""
    noise = torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generators])
    return noise.to(device=device, dtype=dtype)


def in_interval(t: float, cfg: SamplerConfig) -> bool:
    """Whether classifier-free guidance applies at time ``t``.

    ``[low, high]`` inclusive (REPA / SiT), or with ``guidance_rule: jit`` JiT's test converted to this time
    (t = 1 - t_JiT): JiT guides when ``t_JiT < interval_max`` and (``interval_min == 0`` or
    ``t_JiT > interval_min``), i.e. ``low < t`` and (``high == 1`` or ``t < high``).
    """
    if cfg.cfg_scale == 1.0:
        return False
    if cfg.guidance_rule == "jit":
        return cfg.guidance_low < t and (cfg.guidance_high == 1.0 or t < cfg.guidance_high)
    return cfg.guidance_low <= t <= cfg.guidance_high


def _guided(fn, x: torch.Tensor, labels: torch.Tensor, null_label: int, cfg: SamplerConfig, guide: bool):
    """``fn(x, labels)``, or ``uncond + w (cond - uncond)`` in one doubled batch when ``guide``."""
    if not guide:
        return fn(x, labels)
    out = fn(torch.cat([x, x]), torch.cat([labels, torch.full_like(labels, null_label)]))
    cond, uncond = out.chunk(2)
    return uncond + cfg.cfg_scale * (cond - uncond)


def guided_velocity(
    model, x: torch.Tensor, t: float, labels: torch.Tensor, null_label: int, cfg: SamplerConfig,
    guide: bool | None = None,
) -> torch.Tensor:
    """Velocity at scalar time ``t``; guided when ``guide`` (default: when ``t`` is in the guidance interval)."""
    field = as_field(model)
    guide = in_interval(t, cfg) if guide is None else guide

    def fn(xx, yy):
        return field.velocity(xx, torch.full((xx.shape[0],), t, device=xx.device, dtype=xx.dtype), yy)

    return _guided(fn, x, labels, null_label, cfg, guide)


@torch.no_grad()
def sample(
    field,
    noise: torch.Tensor,
    labels: torch.Tensor,
    cfg: SamplerConfig,
    null_label: int,
    generators: Sequence[torch.Generator] | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Integrate from ``noise`` (t = 1) to data (t = 0).

    ``field`` is what an objective exposes for a model (``velocity``, ``path``, ``average_velocity``)
    or a bare velocity function ``v(x, t, y)`` on the linear path. ``generators`` feed the SDE's noise.
    """
    cfg.validate()
    field = as_field(field)
    if cfg.kind == "sde":
        if generators is None or len(generators) != noise.shape[0]:
            raise ValueError("the SDE sampler needs one torch.Generator per sample")
        return _euler_maruyama(field, noise, labels, cfg, null_label, generators, progress)
    if cfg.kind == "meanflow":
        return _mean_flow(field, noise, labels, cfg, null_label, progress)
    return _ode(field, noise, labels, cfg, null_label, heun=cfg.kind == "ode-heun", progress=progress)


def _ode(field, x, labels, cfg, null_label, heun, progress):
    times = torch.linspace(1.0, 0.0, cfg.steps + 1, dtype=torch.float64).tolist()
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        dt = t_next - t_cur
        guide = in_interval(t_cur, cfg)
        v = guided_velocity(field, x, t_cur, labels, null_label, cfg, guide)
        x_next = x + dt * v
        if heun and i < cfg.steps - 1:  # trapezoid correction on all but the last step
            guide_next = guide if cfg.guidance_rule == "reference" else in_interval(t_next, cfg)
            v_next = guided_velocity(field, x_next, t_next, labels, null_label, cfg, guide_next)
            x_next = x + dt * 0.5 * (v + v_next)
        x = x_next
        if progress:
            progress(1)
    return x


def _euler_maruyama(field, x, labels, cfg, null_label, generators, progress):
    path = field.path
    times = torch.linspace(1.0, cfg.sde_last_t, cfg.steps, dtype=torch.float64).tolist() + [0.0]
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        dt = t_next - t_cur
        v = guided_velocity(field, x, t_cur, labels, null_label, cfg)
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


def _mean_flow(field, x, labels, cfg, null_label, progress):
    """``x_r = x_t - (t - r) u(x_t, r, t)`` on a uniform grid from 1 to 0; one step is 1-NFE generation."""
    times = torch.linspace(1.0, 0.0, cfg.steps + 1, dtype=torch.float64).tolist()
    for t_cur, t_next in zip(times[:-1], times[1:]):

        def fn(xx, yy, t_cur=t_cur, t_next=t_next):
            b = xx.shape[0]
            t = torch.full((b,), t_cur, device=xx.device, dtype=xx.dtype)
            r = torch.full((b,), t_next, device=xx.device, dtype=xx.dtype)
            return field.average_velocity(xx, r, t, yy)

        u = _guided(fn, x, labels, null_label, cfg, in_interval(t_cur, cfg))
        x = x - (t_cur - t_next) * u
        if progress:
            progress(1)
    return x

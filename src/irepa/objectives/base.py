"""The objective of a training recipe: one object for the path, the time sampler, the prediction and the loss.

An :class:`Objective` owns everything a recipe decides about the generative model:

* the interpolant ``x_t = a_t x_0 + s_t eps`` (t = 0 data, t = 1 noise: the library's one time
  convention) and the training distribution of t;
* what the network predicts (the velocity, the clean image, or an average velocity);
* the loss, plus the auxiliary terms the network returns (representation alignment today);
* the field a sampler integrates: :meth:`Objective.velocity` (and, for recipes with their own
  update, :meth:`Objective.average_velocity`).

Training calls :meth:`Objective.loss`; sampling calls :meth:`Objective.velocity`. The objective is
built from the ``objective`` section of the run config (:class:`ObjectiveConfig`), which every
checkpoint carries, so samplers, evaluation and diagnostics rebuild exactly what was trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from irepa.diffusion.interpolants import Interpolant, get_interpolant
from irepa.diffusion.time_sampling import TIME_SAMPLERS, sample_time
from irepa.errors import ConfigError

PREDICTIONS = ("velocity", "x")
MEANFLOW_PRECISIONS = ("fp32", "autocast")
MEANFLOW_JVP_FORMS = ("single", "two-pass")
MEANFLOW_PAIRINGS = ("sorted", "clamped")


@dataclass
class MeanFlowConfig:
    """MeanFlow's own settings (used when ``objective.kind`` is ``meanflow``)."""

    ratio: float = 0.25  # fraction of the batch with r != t; the rest is plain flow matching
    adaptive_p: float = 1.0  # loss weight 1 / (||delta||^2 + c)^p; p = 0 is the plain squared error
    adaptive_c: float = 1e-3
    cfg_omega: float = 1.0  # training-time guidance: v~ = w v + k u(c) + (1 - w - k) u(null); 1, 0 = none
    cfg_kappa: float = 0.0
    cfg_t_low: float = 0.0  # guidance applies to the target for t in [low, high]
    cfg_t_high: float = 1.0
    # fp32: the JVP (the network's forward inside it included), the target and the loss run with autocast
    # off, as the reference; autocast: under the run's mixed precision (faster, but the target is a
    # difference of large terms and moves by tens of percent per element in bf16: docs/fidelity.md)
    precision: str = "fp32"
    # two-pass: a no-grad JVP pass, then an ordinary forward and backward (DDP, fused attention, compile);
    # single: the loss's prediction is the JVP's own primal output (one forward-mode pass with gradients, then
    # one backward; a forward fewer, single-process runs only), as the reference
    jvp: str = "two-pass"
    # r's own time distribution (None: drawn like t, from objective.time_sampling / p_mean / p_std), as the
    # MeanFlow PyTorch port's separate logit-normal for r
    r_p_mean: float | None = None
    r_p_std: float | None = None
    # how the two draws become (t, r): sorted (t = the larger, r = the smaller; the paper's) or clamped
    # (t = the first draw, r = min(t, second draw), the port's "v1"); then r = t for a 1 - ratio share
    pairing: str = "sorted"


@dataclass
class ObjectiveConfig:
    """The ``objective`` section of a run config."""

    kind: str = "flow"  # flow | meanflow
    path: str = "linear"  # linear | cosine
    prediction: str = "velocity"  # velocity (SiT) | x (JiT: the clean image, trained with the v-loss)
    time_sampling: str = "uniform"  # uniform | lognormal (sigma = exp(N(p_mean, p_std)), mapped to t by the path)
    p_mean: float = 0.0  # log-normal: n ~ N(p_mean, p_std), the SiT reference's N(0, 1)
    p_std: float = 1.0
    label_dropout: float = 0.1  # probability of the null class, for classifier-free guidance
    noise_scale: float = 1.0  # eps ~ N(0, noise_scale^2), in training and as the sampling prior
    t_eps: float = 0.05  # x-prediction: v = (x_t - x) / max(t, t_eps)
    meanflow: MeanFlowConfig = field(default_factory=MeanFlowConfig)

    def validate(self) -> None:
        from . import OBJECTIVES

        if self.kind not in OBJECTIVES:
            raise ConfigError(f"objective.kind {self.kind!r} is unknown; valid: {', '.join(OBJECTIVES)}")
        get_interpolant(self.path)
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"objective.prediction {self.prediction!r} is unknown; valid: {', '.join(PREDICTIONS)}")
        if self.time_sampling not in TIME_SAMPLERS:
            raise ConfigError(
                f"objective.time_sampling {self.time_sampling!r} is unknown; valid: {', '.join(TIME_SAMPLERS)}"
            )
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"objective.label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.p_std <= 0 or self.noise_scale <= 0 or self.t_eps <= 0:
            raise ConfigError("objective.p_std, objective.noise_scale and objective.t_eps must be > 0")


@dataclass
class Draw:
    """What one training step draws at random; kept so a second pass can reuse it (REPA-E)."""

    t: torch.Tensor  # (B,)
    noise: torch.Tensor  # like x0
    labels: torch.Tensor  # after label dropout to the null class
    r: torch.Tensor | None = None  # MeanFlow's start time, r <= t


def drop_labels(labels: torch.Tensor, num_classes: int, prob: float, generator: torch.Generator | None) -> torch.Tensor:
    """Replace each label by the null class ``num_classes`` with probability ``prob``."""
    if prob <= 0:
        return labels
    device = generator.device if generator is not None else labels.device
    drop = torch.rand(labels.shape[0], generator=generator, device=device) < prob
    return torch.where(drop.to(labels.device), torch.full_like(labels, num_classes), labels)


def squared_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean (pred - target)^2`` over all elements, in float32."""
    return (pred.float() - target.float()).pow(2).mean()


class Objective:
    """Base class. Subclasses implement :meth:`loss` and :meth:`velocity`.

    The network is called as ``net(x_t, t, labels, targets=None, **times)`` and returns
    ``(prediction, aux)`` where ``aux`` is the alignment head's output (or ``None``); a bare
    backbone (sampling) is called as ``model(x_t, t, labels, **times)``.
    """

    kind = "base"
    #: sampler kinds this objective supports besides the velocity integrators
    extra_samplers: tuple[str, ...] = ()

    def __init__(self, cfg: ObjectiveConfig, num_classes: int):
        cfg.validate()
        self.cfg = cfg
        self.num_classes = num_classes
        self.path: Interpolant = get_interpolant(cfg.path)

    # ------------------------------------------------------------------ training

    def sample_t(self, batch: int, generator: torch.Generator | None, p_mean: float | None = None,
                 p_std: float | None = None) -> torch.Tensor:
        """``batch`` times from ``objective.time_sampling``; ``p_mean`` / ``p_std`` replace the config's."""
        device = generator.device if generator is not None else "cpu"
        c = self.cfg
        p_mean, p_std = (c.p_mean, c.p_std) if p_mean is None else (p_mean, p_std)
        return sample_time(batch, c.time_sampling, p_mean, p_std, generator=generator, device=device, path=c.path)

    def prior_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Standard normal noise as the objective's noise prior, ``N(0, noise_scale^2)``: the training
        draws and the sampler's starting point both come through here."""
        return noise * self.cfg.noise_scale if self.cfg.noise_scale != 1.0 else noise

    def draw(self, x0: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None) -> Draw:
        """t, then the noise, then the label-dropout coin, all from ``generator`` (on its device)."""
        t = self.sample_t(x0.shape[0], generator).to(x0.device)
        device = generator.device if generator is not None else x0.device
        noise = self.prior_noise(torch.randn(x0.shape, generator=generator, dtype=torch.float32, device=device))
        return Draw(t=t, noise=noise.to(x0.device, x0.dtype), labels=drop_labels(labels, self.num_classes,
                                                                               self.cfg.label_dropout, generator))

    def loss(
        self,
        net,
        x0: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
        targets: dict[str, torch.Tensor] | None = None,
        draw: Draw | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses of one batch: ``loss`` (what to minimise), ``loss_diffusion``, ``loss_align``, ``align/<enc>``."""
        raise NotImplementedError

    @staticmethod
    def total(diffusion: torch.Tensor, aux) -> dict[str, torch.Tensor]:
        """The loss dict: the objective's own term plus the network's auxiliary (alignment) terms."""
        if aux is None:
            return {"loss": diffusion, "loss_diffusion": diffusion}
        out = {"loss": diffusion + aux.loss, "loss_diffusion": diffusion, "loss_align": aux.loss}
        out.update({f"align/{name}": part for name, part in aux.parts.items()})
        return out

    # ------------------------------------------------------------------ sampling

    def velocity(self, model, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The instantaneous velocity ``dx_t/dt`` at ``(x, t)`` that ODE/SDE samplers integrate."""
        raise NotImplementedError

    def average_velocity(
        self, model, x: torch.Tensor, r: torch.Tensor, t: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """``1/(t - r) * integral_r^t v ds`` (recipes that predict it: ``x_r = x_t - (t - r) u``)."""
        raise ConfigError(f"the {self.kind} objective has no average velocity; use an ODE or SDE sampler")

    def field(self, model) -> ModelField:
        """``model`` as the field samplers integrate (velocity, path, average velocity)."""
        return ModelField(self, model)

    def check_sampler(self, kind: str) -> None:
        """Refuse sampler kinds that do not fit this objective, with the fix."""
        if kind == "sde" and self.cfg.noise_scale != 1.0:
            raise ConfigError("the SDE sampler assumes unit noise (objective.noise_scale 1); use ode-heun or ode-euler")
        if kind in ("sde", "ode-euler", "ode-heun") or kind in self.extra_samplers:
            return
        raise ConfigError(f"the {kind} sampler does not fit a {self.kind} objective")

    def describe(self) -> str:
        c = self.cfg
        what = {"velocity": "velocity", "x": f"clean image (v-loss, t_eps {c.t_eps})"}[c.prediction]
        return f"{self.kind}: {c.path} path, {c.time_sampling} t, predicts the {what}"


class ModelField:
    """A model seen through its objective: what :func:`irepa.diffusion.sample` integrates."""

    def __init__(self, objective: Objective, model):
        self.objective, self.model = objective, model
        self.path = objective.path

    def velocity(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.objective.velocity(self.model, x, t, labels)

    def average_velocity(self, x, r, t, labels) -> torch.Tensor:
        return self.objective.average_velocity(self.model, x, r, t, labels)

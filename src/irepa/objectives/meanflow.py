"""MeanFlow: a network for the *average* velocity, trained through the MeanFlow identity (Geng et al., 2025).

With ``z_t = (1 - t) x + t eps`` and ``v = eps - x``, the average velocity over ``[r, t]`` is
``u(z_t, r, t) = 1/(t - r) * integral_r^t v(z_s, s) ds``; one step from noise is ``x = z_1 - u(z_1, 0, 1)``.
It satisfies ``u = v - (t - r) * du/dt`` with the total derivative along the path
``du/dt = v . d_z u + d_t u``. The training target is therefore

    u_tgt = v - (t - r) * JVP,    (u, JVP) = jvp(u_theta, (z, r, t), (v, 0, 1)),

held fixed (stop-gradient), and the loss is the adaptively weighted squared error
``mean_b w_b ||u_theta - u_tgt||^2`` with ``w = 1 / (||.||^2 + c)^p`` (also held fixed).

Two forms compute the same loss and gradients (``objective.meanflow.jvp``):

* ``two-pass`` (the default): the JVP under ``no_grad`` first, on the bare network (a DDP wrapper's
  forward cannot run inside ``torch.func.jvp``), then an ordinary forward and backward for the gradient,
  which DDP (gradient all-reduce), fused attention kernels and ``torch.compile`` handle as for SiT.
* ``single`` (the reference's form): one forward-mode pass with gradients enabled gives both ``u_theta``
  (the JVP's primal output, which the loss differentiates) and the JVP, then one backward: one forward
  fewer. The whole pass runs on the math attention kernel, eagerly; single-process runs only (DDP
  all-reduces gradients through its wrapper's forward, which cannot run inside the JVP).

Both run the JVP on the math attention kernel, the one with a forward-mode derivative everywhere, and give
linear layers a forward-mode rule for constant weights (:mod:`irepa.objectives.forward_mode`).

``objective.meanflow.precision``: ``fp32`` (the default, as the reference) runs the network calls of the
loss, the JVP, the target and the loss with autocast off; ``autocast`` leaves them under the run's mixed
precision.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from irepa.errors import ConfigError

from .base import MEANFLOW_JVP_FORMS, MEANFLOW_PAIRINGS, MEANFLOW_PRECISIONS, Draw, Objective, ObjectiveConfig
from .forward_mode import constant_weight_linears


def _bcast(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return c.view(-1, *([1] * (like.ndim - 1))).to(like.dtype)


class MeanFlow(Objective):
    kind = "meanflow"
    extra_samplers = ("meanflow",)

    def __init__(self, cfg: ObjectiveConfig, num_classes: int):
        super().__init__(cfg, num_classes)
        if cfg.path != "linear" or cfg.prediction != "velocity":
            raise ConfigError("MeanFlow is defined on the linear path with velocity prediction; "
                              "set objective.path linear and objective.prediction velocity")
        m = cfg.meanflow
        if not 0.0 <= m.ratio <= 1.0:
            raise ConfigError(f"objective.meanflow.ratio must be in [0, 1], got {m.ratio}")
        if m.adaptive_p < 0 or m.adaptive_c <= 0:
            raise ConfigError("objective.meanflow.adaptive_p must be >= 0 and adaptive_c > 0")
        if not 0.0 <= m.cfg_t_low <= m.cfg_t_high <= 1.0:
            raise ConfigError("objective.meanflow needs 0 <= cfg_t_low <= cfg_t_high <= 1")
        if m.precision not in MEANFLOW_PRECISIONS:
            raise ConfigError(f"objective.meanflow.precision {m.precision!r} is unknown; "
                              f"valid: {', '.join(MEANFLOW_PRECISIONS)}")
        if m.pairing not in MEANFLOW_PAIRINGS:
            raise ConfigError(f"objective.meanflow.pairing {m.pairing!r} is unknown; "
                              f"valid: {', '.join(MEANFLOW_PAIRINGS)}")
        if (m.r_p_mean is None) != (m.r_p_std is None) or (m.r_p_std is not None and m.r_p_std <= 0):
            raise ConfigError("objective.meanflow.r_p_mean and r_p_std are set together (r_p_std > 0), or neither",
                              fix="e.g. --objective.meanflow.r_p_mean -4.0 --objective.meanflow.r_p_std 1.6")
        if m.jvp not in MEANFLOW_JVP_FORMS:
            raise ConfigError(f"objective.meanflow.jvp {m.jvp!r} is unknown; valid: {', '.join(MEANFLOW_JVP_FORMS)}")

    # ------------------------------------------------------------------ training

    def draw(self, x0, labels, generator) -> Draw:
        """(t, r) from two draws of the time sampler (the second from r's own distribution when
        ``meanflow.r_p_mean`` is set), paired so that t >= r, then r = t for a ``1 - ratio`` share.

        ``pairing``: ``sorted`` takes t as the larger draw and r as the smaller, then sets r = t;
        ``clamped`` (the PyTorch port's "v1") keeps the first draw as t, sets r = t, then clamps
        r = min(t, r). The share is a count, as in the reference code: the first
        ``floor(B (1 - ratio))`` samples of the batch get r = t (plain flow matching), the rest keep
        their drawn r. The samples of a batch are exchangeable, so which rows is immaterial; a count
        (not a coin per sample) keeps the mix of the two terms the same in every batch.
        """
        base = super().draw(x0, labels, generator)
        m = self.cfg.meanflow
        a = base.t
        b = self.sample_t(x0.shape[0], generator, m.r_p_mean, m.r_p_std).to(x0.device)
        equal = math.floor(x0.shape[0] * (1.0 - m.ratio) + 1e-6)
        same = torch.arange(x0.shape[0], device=x0.device) < equal
        if m.pairing == "sorted":
            t, r = torch.maximum(a, b), torch.minimum(a, b)
            r = torch.where(same, t, r)
        else:
            t = a
            r = torch.minimum(t, torch.where(same, t, b))
        return Draw(t=t, r=r, noise=base.noise, labels=base.labels)

    def mean_flow_target(
        self, model, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """``v - (t - r) * d/dt u(z, r, t)`` with the tangent ``(v, 0, 1)``, stop-gradient.

        ``model(z, t, labels, r=r)`` must return the average velocity (a network call without the
        alignment head).
        """

        def u(z_, r_, t_):
            return model(z_, t_, labels, r=r_)

        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), constant_weight_linears():
            _, dudt = torch.func.jvp(u, (z, r, t), _tangents(v, r, t))
        return _target(v, r, t, dudt)

    def prediction_and_target(self, net, z, r, t, v, labels, targets=None):
        """``(u_theta, aux, u_tgt)`` from one forward-mode pass with gradients enabled (the single-pass form).

        ``u_theta`` is the JVP's primal output: the same values as ``net(z, t, labels, targets, r=r)``,
        differentiable with respect to the parameters, so one backward from the loss trains the network.
        ``aux`` is the alignment head's output of that same forward (or None); the target is stop-gradient.
        """
        from irepa.align.aligner import AlignOutput

        def u(z_, r_, t_):
            pred, aux = net(z_, t_, labels, targets, r=r_)
            return pred, ({} if aux is None else {"loss": aux.loss, "parts": aux.parts})

        with sdpa_kernel(SDPBackend.MATH), constant_weight_linears():
            pred, dudt, aux = torch.func.jvp(u, (z, r, t), _tangents(v, r, t), has_aux=True)
        aux_out = AlignOutput(loss=aux["loss"], parts=aux["parts"]) if aux else None
        return pred, aux_out, _target(v, r, t, dudt)

    def precision_context(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Autocast off for the loss's network calls and arithmetic (``precision: fp32``), or left as it is."""
        if self.cfg.meanflow.precision == "fp32":
            return torch.autocast(device_type=device.type, enabled=False)
        return contextlib.nullcontext()

    @torch.no_grad()
    def guided_velocity(self, model, z, t, v, labels) -> torch.Tensor:
        """Training-time guidance: ``w v + k u(z,t,t|c) + (1 - w - k) u(z,t,t|null)`` where it applies.

        It applies to samples that kept their class and whose t is inside ``[cfg_t_low, cfg_t_high]``;
        the others keep the plain ``v``. With ``w = 1, k = 0`` nothing is evaluated.
        """
        m = self.cfg.meanflow
        if m.cfg_omega == 1.0 and m.cfg_kappa == 0.0:
            return v
        null = torch.full_like(labels, self.num_classes)
        both = model(torch.cat([z, z]), torch.cat([t, t]), torch.cat([labels, null]), r=torch.cat([t, t]))
        u_cond, u_null = both.float().chunk(2)
        guided = m.cfg_omega * v.float() + m.cfg_kappa * u_cond + (1 - m.cfg_omega - m.cfg_kappa) * u_null
        applies = (labels != self.num_classes) & (t >= m.cfg_t_low) & (t <= m.cfg_t_high)
        return torch.where(_bcast(applies, v).bool(), guided.to(v.dtype), v)

    def loss(self, net, x0, labels, generator=None, targets=None, draw: Draw | None = None):
        d = draw if draw is not None else self.draw(x0, labels, generator)
        m = self.cfg.meanflow
        bare = _bare(net)
        if m.jvp == "single" and bare is not net:
            raise ConfigError("objective.meanflow.jvp single cannot run under DistributedDataParallel (its forward "
                              "cannot run inside torch.func.jvp); set objective.meanflow.jvp two-pass")
        with self.precision_context(x0.device):
            z = self.path.sample_xt(x0, d.noise, d.t)
            plain = _plain_call(bare)  # the no-grad calls need no gradient synchronisation
            v = self.guided_velocity(plain, z, d.t, self.path.velocity(x0, d.noise, d.t), d.labels)
            if m.jvp == "single":
                pred, aux, u_target = self.prediction_and_target(net, z, d.r, d.t, v, d.labels, targets)
            else:
                u_target = self.mean_flow_target(plain, z, d.r, d.t, v, d.labels)
                pred, aux = net(z, d.t, d.labels, targets, r=d.r)
            err = (pred.float() - u_target.float()).pow(2).flatten(1).sum(dim=1)
            weight = 1.0 / (err.detach() + m.adaptive_c).pow(m.adaptive_p) if m.adaptive_p > 0 else 1.0
            out = self.total((weight * err).mean(), aux)
        # With p = 1 the weighted loss sits near 1 whatever the error; this is the error itself, per element,
        # on the scale of flow matching's loss (monitoring only).
        out["meanflow/mse"] = err.detach().mean() / pred[0].numel()
        return out

    # ------------------------------------------------------------------ sampling

    def velocity(self, model, x, t, labels):
        return model(x, t, labels, r=t)  # u(z, t, t) is the instantaneous velocity

    def average_velocity(self, model, x, r, t, labels):
        return model(x, t, labels, r=r)


def _tangents(v: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The direction of the total derivative along the path: ``(dz, dr, dt) = (v, 0, 1)``."""
    return v, torch.zeros_like(r), torch.ones_like(t)


def _target(v: torch.Tensor, r: torch.Tensor, t: torch.Tensor, dudt: torch.Tensor) -> torch.Tensor:
    """``v - clip(t - r, 0, 1) * du/dt``, held fixed."""
    return (v - _bcast((t - r).clamp(0.0, 1.0), v) * dudt).detach()


def _bare(net):
    """The network inside a ``DistributedDataParallel`` wrapper (or ``net`` itself)."""
    from torch.nn.parallel import DistributedDataParallel

    return net.module if isinstance(net, DistributedDataParallel) else net


def _plain_call(net):
    """``net`` as a function of ``(x, t, y, r=)`` returning the prediction only (no alignment targets)."""

    def call(x, t, y, r=None):
        return net(x, t, y, None, r=r)[0]

    return call

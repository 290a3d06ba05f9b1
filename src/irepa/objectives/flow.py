"""Flow matching, with the network predicting the velocity (SiT) or the clean image (JiT).

Both minimise the same velocity loss ``mean ||v_hat - v||^2``; they differ in what the network
outputs and how that becomes ``v_hat``:

* ``prediction: velocity`` — the network is the velocity: ``v_hat = net(x_t, t, y)`` and the target
  is the path's ``v = a'_t x_0 + s'_t eps`` (SiT, on the linear or cosine path).
* ``prediction: x`` — the network predicts ``x_hat`` and, on the linear path,
  ``v_hat = (x_t - x_hat) / max(t, t_eps)`` with target ``v = (x_t - x_0) / max(t, t_eps)``: JiT's
  "x-prediction with the v-loss". In JiT's own convention (t = 0 noise, ``z = t x + (1 - t) e``,
  ``v = (x - z) / max(1 - t, t_eps)``) this is the same quantity with the sign of time flipped;
  irepa keeps one convention (t = 0 data) and converts at the edges (docs/recipes.md).
"""

from __future__ import annotations

import torch

from irepa.errors import ConfigError

from .base import Draw, Objective, ObjectiveConfig, squared_error


class FlowMatching(Objective):
    kind = "flow"

    def __init__(self, cfg: ObjectiveConfig, num_classes: int):
        super().__init__(cfg, num_classes)
        if cfg.prediction == "x" and cfg.path != "linear":
            raise ConfigError("objective.prediction x is defined on the linear path; set objective.path linear")

    def _x_to_velocity(self, x_hat: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``(x_t - x_hat) / max(t, t_eps)``: the linear path's velocity implied by a clean-image guess."""
        denom = t.float().clamp_min(self.cfg.t_eps).view(-1, *([1] * (xt.ndim - 1)))
        return (xt.float() - x_hat.float()) / denom

    def loss(self, net, x0, labels, generator=None, targets=None, draw: Draw | None = None):
        d = draw if draw is not None else self.draw(x0, labels, generator)
        xt = self.path.sample_xt(x0, d.noise, d.t)
        pred, aux = net(xt, d.t, d.labels, targets)
        if self.cfg.prediction == "velocity":
            diffusion = squared_error(pred, self.path.velocity(x0, d.noise, d.t))
        else:
            diffusion = squared_error(self._x_to_velocity(pred, xt, d.t), self._x_to_velocity(x0, xt, d.t))
        return self.total(diffusion, aux)

    def velocity(self, model, x, t, labels):
        out = model(x, t, labels)
        if self.cfg.prediction == "velocity":
            return out
        return self._x_to_velocity(out, x, t).to(out.dtype)

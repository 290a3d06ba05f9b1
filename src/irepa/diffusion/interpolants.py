"""Interpolants ``x_t = a_t * x_0 + s_t * eps`` with t = 0 the data and t = 1 pure noise."""

from __future__ import annotations

import math

import torch


def _expand(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return c.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


class Interpolant:
    """A path ``(a_t, s_t)`` and its time derivatives; subclasses define the four coefficients."""

    name = "base"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample_xt(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _expand(self.alpha(t), x0) * x0 + _expand(self.sigma(t), x0) * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Target ``v = a'_t x_0 + s'_t eps`` = d/dt x_t."""
        return _expand(self.d_alpha(t), x0) * x0 + _expand(self.d_sigma(t), x0) * noise

    def score_from_velocity(self, v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Score ``grad log p_t(x)`` implied by a velocity prediction on this path.

        From ``x = a x0 + s eps`` and ``v = a' x0 + s' eps``: ``eps = (a v - a' x) / (a s' - a' s)``
        and ``score = -eps / s``.
        """
        a, s = _expand(self.alpha(t), x), _expand(self.sigma(t), x)
        da, ds = _expand(self.d_alpha(t), x), _expand(self.d_sigma(t), x)
        eps = (a * v - da * x) / (a * ds - da * s)
        return -eps / s


class LinearInterpolant(Interpolant):
    """Rectified-flow path: ``a_t = 1 - t``, ``s_t = t``."""

    name = "linear"

    def alpha(self, t):
        return 1 - t

    def sigma(self, t):
        return t

    def d_alpha(self, t):
        return -torch.ones_like(t)

    def d_sigma(self, t):
        return torch.ones_like(t)


class CosineInterpolant(Interpolant):
    """Trigonometric (variance-preserving) path: ``a_t = cos(pi t / 2)``, ``s_t = sin(pi t / 2)``."""

    name = "cosine"

    def alpha(self, t):
        return torch.cos(t * math.pi / 2)

    def sigma(self, t):
        return torch.sin(t * math.pi / 2)

    def d_alpha(self, t):
        return -math.pi / 2 * torch.sin(t * math.pi / 2)

    def d_sigma(self, t):
        return math.pi / 2 * torch.cos(t * math.pi / 2)


INTERPOLANTS = {"linear": LinearInterpolant, "cosine": CosineInterpolant}


def get_interpolant(name: str) -> Interpolant:
    if name not in INTERPOLANTS:
        raise ValueError(f"unknown path {name!r}; valid: {', '.join(INTERPOLANTS)}")
    return INTERPOLANTS[name]()

"""Training-time distributions over t in [0, 1] (t = 0 data, t = 1 noise)."""

from __future__ import annotations

import math

import torch

TIME_SAMPLERS = ("uniform", "lognormal")


def sample_time(
    batch: int,
    kind: str = "uniform",
    p_mean: float = 0.0,
    p_std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    path: str = "linear",
) -> torch.Tensor:
    """``uniform``: t ~ U[0, 1]. ``lognormal``: sigma = exp(n), n ~ N(p_mean, p_std), mapped to the t of ``path``
    whose noise-to-signal ratio s_t / a_t is sigma: ``t = sigma / (1 + sigma)`` on the linear path (a
    logit-normal t), ``t = 2/pi * atan(sigma)`` on the cosine path (as the SiT reference does).

    Draws happen on the generator's device (so a CUDA generator never round-trips through the host)
    and the result is moved to ``device``.
    """
    where = generator.device if generator is not None else device
    if kind == "uniform":
        t = torch.rand(batch, generator=generator, device=where)
    elif kind == "lognormal":
        n = torch.randn(batch, generator=generator, device=where) * p_std + p_mean
        sigma = n.exp()
        if path == "linear":
            t = sigma / (1 + sigma)
        elif path == "cosine":
            t = torch.atan(sigma) * (2 / math.pi)
        else:
            raise ValueError(f"log-normal time sampling knows the linear and cosine paths, not {path!r}")
    else:
        raise ValueError(f"unknown time sampling {kind!r}; valid: {', '.join(TIME_SAMPLERS)}")
    return t.to(device)

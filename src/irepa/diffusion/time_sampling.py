"""Training-time distributions over t in [0, 1] (t = 0 data, t = 1 noise)."""

from __future__ import annotations

import torch

TIME_SAMPLERS = ("uniform", "lognormal")


def sample_time(
    batch: int,
    kind: str = "uniform",
    p_mean: float = -1.2,
    p_std: float = 1.2,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    path: str = "linear",
) -> torch.Tensor:
    """``uniform``: t ~ U[0, 1]. ``lognormal``: sigma = exp(n), n ~ N(p_mean, p_std), t = sigma / (1 + sigma).

    Draws happen on the generator's device (so a CUDA generator never round-trips through the host)
    and the result is moved to ``device``.
    """
    where = generator.device if generator is not None else device
    if kind == "uniform":
        t = torch.rand(batch, generator=generator, device=where)
    elif kind == "lognormal":
        n = torch.randn(batch, generator=generator, device=where) * p_std + p_mean
        sigma = n.exp()
        t = sigma / (1 + sigma)
    else:
        raise ValueError(f"unknown time sampling {kind!r}; valid: {', '.join(TIME_SAMPLERS)}")
    return t.to(device)

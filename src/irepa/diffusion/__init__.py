"""Flow-matching primitives: interpolants, time sampling and the ODE / SDE / MeanFlow samplers.

The objectives that compose them into training recipes live in :mod:`irepa.objectives`.
"""

from .interpolants import INTERPOLANTS, CosineInterpolant, Interpolant, LinearInterpolant, get_interpolant
from .samplers import SAMPLERS, SamplerConfig, guided_velocity, per_sample_noise, sample
from .time_sampling import TIME_SAMPLERS, sample_time

__all__ = [
    "INTERPOLANTS",
    "CosineInterpolant",
    "Interpolant",
    "LinearInterpolant",
    "get_interpolant",
    "SAMPLERS",
    "SamplerConfig",
    "guided_velocity",
    "per_sample_noise",
    "sample",
    "TIME_SAMPLERS",
    "sample_time",
]

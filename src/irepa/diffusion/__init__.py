"""Flow matching: interpolants, time sampling, the velocity loss and ODE/SDE samplers."""

from .interpolants import INTERPOLANTS, CosineInterpolant, Interpolant, LinearInterpolant, get_interpolant
from .loss import FlowBatch, drop_labels, make_flow_batch, velocity_loss
from .samplers import SAMPLERS, SamplerConfig, guided_velocity, per_sample_noise, sample
from .time_sampling import TIME_SAMPLERS, sample_time

__all__ = [
    "INTERPOLANTS",
    "CosineInterpolant",
    "Interpolant",
    "LinearInterpolant",
    "get_interpolant",
    "FlowBatch",
    "drop_labels",
    "make_flow_batch",
    "velocity_loss",
    "SAMPLERS",
    "SamplerConfig",
    "guided_velocity",
    "per_sample_noise",
    "sample",
    "TIME_SAMPLERS",
    "sample_time",
]

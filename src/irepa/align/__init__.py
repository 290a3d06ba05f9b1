"""Representation alignment: target normalisation, projectors, loss and the Aligner head."""

from .aligner import Aligner, AlignOutput
from .loss import alignment_loss
from .normalize import NORMS, normalize_target, spatial_zscore
from .projectors import PROJECTORS, build_projector
from .targets import match_grid, resample_tokens

__all__ = [
    "Aligner",
    "AlignOutput",
    "alignment_loss",
    "NORMS",
    "normalize_target",
    "spatial_zscore",
    "PROJECTORS",
    "build_projector",
    "match_grid",
    "resample_tokens",
]

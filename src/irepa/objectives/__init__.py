"""Training objectives: flow matching (velocity or clean-image prediction) and MeanFlow.

``build_objective(cfg.objective, num_classes)`` returns the :class:`Objective` a run trains with;
samplers, evaluation and diagnostics rebuild it from the config stored in every checkpoint.
"""

from __future__ import annotations

from .base import Draw, MeanFlowConfig, Objective, ObjectiveConfig, drop_labels, squared_error
from .flow import FlowMatching
from .meanflow import MeanFlow

OBJECTIVES: dict[str, type[Objective]] = {"flow": FlowMatching, "meanflow": MeanFlow}


def build_objective(cfg: ObjectiveConfig, num_classes: int) -> Objective:
    """The objective described by ``cfg`` for a model with ``num_classes`` classes (+ the null class)."""
    cfg.validate()
    return OBJECTIVES[cfg.kind](cfg, num_classes)


__all__ = [
    "OBJECTIVES",
    "Draw",
    "FlowMatching",
    "MeanFlow",
    "MeanFlowConfig",
    "Objective",
    "ObjectiveConfig",
    "build_objective",
    "drop_labels",
    "squared_error",
]

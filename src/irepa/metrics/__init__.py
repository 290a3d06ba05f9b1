"""Spatial-structure metrics of encoder patch tokens (LDS, CDS, SRSS, RMSC) and their registry.

>>> from irepa.metrics import compute_metrics
>>> values = compute_metrics(tokens, 16, 16, ["lds", "cds", "rmsc"])  # {name: Tensor[B]}
"""

from irepa.metrics.grid import TokenGrid
from irepa.metrics.registry import (
    MetricSpec,
    compute_metrics,
    get_metric,
    list_metrics,
    register_metric,
    unregister_metric,
)
from irepa.metrics.spatial import cds, lds, rmsc, srss

__all__ = [
    "MetricSpec",
    "TokenGrid",
    "cds",
    "compute_metrics",
    "get_metric",
    "lds",
    "list_metrics",
    "register_metric",
    "rmsc",
    "srss",
    "unregister_metric",
]

"""A name -> metric registry, so a new per-image metric is one decorated function.

A metric takes a :class:`~irepa.metrics.grid.TokenGrid` (plus keyword options) and returns one value
per image, ``Tensor[B]``::

    @register_metric("mean_norm", higher_is_better=False)
    def mean_norm(grid):
        return grid.tokens.float().norm(dim=-1).mean(dim=1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from irepa.metrics.grid import DEFAULT_CHUNK_BYTES, TokenGrid

MetricFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: its function and how to read its value."""

    name: str
    fn: MetricFn
    higher_is_better: bool = True
    needs_masks: bool = False
    description: str = ""


_METRICS: dict[str, MetricSpec] = {}


def register_metric(
    name: str,
    *,
    higher_is_better: bool = True,
    needs_masks: bool = False,
    description: str | None = None,
    overwrite: bool = False,
) -> Callable[[MetricFn], MetricFn]:
    """Decorator registering ``fn(grid: TokenGrid, **options) -> Tensor[B]`` under ``name``."""

    def decorate(fn: MetricFn) -> MetricFn:
        if name in _METRICS and not overwrite:
            raise ValueError(f"metric {name!r} is already registered; pass overwrite=True to replace it")
        if not name or any(c in name for c in ", \t\n"):
            raise ValueError(f"metric name {name!r} must be non-empty without commas or spaces")
        doc = description if description is not None else (fn.__doc__ or "").strip().split("\n")[0]
        _METRICS[name] = MetricSpec(name, fn, higher_is_better, needs_masks, doc)
        return fn

    return decorate


def unregister_metric(name: str) -> None:
    """Remove a metric (mainly for tests and interactive use)."""
    get_metric(name)
    del _METRICS[name]


def list_metrics() -> list[str]:
    """Names of the registered metrics, in registration order."""
    return list(_METRICS)


def get_metric(name: str) -> MetricSpec:
    """The spec of ``name``; the error lists the valid names."""
    try:
        return _METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; valid: {', '.join(_METRICS)}") from None


def compute_metrics(
    tokens: torch.Tensor,
    H: int,
    W: int,
    names: Iterable[str] | None = None,
    masks: torch.Tensor | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> dict[str, torch.Tensor]:
    """Per-image values ``{name: Tensor[B]}`` of several metrics, sharing the pairwise work.

    ``names=None`` computes every registered metric that the inputs allow (mask metrics only when
    ``masks`` is given). ``params`` maps a metric name to its keyword options, e.g.
    ``{"lds": {"far_dist": 4}}``.
    """
    grid = TokenGrid(tokens, H, W, masks=masks, max_chunk_bytes=max_chunk_bytes)
    if names is None:
        selected = [n for n, s in _METRICS.items() if masks is not None or not s.needs_masks]
    else:
        selected = list(names)
    params = dict(params or {})
    unknown = sorted(set(params) - set(selected))
    if unknown:
        raise ValueError(f"options given for metrics that are not computed: {', '.join(unknown)}")
    out: dict[str, torch.Tensor] = {}
    for name in selected:
        spec = get_metric(name)
        if spec.needs_masks and masks is None:
            raise ValueError(f"metric {name!r} needs foreground masks (B, T) bool; pass masks=...")
        out[name] = spec.fn(grid, **dict(params.get(name, {})))
    return out

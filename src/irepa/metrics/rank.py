"""Rank candidate encoders by one metric of a summary table, best first."""

from __future__ import annotations

import math
from typing import Any

from irepa.metrics.registry import get_metric


def rank_encoders(rows: list[dict[str, Any]], by: str, higher_is_better: bool | None = None) -> list[dict[str, Any]]:
    """Rows ``rank, encoder, <by>, ci_low, ci_high`` sorted best first; NaN values go last.

    The direction comes from the metric's registration (higher LDS / CDS / SRSS / RMSC is better)
    unless ``higher_is_better`` is given.
    """
    column = f"{by}_mean"
    if not rows:
        raise ValueError("the metric table has no rows")
    if column not in rows[0]:
        have = [c[: -len("_mean")] for c in rows[0] if c.endswith("_mean")]
        raise ValueError(f"no column {column!r} in the table; metrics there: {', '.join(have) or 'none'}")
    if higher_is_better is None:
        try:
            higher_is_better = get_metric(by).higher_is_better
        except KeyError:
            raise ValueError(f"{by!r} is not a registered metric; say which way is better with --order") from None

    def key(row: dict[str, Any]) -> tuple[bool, float]:
        v = float(row[column])
        if math.isnan(v):
            return (True, 0.0)
        return (False, -v if higher_is_better else v)

    ranked = []
    for i, row in enumerate(sorted(rows, key=key), start=1):
        ranked.append(
            {
                "rank": i,
                "encoder": row["encoder"],
                by: float(row[column]),
                "ci_low": float(row.get(f"{by}_ci_low", math.nan)),
                "ci_high": float(row.get(f"{by}_ci_high", math.nan)),
            }
        )
    return ranked

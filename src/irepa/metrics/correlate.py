"""How well does each encoder metric predict generation FID? Correlations across encoders.

Inputs are three small tables keyed by encoder: the summary CSV of ``irepa metrics spatial``
(columns ``<metric>_mean``), a FID table (``encoder,fid``) and optionally a linear-probe table
(``encoder,accuracy``). Every metric is correlated with FID (Pearson, Spearman, Kendall), with
bootstrap intervals from resampling encoders.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from irepa.metrics.stats import CORRELATIONS, bootstrap_correlation
from irepa.metrics.tables import read_csv

PROBE_NAME = "probe_accuracy"


def _by_encoder(rows: list[dict[str, Any]], path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    if "encoder" not in rows[0]:
        raise ValueError(f"{path} has no 'encoder' column (columns: {', '.join(rows[0])})")
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = str(row["encoder"])
        if name in out:
            raise ValueError(f"{path} lists encoder {name!r} twice")
        out[name] = row
    return out


def _number_column(rows: dict[str, dict[str, Any]], column: str, path: str | os.PathLike) -> dict[str, float]:
    out = {}
    for enc, row in rows.items():
        value = row.get(column)
        if not isinstance(value, (int, float)):
            raise ValueError(f"{path}: {column} of encoder {enc!r} is {value!r}, not a number")
        out[enc] = float(value)
    return out


def _pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], path) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{path} has no column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    lower = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    raise ValueError(f"{path} needs one of the columns {', '.join(candidates)} (columns: {', '.join(columns)})")


def read_metric_table(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """``{metric: {encoder: mean}}`` from a summary CSV (every ``<metric>_mean`` column)."""
    rows = _by_encoder(read_csv(path), path)
    columns = list(next(iter(rows.values())))
    metrics = [c[: -len("_mean")] for c in columns if c.endswith("_mean")]
    if not metrics:
        raise ValueError(f"{path} has no '<metric>_mean' columns; write it with 'irepa metrics spatial'")
    return {m: _number_column(rows, f"{m}_mean", path) for m in metrics}


def read_score_table(
    path: str | os.PathLike, column: str | None = None, candidates: tuple[str, ...] = ("fid", "gfid")
) -> dict[str, float]:
    """``{encoder: value}`` of one numeric column (by default the FID column)."""
    rows = _by_encoder(read_csv(path), path)
    col = _pick_column(list(next(iter(rows.values()))), column, candidates, path)
    return _number_column(rows, col, path)


def check_same_encoders(tables: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The common encoder list (sorted); a ``ValueError`` listing what each table misses otherwise."""
    names = {label: set(t) for label, t in tables.items()}
    union = set().union(*names.values())
    problems = [f"{label} lacks {', '.join(sorted(union - have))}" for label, have in names.items() if union - have]
    if problems:
        raise ValueError("encoders differ between the tables: " + "; ".join(problems))
    return sorted(union)


def correlate_with_fid(
    metrics: Mapping[str, Mapping[str, float]],
    fid: Mapping[str, float],
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per metric: each correlation with FID, its bootstrap interval and p-value.

    Encoders whose metric is NaN (e.g. SRSS without masks) are left out of that metric's row and
    counted in ``n_dropped``.
    """
    rows = []
    for name, values in metrics.items():
        encoders = [e for e in fid if math.isfinite(values[e])]
        x = np.array([values[e] for e in encoders])
        y = np.array([fid[e] for e in encoders])
        row: dict[str, Any] = {"metric": name, "n_encoders": len(encoders), "n_dropped": len(fid) - len(encoders)}
        for kind in CORRELATIONS:
            if len(encoders) < 3 or np.ptp(x) == 0:
                est_vals, p = (math.nan, math.nan, math.nan), math.nan
            else:
                est, p = bootstrap_correlation(x, y, kind, n_boot=n_boot, level=level, seed=seed)
                est_vals = (est.value, est.ci_low, est.ci_high)
            row[f"{kind}_r"], row[f"{kind}_ci_low"], row[f"{kind}_ci_high"] = est_vals
            row[f"{kind}_p"] = p
        rows.append(row)
    return rows


def correlation_columns() -> list[str]:
    cols = ["metric", "n_encoders", "n_dropped"]
    for kind in CORRELATIONS:
        cols += [f"{kind}_r", f"{kind}_ci_low", f"{kind}_ci_high", f"{kind}_p"]
    return cols

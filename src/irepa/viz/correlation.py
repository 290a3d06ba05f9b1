"""Scatter panels: one metric against FID per panel, encoders labelled, correlation in the corner."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from irepa.viz.figures import new_figure


def plot_metric_vs_fid(
    metrics: Mapping[str, Mapping[str, float]],
    fid: Mapping[str, float],
    stats: Sequence[Mapping[str, Any]] = (),
    y_label: str = "FID",
    ncols: int = 4,
) -> Figure:
    """One panel per metric (x) against FID (y); ``stats`` rows from ``correlate_with_fid`` add r."""
    by_metric = {row["metric"]: row for row in stats}
    names = list(metrics)
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig = new_figure(3.4 * ncols, 3.0 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        encoders = [e for e in fid if math.isfinite(metrics[name][e])]
        x = np.array([metrics[name][e] for e in encoders])
        y = np.array([fid[e] for e in encoders])
        ax.scatter(x, y, s=22, color="tab:blue", zorder=3)
        for e, xi, yi in zip(encoders, x, y):
            ax.annotate(e, (xi, yi), xytext=(3, 3), textcoords="offset points", fontsize=6.5)
        if len(x) >= 2 and np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 50)
            ax.plot(xs, slope * xs + intercept, "--", color="tab:gray", lw=1, zorder=2)
        row = by_metric.get(name)
        if row is not None and math.isfinite(row.get("pearson_r", math.nan)):
            text = f"r = {row['pearson_r']:.2f}\n[{row['pearson_ci_low']:.2f}, {row['pearson_ci_high']:.2f}]"
            # The empty upper corner: top-right for a falling trend, top-left for a rising one.
            x_text, ha = (0.97, "right") if row["pearson_r"] < 0 else (0.03, "left")
            box = {"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.85}
            ax.text(x_text, 0.96, text, transform=ax.transAxes, ha=ha, va="top", fontsize=8, bbox=box)
            if len(y) and np.ptp(y) > 0:  # head-room so the box sits above the points
                ax.set_ylim(y.min() - 0.08 * np.ptp(y), y.max() + 0.35 * np.ptp(y))
        ax.set_xlabel(name)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    return fig

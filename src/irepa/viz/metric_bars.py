"""Bar chart of dataset-mean metrics per encoder, with their bootstrap intervals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from irepa.viz.figures import new_figure


def plot_metric_bars(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> Figure:
    """One panel per metric, one horizontal bar per encoder (summary rows of ``metrics spatial``)."""
    encoders = [str(r["encoder"]) for r in rows]
    fig = new_figure(3.2 * len(metrics), 0.8 + 0.35 * len(encoders))
    axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)).ravel()
    ypos = np.arange(len(encoders))
    for ax, name in zip(axes, metrics):
        mean = np.array([float(r[f"{name}_mean"]) for r in rows])
        lo = np.array([float(r[f"{name}_ci_low"]) for r in rows])
        hi = np.array([float(r[f"{name}_ci_high"]) for r in rows])
        finite = np.isfinite(mean)
        err = np.vstack([np.where(finite, mean - lo, 0), np.where(finite, hi - mean, 0)])
        ax.barh(ypos, np.where(finite, mean, 0), xerr=err, color="tab:blue", alpha=0.8, capsize=2)
        for y, ok in zip(ypos, finite):
            if not ok:
                ax.text(0, y, " n/a", va="center", fontsize=7, color="0.4")
        ax.set_yticks(ypos, encoders if ax is axes[0] else [""] * len(encoders))
        ax.invert_yaxis()
        missing = int((~finite).sum())
        skipped = [int(r[f"{name}_n_skipped"]) for r in rows if f"{name}_n_skipped" in r]
        note = f"{missing} n/a" if missing else ""
        if skipped and max(skipped) > 0:
            n_images = max(int(r.get("n_images", 0)) for r in rows)
            note = ", ".join(filter(None, [note, f"up to {max(skipped)} of {n_images} images skipped"]))
        ax.set_title(name + (f"\n({note})" if note else ""), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    return fig

"""Figure creation and atomic saving without pyplot's global state (safe in scripts and tests)."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from irepa.utils.io import atomic_path

FORMATS = (".png", ".pdf", ".svg", ".jpg")


def new_figure(width: float, height: float) -> Figure:
    """A figure drawn by the Agg canvas (no display needed)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) via a temporary file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"unsupported figure format {path.suffix!r}; use one of {', '.join(FORMATS)}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix[1:], dpi=dpi)
    return path

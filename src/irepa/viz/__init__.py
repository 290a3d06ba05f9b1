"""Pictures: spatial-normalisation maps, metric bars and metric-vs-FID scatter panels."""

from irepa.viz.correlation import plot_metric_vs_fid
from irepa.viz.figures import new_figure, save_figure
from irepa.viz.metric_bars import plot_metric_bars
from irepa.viz.spatial_norm import SpatialNormRow, cosine_map, draw_spatial_norm, pca_rgb, spatial_norm_row

__all__ = [
    "SpatialNormRow",
    "cosine_map",
    "draw_spatial_norm",
    "new_figure",
    "pca_rgb",
    "plot_metric_bars",
    "plot_metric_vs_fid",
    "save_figure",
    "spatial_norm_row",
]

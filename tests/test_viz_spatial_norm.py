"""The spatial-normalisation picture: its maps against direct computations, and the command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_metrics_cli import FakeZoo, run_cli, zoo  # noqa: F401  (zoo is a fixture)

from irepa.viz.spatial_norm import draw_spatial_norm, pca_rgb, spatial_norm_row


def numpy_cos(tokens: np.ndarray, anchor: int) -> np.ndarray:
    u = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    return u @ u[anchor]


def test_maps_match_direct_computation() -> None:
    h, w, D, alpha = 5, 7, 12, 0.6
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(h * w, D, generator=g) + 3 * torch.randn(1, D, generator=g)  # strong global part
    row = spatial_norm_row("enc", tokens, (h, w), anchor=(2, 3), alpha=alpha)
    y = tokens.double().numpy()
    z = (y - alpha * y.mean(axis=0)) / (y.std(axis=0, ddof=1) + 1e-6)
    np.testing.assert_allclose(row.raw_cos, numpy_cos(y, 2 * w + 3).reshape(h, w), atol=1e-5)
    np.testing.assert_allclose(row.norm_cos, numpy_cos(z, 2 * w + 3).reshape(h, w), atol=1e-5)
    # The global component makes raw similarities high; a full z-score removes it, alpha=0.6 part of it.
    full = spatial_norm_row("enc", tokens, (h, w), anchor=(2, 3), alpha=1.0)
    assert row.raw_cos.mean() > row.norm_cos.mean() + 0.1
    assert row.norm_cos.mean() > full.norm_cos.mean() + 0.3
    assert row.raw_pca.shape == (h, w, 3) and row.norm_pca.shape == (h, w, 3)
    assert row.raw_pca.min() >= 0 and row.raw_pca.max() <= 1


def test_pca_first_component_follows_structure() -> None:
    h, w = 6, 8
    left = torch.zeros(h, w, dtype=torch.bool)
    left[:, : w // 2] = True
    g = torch.Generator().manual_seed(1)
    tokens = 0.05 * torch.randn(h * w, 10, generator=g)
    tokens[left.reshape(-1), 0] += 2.0
    red = pca_rgb(tokens, (h, w))[..., 0]
    assert abs(red[left].mean() - red[~left].mean()) > 0.8


def test_anchor_and_shape_errors() -> None:
    with pytest.raises(ValueError, match="outside the 4x4"):
        spatial_norm_row("e", torch.randn(16, 3), (4, 4), anchor=(4, 0), alpha=1.0)
    with pytest.raises(ValueError, match="T=16"):
        spatial_norm_row("e", torch.randn(15, 3), (4, 4), anchor=(0, 0), alpha=1.0)


def test_draw_has_one_row_per_encoder() -> None:
    rows = [spatial_norm_row(f"e{k}", torch.randn(16, 4), (4, 4), (1, 1), 1.0) for k in range(3)]
    fig = draw_spatial_norm(torch.rand(3, 20, 30), rows, (1, 1), 1.0)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 3 * 5


def test_spatial_norm_command(tmp_path: Path, zoo: FakeZoo, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    out = tmp_path / "fig.png"
    argv = [
        "viz",
        "spatial-norm",
        "--encoders",
        "tiny-a,tiny-b",
        "--image",
        "skimage:chelsea",
        "--anchor",
        "2,5",
        "--alpha",
        "0.6",
        "--grid",
        "8",
        "--out",
        str(out),
    ]
    assert run_cli(argv) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > im.height
    assert [load[0] for load in zoo.loads] == ["tiny-a", "tiny-b"]
    argv[argv.index("2,5")] = "9,0"
    assert run_cli(argv) == 2
    assert "outside the 8x8" in capsys.readouterr().err
    assert len(zoo.loads) == 2  # rejected before loading any encoder

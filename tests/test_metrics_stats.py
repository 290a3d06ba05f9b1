"""Bootstrap intervals, correlations, the linear probe and token masks, against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_metrics_cli import naive_token_mask

from irepa.metrics.correlate import check_same_encoders, correlate_with_fid
from irepa.metrics.probe import train_linear_probe
from irepa.metrics.sources import open_source, token_masks
from irepa.metrics.stats import bootstrap_correlation, bootstrap_mean


def test_bootstrap_mean_interval() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(2.0, 1.5, 400)
    est = bootstrap_mean(v, n_boot=2000, seed=1)
    assert est.value == pytest.approx(v.mean())
    assert est.ci_low < est.value < est.ci_high
    normal_width = 2 * 1.96 * v.std(ddof=1) / math.sqrt(len(v))
    assert (est.ci_high - est.ci_low) == pytest.approx(normal_width, rel=0.15)
    assert bootstrap_mean(v, n_boot=500, seed=1) == bootstrap_mean(v, n_boot=500, seed=1)
    assert bootstrap_mean(v, n_boot=500, seed=1) != bootstrap_mean(v, n_boot=500, seed=2)


def test_bootstrap_mean_drops_nan() -> None:
    v = np.array([1.0, np.nan, 3.0, np.nan, 5.0])
    est = bootstrap_mean(v, n_boot=300)
    assert est.value == pytest.approx(3.0) and est.n == 3
    assert 1.0 <= est.ci_low <= est.ci_high <= 5.0
    empty = bootstrap_mean(np.array([np.nan, np.nan]))
    assert math.isnan(empty.value) and empty.n == 0


def test_bootstrap_correlation() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=12)
    y = -2 * x + rng.normal(scale=0.5, size=12)
    for kind in ("pearson", "spearman", "kendall"):
        est, p = bootstrap_correlation(x, y, kind, n_boot=400)
        assert est.ci_low <= est.value <= est.ci_high <= 0
        assert p < 0.01
    with pytest.raises(ValueError, match="at least 3"):
        bootstrap_correlation(x[:2], y[:2], "pearson")


def test_correlate_drops_nan_encoders() -> None:
    fid = {"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0}
    metrics = {"lds": {"a": 4.0, "b": 3.0, "c": 1.0, "d": 2.0}, "srss": {"a": 1.0, "b": math.nan, "c": 0.5, "d": 0.1}}
    rows = {r["metric"]: r for r in correlate_with_fid(metrics, fid, n_boot=100)}
    assert rows["srss"]["n_encoders"] == 3 and rows["srss"]["n_dropped"] == 1
    assert rows["srss"]["pearson_r"] == pytest.approx(np.corrcoef([1.0, 0.5, 0.1], [10, 30, 40])[0, 1])
    assert rows["lds"]["n_encoders"] == 4


def test_check_same_encoders() -> None:
    assert check_same_encoders({"m": {"a": 1, "b": 2}, "f": {"b": 1, "a": 3}}) == ["a", "b"]
    with pytest.raises(ValueError, match="f lacks c"):
        check_same_encoders({"m": {"a": 1, "c": 2}, "f": {"a": 1}})


def test_probe_separable_and_random_labels() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(4, 20))
    y_tr, y_te = rng.integers(0, 4, 400), rng.integers(0, 4, 400)
    x_tr = centres[y_tr] + rng.normal(size=(400, 20))
    x_te = centres[y_te] + rng.normal(size=(400, 20))
    res = train_linear_probe(x_tr, y_tr, x_te, y_te, seed=0)
    assert res.accuracy > 0.9 and res.n_classes == 4  # chance is 0.25
    again = train_linear_probe(x_tr, y_tr, x_te, y_te, seed=0)
    assert again.accuracy == res.accuracy
    # Labels unrelated to the features: the test accuracy stays near chance.
    shuffled = train_linear_probe(x_tr, rng.permutation(y_tr), x_te, y_te, seed=0)
    assert shuffled.accuracy < 0.4
    with pytest.raises(ValueError, match="same D"):
        train_linear_probe(x_tr, y_tr, x_te[:, :5], y_te)


@pytest.mark.parametrize("shape,grid", [((37, 50), (8, 8)), ((40, 40), (6, 9)), ((28, 28), (16, 16))])
def test_token_masks_match_naive(shape: tuple[int, int], grid: tuple[int, int]) -> None:
    rng = np.random.default_rng(2)
    mask = rng.random(shape) < 0.03
    got = token_masks(torch.from_numpy(mask), grid).numpy()
    if grid[0] == grid[1]:
        np.testing.assert_array_equal(got, naive_token_mask(mask, grid[0]))
    else:
        H, W = shape
        want = np.zeros(grid, dtype=bool)
        for i in range(grid[0]):
            for j in range(grid[1]):
                rows = slice(math.floor(i * H / grid[0]), math.ceil((i + 1) * H / grid[0]))
                cols = slice(math.floor(j * W / grid[1]), math.ceil((j + 1) * W / grid[1]))
                want[i, j] = mask[rows, cols].any()
        np.testing.assert_array_equal(got, want.reshape(-1))


def test_open_source_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="fashion-mnist, skimage"):
        open_source(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="no images"):
        open_source(str(tmp_path))
    with pytest.raises(ValueError, match="no class labels"):
        open_source("skimage", labelled=True)
    src = open_source("skimage", n=100)
    assert len(src) == 17 and any("using all of them" in n for n in src.notes)

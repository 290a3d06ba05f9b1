"""Spatial metrics against naive per-pair loops, plus the registry and the chunked path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from irepa.metrics import (
    TokenGrid,
    cds,
    compute_metrics,
    lds,
    list_metrics,
    register_metric,
    rmsc,
    srss,
    unregister_metric,
)

GRIDS = [(6, 6), (5, 7), (9, 4)]


# ---------------------------------------------------------------- naive references (explicit loops)
def _unit(tok: np.ndarray) -> np.ndarray:
    tok = tok.astype(np.float64)
    return tok / np.linalg.norm(tok, axis=1, keepdims=True)


def _dist(i: int, j: int, W: int) -> int:
    return abs(i // W - j // W) + abs(i % W - j % W)


def naive_lds(tok: np.ndarray, H: int, W: int, far_dist: int = 6) -> float:
    u = _unit(tok)
    near, far = [], []
    for i in range(H * W):
        for j in range(H * W):
            d = _dist(i, j, W)
            if d == 1:
                near.append(u[i] @ u[j])
            elif d >= far_dist:
                far.append(u[i] @ u[j])
    return float(np.mean(near) - np.mean(far))


def naive_cds(tok: np.ndarray, H: int, W: int, dmax: int = 8) -> float:
    u = _unit(tok)
    by_d: dict[int, list[float]] = {d: [] for d in range(1, dmax + 1)}
    for i in range(H * W):
        for j in range(H * W):
            d = _dist(i, j, W)
            if 1 <= d <= dmax:
                by_d[d].append(u[i] @ u[j])
    ds = np.arange(1, dmax + 1)
    means = np.array([np.mean(by_d[d]) for d in ds])
    return float(-np.polyfit(ds, means, 1)[0])


def naive_srss(tok: np.ndarray, mask: np.ndarray, H: int, W: int, d_pos: int = 1, d_neg: int = 6) -> float:
    u = _unit(tok)
    per_anchor = []
    for i in range(H * W):
        if not mask[i]:
            continue
        pos = [u[i] @ u[j] for j in range(H * W) if mask[j] and 1 <= _dist(i, j, W) <= d_pos]
        neg = [u[i] @ u[j] for j in range(H * W) if not mask[j] and _dist(i, j, W) >= d_neg]
        if pos and neg:
            per_anchor.append(np.mean(pos) - np.mean(neg))
    return float(np.mean(per_anchor)) if per_anchor else math.nan


def naive_rmsc(tok: np.ndarray) -> float:
    u = _unit(tok)
    centred = u - u.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(centred**2, axis=1))))


# ---------------------------------------------------------------- token generators
def smooth_field(B: int, H: int, W: int, D: int, sigma: float, seed: int) -> torch.Tensor:
    """Gaussian-blurred noise on the grid, channel by channel: neighbouring tokens are similar."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((B, H, W, D))
    field = np.stack([gaussian_filter(n, sigma=(sigma, sigma, 0), mode="wrap") for n in noise])
    return torch.from_numpy(field.reshape(B, H * W, D)).float()


def structured_tokens(B: int, H: int, W: int, D: int, seed: int) -> torch.Tensor:
    """A shared global component + a blob-shaped object + noise: what real encoders look like."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    blob = (((ys - H / 2) ** 2 + (xs - W / 2) ** 2) < (min(H, W) / 3) ** 2).reshape(-1).float()
    glob = torch.randn(B, 1, D, generator=g) * 2.0
    obj = torch.randn(B, 1, D, generator=g)
    return glob + blob[None, :, None] * obj + 0.5 * torch.randn(B, H * W, D, generator=g)


def random_masks(B: int, T: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    density = torch.linspace(0.05, 0.95, B)[:, None]
    return torch.rand(B, T, generator=g) < density


# ---------------------------------------------------------------- agreement with the naive loops
@pytest.mark.parametrize("H,W", GRIDS)
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_lds_cds_rmsc_match_naive(H: int, W: int, kind: str) -> None:
    B, D = 3, 12
    tok = torch.randn(B, H * W, D, generator=torch.Generator().manual_seed(1))
    if kind == "structured":
        tok = structured_tokens(B, H, W, D, seed=2)
    got_lds, got_cds, got_rmsc = lds(tok, H, W), cds(tok, H, W), rmsc(tok, H, W)
    for b in range(B):
        t = tok[b].numpy()
        assert got_lds[b].item() == pytest.approx(naive_lds(t, H, W), abs=1e-4)
        assert got_cds[b].item() == pytest.approx(naive_cds(t, H, W), abs=1e-4)
        assert got_rmsc[b].item() == pytest.approx(naive_rmsc(t), abs=1e-4)


@pytest.mark.parametrize("H,W", GRIDS)
def test_options_match_naive(H: int, W: int) -> None:
    tok = structured_tokens(2, H, W, 8, seed=5)
    got_lds = lds(tok, H, W, far_dist=3)
    got_cds = cds(tok, H, W, dmax=4)
    for b in range(2):
        t = tok[b].numpy()
        assert got_lds[b].item() == pytest.approx(naive_lds(t, H, W, far_dist=3), abs=1e-4)
        assert got_cds[b].item() == pytest.approx(naive_cds(t, H, W, dmax=4), abs=1e-4)


@pytest.mark.parametrize("H,W", GRIDS)
@pytest.mark.parametrize("d_pos,d_neg", [(1, 6), (2, 4)])
def test_srss_matches_naive(H: int, W: int, d_pos: int, d_neg: int) -> None:
    B, D = 6, 10
    tok = structured_tokens(B, H, W, D, seed=3)
    masks = random_masks(B, H * W, seed=4)
    got = srss(tok, H, W, masks, d_pos=d_pos, d_neg=d_neg)
    for b in range(B):
        want = naive_srss(tok[b].numpy(), masks[b].numpy(), H, W, d_pos, d_neg)
        if math.isnan(want):
            assert math.isnan(got[b].item())
        else:
            assert got[b].item() == pytest.approx(want, abs=1e-4)


def test_srss_nan_exactly_without_valid_anchor() -> None:
    H, W, D = 8, 8, 6
    T = H * W
    masks = torch.zeros(5, T, dtype=torch.bool)
    masks[0] = True  # all foreground: no background anywhere
    masks[1, 0] = True  # one isolated foreground token: no foreground neighbour
    masks[2, [0, 2, 16]] = True  # foreground tokens, none adjacent to another
    masks[3, [27, 28]] = True  # adjacent pair in the middle: background far enough exists
    masks[4, [0, 1]] = True  # adjacent pair in a corner, background at d >= 6 exists
    tok = torch.randn(5, T, D, generator=torch.Generator().manual_seed(0))
    got = srss(tok, H, W, masks)
    assert torch.isnan(got[:3]).all()
    assert torch.isfinite(got[3:]).all()
    # Middle row foreground on a 3x3 grid: no background token is 4 steps from any anchor.
    middle_row = torch.tensor([[False] * 3 + [True] * 3 + [False] * 3] * 2)
    assert torch.isnan(srss(torch.randn(2, 9, D), 3, 3, middle_row, d_neg=4)).all()
    assert torch.isfinite(srss(torch.randn(2, 9, D), 3, 3, middle_row, d_neg=3)).all()
    # Random masks: NaN pattern agrees with the naive loop.
    masks = random_masks(12, T, seed=9)
    masks[::3] = torch.rand(4, T, generator=torch.Generator().manual_seed(1)) < 0.03
    tok = torch.randn(12, T, D)
    got = srss(tok, H, W, masks)
    want = [naive_srss(tok[b].numpy(), masks[b].numpy(), H, W) for b in range(12)]
    assert torch.isnan(got).tolist() == [math.isnan(w) for w in want]


# ---------------------------------------------------------------- behaviour
def test_smooth_field_scores_higher_than_iid_noise() -> None:
    H, W, D = 16, 16, 32
    smooth = smooth_field(4, H, W, D, sigma=2.0, seed=0)
    iid = torch.randn(4, H * W, D, generator=torch.Generator().manual_seed(0))
    assert (lds(smooth, H, W) > lds(iid, H, W).max() + 0.1).all()
    assert (cds(smooth, H, W) > cds(iid, H, W).max() + 0.01).all()
    assert lds(iid, H, W).abs().max() < 0.05  # no structure in i.i.d. tokens


def test_rmsc_extremes() -> None:
    same = torch.randn(2, 1, 8).expand(2, 20, 8)
    assert torch.allclose(rmsc(same, 4, 5), torch.zeros(2), atol=1e-3)
    one_hot = torch.eye(16).unsqueeze(0)  # orthogonal unit tokens: 1 - 1/T
    assert rmsc(one_hot, 4, 4).item() == pytest.approx(math.sqrt(1 - 1 / 16), abs=1e-6)


def test_chunked_equals_unchunked() -> None:
    H, W, D = 9, 7, 16
    tok = structured_tokens(5, H, W, D, seed=7)
    masks = random_masks(5, H * W, seed=8)
    tiny = TokenGrid(tok, H, W, masks=masks, max_chunk_bytes=1)
    assert tiny.chunk_rows() == 1
    whole = TokenGrid(tok, H, W, masks=masks, max_chunk_bytes=2**40)
    assert whole.chunk_rows() == H * W
    mid = TokenGrid(tok, H, W, masks=masks, max_chunk_bytes=5 * H * W * 4 * 10)  # 10 rows, uneven tail
    assert mid.chunk_rows() == 10
    names = ["lds", "cds", "srss", "rmsc"]
    from irepa.metrics.registry import get_metric

    for name in names:
        ref = get_metric(name).fn(whole)
        for grid in (tiny, mid):
            torch.testing.assert_close(get_metric(name).fn(grid), ref, atol=1e-6, rtol=0, equal_nan=True)


def test_half_precision_tokens_computed_in_float32() -> None:
    tok = structured_tokens(2, 6, 6, 8, seed=1).half()
    torch.testing.assert_close(lds(tok, 6, 6), lds(tok.float(), 6, 6))
    assert lds(tok, 6, 6).dtype == torch.float32


# ---------------------------------------------------------------- registry and validation
def test_compute_metrics_matches_single_functions() -> None:
    H, W = 6, 7
    tok = structured_tokens(3, H, W, 8, seed=4)
    masks = random_masks(3, H * W, seed=2)
    out = compute_metrics(tok, H, W, ["lds", "cds", "srss", "rmsc"], masks=masks, params={"lds": {"far_dist": 4}})
    torch.testing.assert_close(out["lds"], lds(tok, H, W, far_dist=4))
    torch.testing.assert_close(out["cds"], cds(tok, H, W))
    torch.testing.assert_close(out["srss"], srss(tok, H, W, masks), equal_nan=True)
    torch.testing.assert_close(out["rmsc"], rmsc(tok, H, W))
    assert set(compute_metrics(tok, H, W)) == {n for n in list_metrics() if n != "srss"}


def test_register_metric_decorator() -> None:
    @register_metric("test_mean_norm", higher_is_better=False)
    def mean_norm(grid: TokenGrid) -> torch.Tensor:
        return grid.tokens.float().norm(dim=-1).mean(dim=1)

    try:
        tok = torch.randn(2, 12, 4)
        out = compute_metrics(tok, 3, 4, ["test_mean_norm", "rmsc"])
        torch.testing.assert_close(out["test_mean_norm"], tok.norm(dim=-1).mean(dim=1))
        with pytest.raises(ValueError, match="already registered"):
            register_metric("test_mean_norm")(mean_norm)
    finally:
        unregister_metric("test_mean_norm")
    assert "test_mean_norm" not in list_metrics()


def test_errors_name_the_problem() -> None:
    tok = torch.randn(2, 30, 4)
    with pytest.raises(ValueError, match="T=30"):
        lds(tok, 4, 8)
    with pytest.raises(ValueError, match="far_dist=10"):
        lds(tok, 5, 6, far_dist=10)
    with pytest.raises(ValueError, match="dmax"):
        cds(tok, 3, 10, dmax=12)
    with pytest.raises(KeyError, match="valid: .*lds"):
        compute_metrics(tok, 5, 6, ["nope"])
    with pytest.raises(ValueError, match="needs foreground masks"):
        compute_metrics(tok, 5, 6, ["srss"])
    with pytest.raises(ValueError, match="bool"):
        srss(tok, 5, 6, torch.ones(2, 30))
    with pytest.raises(ValueError, match="not computed"):
        compute_metrics(tok, 5, 6, ["lds"], params={"cds": {"dmax": 3}})

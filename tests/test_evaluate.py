"""Evaluation metrics (FD, IS, precision / recall), the evaluator, references and bad-input handling (CPU, fast)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from irepa.evaluate import (
    Activations,
    Evaluator,
    FeatureExtractor,
    FrechetDistanceError,
    NpzWriter,
    ReferenceStats,
    check_images,
    frechet_distance,
    frechet_distance_details,
    gaussian_stats,
    inception_score,
    legacy_bilinear_matrix,
    manifold_radii,
    open_npz_array,
    precision_recall,
    reference_stats,
    save_npz,
)
from irepa.evaluate import frechet as frechet_module
from irepa.evaluate.features import Resizer
from irepa.evaluate.references import fashion_mnist_images

# ----------------------------------------------------------------------------- test networks and reference routes


class PoolExtractor(FeatureExtractor):
    """Deterministic and linear in the pixels: 4x4 average pooling (pool) and a strided subsample (spatial)."""

    name = "pool4"
    fd_metric = "fd"

    def __init__(self, with_logits: bool = False):
        super().__init__()
        self.outputs = ("pool", "spatial", "logits") if with_logits else ("pool", "spatial")
        if not with_logits:
            self.missing["logits"] = "no classifier in this test network"

    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).double()
        out = {"pool": torch.nn.functional.avg_pool2d(x, 4).flatten(1), "spatial": x[:, :1, ::2, ::2].flatten(1)}
        if "logits" in self.outputs:
            out["logits"] = out["pool"][:, :5]
        return out


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d) + 0.1 * np.eye(d)


def fd_by_sqrtm(mu1, s1, mu2, s2) -> float:
    """Independent route, the ADM suite's: the full matrix square root of S1 S2 with scipy's Schur method."""
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def naive_precision_recall(ref: np.ndarray, smp: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Brute force with explicit loops and sorted Euclidean distances."""
    def radii(x):
        out = []
        for i in range(len(x)):
            d = sorted(math.dist(x[i], x[j]) for j in range(len(x)) if j != i)
            out.append(d[k - 1])
        return out

    r_ref, r_smp = radii(ref), radii(smp)
    precision = np.mean([any(math.dist(s, ref[i]) <= r_ref[i] for i in range(len(ref))) for s in smp])
    recall = np.mean([any(math.dist(r, smp[j]) <= r_smp[j] for j in range(len(smp))) for r in ref])
    return float(precision), float(recall)


def naive_inception_score(p: np.ndarray, splits: int) -> float:
    scores = []
    for part in np.array_split(p, splits):
        marg = [sum(row[c] for row in part) / len(part) for c in range(p.shape[1])]
        kls = [sum(row[c] * math.log(row[c] / marg[c]) for c in range(p.shape[1]) if row[c] > 0) for row in part]
        scores.append(math.exp(sum(kls) / len(kls)))
    return sum(scores) / len(scores)


# ----------------------------------------------------------------------------- Fréchet distance


@pytest.mark.parametrize("d", [1, 5, 40])
def test_frechet_matches_the_matrix_square_root_route(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(fd_by_sqrtm(mu1, s1, mu2, s2), rel=1e-8, abs=1e-9)


def test_frechet_of_a_set_with_itself_is_zero_and_a_mean_shift_adds_its_square_norm():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    shift = rng.normal(size=16) * 3
    mu, sigma = gaussian_stats(x)
    mu_s, sigma_s = gaussian_stats(x + shift)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    assert frechet_distance(mu, sigma, mu_s, sigma_s) == pytest.approx(float(shift @ shift), rel=1e-8)
    # and it grows with the shift
    assert frechet_distance(mu, sigma, mu + 2 * shift, sigma) > frechet_distance(mu, sigma, mu_s, sigma_s)


def test_gaussian_stats_are_float64_mean_and_unbiased_covariance():
    x = np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32)
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    xc = x.astype(np.float64) - x.astype(np.float64).mean(0)
    np.testing.assert_allclose(sigma, xc.T @ xc / (len(x) - 1), rtol=1e-12)


def test_explicit_eps_is_applied_and_recorded():
    rng = np.random.default_rng(2)
    s1, s2 = random_spd(rng, 6), random_spd(rng, 6)
    mu = np.zeros(6)
    res = frechet_distance_details(mu, s1, mu, s2, eps=0.5)
    assert res.eps == 0.5
    assert res.value == pytest.approx(fd_by_sqrtm(mu, s1 + 0.5 * np.eye(6), mu, s2 + 0.5 * np.eye(6)), rel=1e-8)
    with pytest.raises(ValueError, match="eps"):
        frechet_distance(mu, s1, mu, s2, eps=-1)


def test_invalid_covariance_with_imaginary_root_raises():
    # an indefinite "covariance" has no real square root: reported, not patched
    with pytest.raises(FrechetDistanceError, match="imaginary"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([-1.0, 1.0]))


def test_non_finite_square_root_is_reported_not_patched(monkeypatch):
    calls = []

    def broken_eigvalsh(a):
        calls.append(a)
        return np.full(a.shape[0], np.nan)

    monkeypatch.setattr(frechet_module.np.linalg, "eigvalsh", broken_eigvalsh)
    with pytest.raises(FrechetDistanceError, match="not finite.*eps"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3))
    assert len(calls) == 1  # no silent retry with a regulariser


def test_frechet_rejects_nan_and_shape_mismatch():
    with pytest.raises(FrechetDistanceError, match="NaN"):
        frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="do not fit"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


# ----------------------------------------------------------------------------- Inception Score


def test_inception_score_of_a_degenerate_classifier_is_one():
    p = np.zeros((100, 7))
    p[:, 3] = 1.0
    mean, std = inception_score(p, splits=10)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0)


@pytest.mark.parametrize("k", [2, 10])
def test_inception_score_of_confident_uniform_classes_is_k(k):
    p = np.eye(k)[np.arange(20 * k) % k]  # each split holds every class equally often
    assert inception_score(p, splits=10)[0] == pytest.approx(k)
    # nearly one-hot softmax outputs give nearly K
    logits = 40.0 * np.eye(k)[np.arange(20 * k) % k]
    from irepa.evaluate import probabilities_from_logits

    assert inception_score(probabilities_from_logits(logits), splits=10)[0] == pytest.approx(k, rel=1e-6)


def test_inception_score_matches_naive_loop():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.full(6, 0.3), size=53)
    assert inception_score(p, splits=4)[0] == pytest.approx(naive_inception_score(p, 4), rel=1e-10)


def test_inception_score_rejects_non_probabilities():
    with pytest.raises(ValueError, match="softmax"):
        inception_score(np.ones((20, 3)), splits=2)
    with pytest.raises(ValueError, match="split"):
        inception_score(np.eye(3), splits=10)


# ----------------------------------------------------------------------------- precision / recall


def test_manifold_radii_match_sorted_distances():
    x = np.random.default_rng(4).normal(size=(40, 3))
    radii = manifold_radii(x, k=3, batch_size=7, dtype=torch.float64)
    for i in (0, 17, 39):
        d = np.sort(((x - x[i]) ** 2).sum(1))
        assert radii[i] == pytest.approx(d[3], rel=1e-9)  # d[0] is the point itself


def test_precision_recall_match_brute_force():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(60, 4))
    smp = rng.normal(size=(45, 4)) * 1.3 + 0.4
    expected = naive_precision_recall(ref, smp)
    assert precision_recall(ref, smp, batch_size=8, dtype=torch.float64) == pytest.approx(expected)
    # float32 blocks give the same answer on continuous data
    assert precision_recall(ref, smp, batch_size=1000) == pytest.approx(expected)


def test_precision_recall_on_known_overlaps():
    rng = np.random.default_rng(6)
    cloud = rng.uniform(size=(400, 2))
    assert precision_recall(cloud, cloud.copy()) == (1.0, 1.0)
    far = cloud + 100.0
    assert precision_recall(cloud, far) == (0.0, 0.0)
    # samples cover only a corner of the reference: precise but with poor recall
    corner = rng.uniform(size=(400, 2)) * 0.3
    precision, recall = precision_recall(cloud, corner)
    assert precision > 0.9 and recall < 0.25
    # the reverse roles swap the picture
    precision_r, recall_r = precision_recall(corner, cloud)
    assert precision_r < 0.25 and recall_r > 0.9


def test_precision_recall_needs_more_than_k_points():
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


# ----------------------------------------------------------------------------- resize


def test_legacy_bilinear_resize_properties():
    # 2x downscale samples the even pixels exactly (src = 2 * o, no half-pixel offset)
    np.testing.assert_allclose(legacy_bilinear_matrix(8, 4), np.eye(8)[::2])
    m = legacy_bilinear_matrix(256, 299)
    np.testing.assert_allclose(m.sum(1), 1.0)
    # output o reads input o * 256 / 299: check one interior row by hand
    src = 100 * 256 / 299
    row = np.zeros(256)
    row[int(src)], row[int(src) + 1] = 1 - (src - int(src)), src - int(src)
    np.testing.assert_allclose(m[100], row)
    x = torch.rand(2, 3, 8, 6)
    y = Resizer(4)(x)
    expected = np.einsum("oh,bchw,pw->bcop", legacy_bilinear_matrix(8, 4), x.numpy(), legacy_bilinear_matrix(6, 4))
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(y.numpy()[..., 0], x.numpy()[:, :, ::2, 0], rtol=1e-6)  # rows 0, 2, 4, 6
    assert Resizer(8)(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="valid"):
        Resizer(8, "nearest")


# ----------------------------------------------------------------------------- the evaluator


def images_rng(n: int, size: int = 8, seed: int = 0, low: int = 20, high: int = 200) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, size=(n, size, size, 3), dtype=np.uint8)


def test_evaluator_identical_and_shifted_sets():
    ev = Evaluator(PoolExtractor(), batch_size=7, progress=False)
    imgs = images_rng(300)
    ref = ev.reference(imgs)
    same = ev.evaluate(ev.activations(imgs), ref)
    assert abs(same["metrics"]["fd"]) < 1e-6 and abs(same["metrics"]["sfid"]) < 1e-6
    assert same["metrics"]["precision"] == 1.0 and same["metrics"]["recall"] == 1.0
    assert "inception_score" in same["skipped"] and "no classifier" in same["skipped"]["inception_score"]
    # +10 on every pixel shifts every (linear) feature by 10: FD = dim * 100
    shifted = ev.evaluate(ev.activations(imgs + 10), ref)
    dim = ref.mu.shape[0]
    assert shifted["metrics"]["fd"] == pytest.approx(dim * 100.0, rel=1e-6)
    assert shifted["metrics"]["sfid"] == pytest.approx(ref.mu_s.shape[0] * 100.0, rel=1e-6)
    assert shifted["extractor"]["name"] == "pool4" and shifted["eps"] == 0.0


def test_evaluator_features_match_direct_extraction_whatever_the_batch_size():
    imgs = images_rng(23)
    a = Evaluator(PoolExtractor(), batch_size=5, progress=False).activations(imgs)
    direct = PoolExtractor()(torch.from_numpy(imgs))
    np.testing.assert_allclose(a.pool, direct["pool"].float().numpy())
    np.testing.assert_allclose(a.spatial, direct["spatial"].float().numpy())


def test_evaluator_inception_score_from_logits():
    ev = Evaluator(PoolExtractor(with_logits=True), progress=False, is_splits=2)
    acts = Activations(pool=np.random.default_rng(0).normal(size=(40, 3)), logits=60.0 * np.eye(5)[np.arange(40) % 5])
    res = ev.evaluate(acts, ReferenceStats.from_activations(acts))
    assert res["metrics"]["inception_score"] == pytest.approx(5.0, rel=1e-6)


def test_too_few_samples_is_a_recorded_warning():
    ev = Evaluator(PoolExtractor(), progress=False)
    imgs = images_rng(6)  # 12-d pool features, 6 samples
    res = ev.evaluate(ev.activations(imgs), ev.reference(images_rng(50, seed=1)))
    assert any("6 samples < feature dimension 12" in w for w in res["warnings"])
    # the metric is either a number or an explicit error, never silently missing
    assert ("fd" in res["metrics"] and res["metrics"]["fd"] is not None) or "fd" in res["errors"]
    with pytest.raises(ValueError, match="at least 2"):
        ev.evaluate(ev.activations(imgs[:1]), ev.reference(images_rng(50, seed=1)))


def test_failed_frechet_distance_is_reported_in_errors(monkeypatch):
    monkeypatch.setattr(frechet_module.np.linalg, "eigvalsh", lambda a: np.full(a.shape[0], np.inf))
    ev = Evaluator(PoolExtractor(), progress=False)
    acts = ev.activations(images_rng(40))
    res = ev.evaluate(acts, ReferenceStats.from_activations(acts))
    assert res["metrics"]["fd"] is None and "not finite" in res["errors"]["fd"]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 8, 8, 3), np.float32), "np.clip"),
    (np.zeros((4, 3, 8, 8), np.uint8), "transpose"),
    (np.zeros((4, 8, 8), np.uint8), "np.repeat"),
    (np.zeros((4, 8, 8, 1), np.uint8), "np.repeat"),
    (np.zeros((4, 8, 8, 4), np.uint8), "alpha"),
    (np.zeros((4, 8, 8, 3), np.int32), "0..255"),
    (np.zeros((0, 8, 8, 3), np.uint8), "no images"),
])
def test_bad_sample_arrays_are_explained(array, message):
    with pytest.raises(ValueError, match=message):
        check_images(array)
    with pytest.raises(ValueError):
        Evaluator(PoolExtractor(), progress=False).activations(array)


def test_extractor_checks_its_input():
    with pytest.raises(ValueError, match="uint8"):
        PoolExtractor()(torch.zeros(2, 8, 8, 3))


# ----------------------------------------------------------------------------- npz files


def test_npz_writer_streams_chunks_and_reader_maps_them(tmp_path):
    imgs = images_rng(10)
    path = tmp_path / "s.npz"
    with NpzWriter(path) as w:
        w.write("arr_0", imgs.shape, np.uint8, [imgs[:4], imgs[4:]])
    loaded = open_npz_array(path)
    assert isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, imgs)
    np.testing.assert_array_equal(np.load(path)["arr_0"], imgs)  # a normal .npz for numpy
    np.savez_compressed(tmp_path / "c.npz", arr_0=imgs)
    np.testing.assert_array_equal(open_npz_array(tmp_path / "c.npz"), imgs)
    with pytest.raises(KeyError, match="arr_0"):
        open_npz_array(tmp_path / "c.npz", "labels")


def test_npz_writer_is_atomic_on_error(tmp_path):
    path = tmp_path / "s.npz"
    with pytest.raises(ValueError, match="declared shape"):
        with NpzWriter(path) as w:
            w.write("arr_0", (5, 2), np.uint8, [np.zeros((3, 2), np.uint8)])
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- references


def test_reference_from_npz_is_cached_and_checked(tmp_path, monkeypatch):
    imgs = images_rng(30, seed=3)
    save_npz(tmp_path / "ref.npz", arr_0=imgs)
    ev = Evaluator(PoolExtractor(), progress=False)
    cache = tmp_path / "cache"
    ref = reference_stats(str(tmp_path / "ref.npz"), ev, (8, 8), cache_dir=cache)
    mu, sigma = gaussian_stats(ev.activations(imgs).pool)
    np.testing.assert_allclose(ref.mu, mu)
    np.testing.assert_allclose(ref.sigma, sigma)
    assert len(list(cache.glob("ref-*.npz"))) == 1
    # the second call reads the cache: the network is not run again
    monkeypatch.setattr(ev, "activations", lambda *a, **k: pytest.fail("recomputed a cached reference"))
    again = reference_stats(str(tmp_path / "ref.npz"), ev, (8, 8), cache_dir=cache)
    np.testing.assert_array_equal(again.sigma, ref.sigma)
    np.testing.assert_array_equal(again.features, ref.features)
    assert again.info["from_cache"]


def test_reference_resolution_mismatch_names_both_and_resize_fixes_it(tmp_path):
    save_npz(tmp_path / "ref.npz", arr_0=images_rng(12, size=16))
    ev = Evaluator(PoolExtractor(), progress=False)
    with pytest.raises(ValueError, match=r"samples are 8x8 .* is 16x16.*--resize"):
        reference_stats(str(tmp_path / "ref.npz"), ev, (8, 8), use_cache=False)
    ref = reference_stats(str(tmp_path / "ref.npz"), ev, (8, 8), resize=True, use_cache=False)
    assert ref.image_size == (8, 8) and ref.num_images == 12


def test_precomputed_reference_statistics_are_used(tmp_path):
    imgs = images_rng(20, seed=4)
    ev = Evaluator(PoolExtractor(), progress=False)
    ev.extractor.fd_metric = "fid"  # precomputed statistics in ADM files are Inception statistics
    d = ev.activations(imgs).pool.shape[1]
    mu, sigma = np.arange(d, dtype=np.float64), np.eye(d) * 2
    save_npz(tmp_path / "ref.npz", arr_0=imgs, mu=mu, sigma=sigma)
    ref = reference_stats(str(tmp_path / "ref.npz"), ev, (8, 8), use_cache=False)
    np.testing.assert_array_equal(ref.mu, mu)
    np.testing.assert_array_equal(ref.sigma, sigma)
    assert ref.features is not None and len(ref.features) == 20  # arr_0 still feeds precision / recall
    assert "precomputed" in ref.info["stats_source"]
    save_npz(tmp_path / "stats_only.npz", mu=mu, sigma=sigma)
    stats_only = reference_stats(str(tmp_path / "stats_only.npz"), ev, (8, 8), use_cache=False)
    res = ev.evaluate(ev.activations(imgs), stats_only)
    assert "precision" in res["skipped"] and res["metrics"]["fid"] is not None


def test_reference_from_image_folder_equals_the_arrays(tmp_path):
    from PIL import Image

    imgs = images_rng(9, seed=5)
    for i, im in enumerate(imgs):
        (tmp_path / "imgs" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(tmp_path / "imgs" / f"c{i % 2}" / f"{i}.png")
    ev = Evaluator(PoolExtractor(), progress=False)
    ref = reference_stats(str(tmp_path / "imgs"), ev, (8, 8), use_cache=False)
    assert ref.num_images == 9
    mu, _ = gaussian_stats(ev.activations(imgs).pool)
    np.testing.assert_allclose(ref.mu, mu)  # same images, any order: same mean
    with pytest.raises(ValueError, match="reference image .* is 8x8"):
        reference_stats(str(tmp_path / "imgs"), ev, (4, 4), use_cache=False)
    with pytest.raises(FileNotFoundError, match="fashion-mnist"):
        reference_stats(str(tmp_path / "nowhere"), ev, (8, 8), use_cache=False)


def test_fashion_mnist_reference_images_are_rgb_at_the_sample_resolution():
    from irepa.data.fashion_mnist import read_fashion_mnist

    try:
        gray, _ = read_fashion_mnist(split="test")
    except Exception as err:  # noqa: BLE001 - data not installed on this machine
        pytest.skip(f"Fashion-MNIST not available: {err}")
    imgs = fashion_mnist_images((32, 32), num=5)
    batch = imgs[0:5]
    assert batch.shape == (5, 32, 32, 3) and batch.dtype == np.uint8
    padded = np.pad(gray[:5], ((0, 0), (2, 2), (2, 2)))  # 28 -> 32 is zero padding, as in training
    np.testing.assert_array_equal(batch[..., 0], padded)
    np.testing.assert_array_equal(batch[..., 2], padded)


# ----------------------------------------------------------------------------- the command line


def test_eval_command_writes_json_and_csv(tmp_path, monkeypatch):
    from irepa.cli import main
    from irepa.evaluate import cli as eval_cli

    monkeypatch.setattr(eval_cli, "build_extractor", lambda *a, **k: PoolExtractor())
    imgs = images_rng(40, seed=7)
    save_npz(tmp_path / "samples_40.npz", arr_0=imgs, labels=np.arange(40) % 4)
    (tmp_path / "samples_40.json").write_text(json.dumps({"sampler": {"kind": "sde"}}))
    save_npz(tmp_path / "ref.npz", arr_0=images_rng(50, seed=8))
    code = main(["eval", "--samples", str(tmp_path / "samples_40.npz"), "--ref", str(tmp_path / "ref.npz"),
                 "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert code == 0
    result = json.loads((tmp_path / "out" / "eval_samples_40_inception.json").read_text())
    assert result["metrics"]["fd"] > 0 and 0 <= result["metrics"]["precision"] <= 1
    assert result["sampling"]["sampler"]["kind"] == "sde"  # the sampling settings travel with the numbers
    csv_text = (tmp_path / "out" / "eval_samples_40_inception.csv").read_text().splitlines()
    header, row = csv_text[0].split(","), csv_text[1].split(",")
    assert float(row[header.index("fd")]) == pytest.approx(result["metrics"]["fd"], rel=1e-5)
    assert row[header.index("inception_score")] == ""  # skipped, not zero


def test_eval_command_refuses_bad_samples(tmp_path, monkeypatch, capsys):
    from irepa.cli import main
    from irepa.evaluate import cli as eval_cli

    monkeypatch.setattr(eval_cli, "build_extractor", lambda *a, **k: PoolExtractor())
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((4, 8, 8, 3), np.float32))
    assert main(["eval", "--samples", str(tmp_path / "float.npz"), "--ref", "fashion-mnist", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search("dtype float32.*uint8", err) and "Traceback" not in err


# ----------------------------------------------------------------------------- DINOv2 features


def test_dinov2_features_are_mean_pooled_patch_tokens():
    from irepa.evaluate.dinov2 import DinoV2Extractor

    torch.manual_seed(0)
    ex = DinoV2Extractor("dinov2-vit-s", weights="random", resolution=56)  # small input keeps the test fast
    imgs = torch.from_numpy(images_rng(2, size=28, seed=9))
    feats = ex(imgs)
    assert set(feats) == {"pool"} and feats["pool"].shape == (2, 384)
    tokens = ex.encoder.encode(imgs.permute(0, 3, 1, 2).float() / 255.0)
    torch.testing.assert_close(feats["pool"], tokens.mean(dim=1))
    assert ex.fd_metric == "fd_dinov2" and "sFID" in ex.missing["spatial"]
    assert ex.describe()["sha256"] is None and "random" in ex.describe()["weights"]
    with pytest.raises(ValueError, match="valid: .*dinov2-vit-s"):
        DinoV2Extractor("dinov2-vit-tiny", weights="random")

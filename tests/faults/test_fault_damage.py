"""Truncated and bit-flipped checkpoints, shards and caches: detected, named, and never used silently."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from faultkit import TINY_TRAIN, assert_same_state, cli, files, flip_bit, prepare_args, sample_args, truncate
from PIL import Image

from irepa.errors import DataError
from irepa.train.checkpoint import checkpoint_damage, checkpoint_path
from irepa.utils.io import manifest_path

DAMAGES = {"truncated": truncate, "bit-flipped": flip_bit}
REASONS = {"truncated": "truncated", "bit-flipped": "SHA-256"}


@pytest.fixture
def run_copy(reference_run, tmp_path):
    """A private copy of the finished tiny run (checkpoints at steps 4, 8 and 12)."""
    run = tmp_path / "run"
    shutil.copytree(reference_run[0], run)
    return run


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("irepa ")]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("damage", DAMAGES)
def test_resume_names_a_damaged_latest_checkpoint_and_falls_back_only_when_asked(
    damage, run_copy, reference_run, capsys, caplog
):
    latest = checkpoint_path(run_copy / "checkpoints", 12)
    DAMAGES[damage](latest)

    assert cli(*TINY_TRAIN, "--out", run_copy, "--resume") == 5
    line = one_error_line(capsys)
    assert str(latest) in line and REASONS[damage] in line and "--resume auto" in line
    assert cli(*TINY_TRAIN, "--out", run_copy, "--resume", latest) == 5  # an explicit path never falls back
    assert str(latest) in one_error_line(capsys)

    with caplog.at_level(logging.WARNING):
        assert cli(*TINY_TRAIN, "--out", run_copy, "--resume", "auto") == 0
    assert f"checkpoint {latest} is damaged" in caplog.text and "step_0000008.pt" in caplog.text
    # resumed from step 8 and trained steps 9..12 again: the same weights, and step 12 is whole again
    assert checkpoint_damage(latest) is None
    assert_same_state(latest, checkpoint_path(reference_run[0] / "checkpoints", 12))


def test_sample_from_a_run_folder_uses_the_newest_intact_checkpoint(run_copy, tmp_path, capsys, caplog):
    latest = checkpoint_path(run_copy / "checkpoints", 12)
    flip_bit(latest)
    with caplog.at_level(logging.WARNING):
        assert cli(*sample_args(run_copy, tmp_path / "s")) == 0
    assert f"using checkpoint {checkpoint_path(run_copy / 'checkpoints', 8)}" in capsys.readouterr().err
    assert str(latest) in caplog.text
    assert cli(*sample_args(latest, tmp_path / "s2")) == 5  # the damaged file itself is refused, by name
    assert str(latest) in one_error_line(capsys)


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_checkpoint_without_manifest_is_checked_against_its_zip_crcs(damage, run_copy):
    path = checkpoint_path(run_copy / "checkpoints", 8)
    manifest_path(path).unlink()  # as written by an older release, or killed between file and manifest
    assert checkpoint_damage(path) is None
    DAMAGES[damage](path)
    reason = checkpoint_damage(path)
    assert reason is not None and ("CRC" in reason or "zip" in reason)


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_latent_shards_are_named_and_encoded_again(damage, reference_latents, tiny_vae, tmp_path, caplog):
    from irepa.data.latent_cache import LatentCache

    reference = reference_latents[0]
    out = tmp_path / "cache"
    shutil.copytree(reference, out)
    shard = out / "shard-00005.safetensors"
    DAMAGES[damage](shard)
    if damage == "truncated":  # named as soon as the cache is opened for training
        with pytest.raises(DataError, match="shard-00005.safetensors"):
            LatentCache(out)
        verify = []
    else:  # same size, same header: only the checksums tell
        verify = ["--verify"]
    with caplog.at_level(logging.WARNING):
        assert cli(*prepare_args(tiny_vae, out), *verify) == 0
    assert f"shard {shard} is damaged" in caplog.text
    assert files(out) == files(reference)


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_sample_shards_are_named_and_made_again(damage, reference_run, reference_samples, tmp_path, caplog):
    reference = reference_samples[0]
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    shard = out / "shards" / "shard_00000008_00000012.npz"
    DAMAGES[damage](shard)
    with caplog.at_level(logging.WARNING):
        assert cli(*sample_args(reference_run[0] / "checkpoints", out)) == 0
    assert f"sample shard {shard} is damaged" in caplog.text
    assert files(out / "shards") == files(reference / "shards")
    merged, expected = np.load(out / "samples_24.npz")["arr_0"], np.load(reference / "samples_24.npz")["arr_0"]
    np.testing.assert_array_equal(merged, expected)


def test_eval_refuses_a_damaged_sample_file_by_name(reference_samples, tmp_path, capsys):
    samples = tmp_path / "samples_24.npz"
    shutil.copy(reference_samples[0] / "samples_24.npz", samples)
    flip_bit(samples)
    assert cli("eval", "--samples", samples, "--ref", "fashion-mnist") == 3
    line = one_error_line(capsys)
    assert str(samples) in line and "CRC" in line


# ----------------------------------------------------------------------------- caches: named, then recomputed


class CountingEncoder:
    """Tokens = the pixels of each 2x2 patch (a function of the image alone); counts its calls."""

    calls = 0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        CountingEncoder.calls += 1
        return torch.nn.functional.pixel_unshuffle(images, 2).flatten(2).transpose(1, 2)


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_token_cache_is_named_and_recomputed(damage, tmp_path, caplog):
    from irepa.align.target_cache import cached_tokens

    g = torch.Generator().manual_seed(0)
    dataset = [{"image": torch.rand(3, 8, 8, generator=g)} for _ in range(6)]
    key = {"encoder": "counting", "n": 6}
    first = cached_tokens(dataset, CountingEncoder(), tmp_path, key, batch_size=4)
    calls = CountingEncoder.calls
    torch.testing.assert_close(cached_tokens(dataset, CountingEncoder(), tmp_path, key), first, rtol=0, atol=0)
    assert CountingEncoder.calls == calls  # served from the cache
    (path,) = tmp_path.glob("tokens-*.pt")
    DAMAGES[damage](path)
    with caplog.at_level(logging.WARNING):
        again = cached_tokens(dataset, CountingEncoder(), tmp_path, key, batch_size=4)
    assert f"token cache {path} is damaged" in caplog.text and CountingEncoder.calls > calls
    torch.testing.assert_close(again, first, rtol=0, atol=0)


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_feature_cache_is_named_and_recomputed(damage, tmp_path, caplog):
    from irepa.metrics.features import FeatureRequest, load_features
    from irepa.metrics.sources import folder_source

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    request = FeatureRequest("hog", None, (4, 4), folder_source(tmp_path))
    first = load_features(request, cache_dir=tmp_path / "cache", progress=False)
    (path,) = (tmp_path / "cache").glob("*.npy")
    DAMAGES[damage](path)
    with caplog.at_level(logging.WARNING):
        again = load_features(request, cache_dir=tmp_path / "cache", progress=False)
    assert f"feature cache {path} is damaged" in caplog.text
    np.testing.assert_array_equal(again, first)


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_reference_statistics_are_named_and_recomputed(damage, tmp_path, caplog):
    from irepa.evaluate import Evaluator, FeatureExtractor, reference_stats, save_npz

    class MeanColour(FeatureExtractor):
        name, fd_metric, outputs = "mean-colour", "fd", ("pool",)

        def extract(self, images):
            return {"pool": images.double().mean(dim=(1, 2))}

    rng = np.random.default_rng(1)
    save_npz(tmp_path / "ref.npz", arr_0=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8))
    evaluator = Evaluator(MeanColour(), progress=False)
    first = reference_stats(str(tmp_path / "ref.npz"), evaluator, (8, 8), cache_dir=tmp_path / "cache")
    (path,) = (tmp_path / "cache").glob("ref-*.npz")
    DAMAGES[damage](path)
    with caplog.at_level(logging.WARNING):
        again = reference_stats(str(tmp_path / "ref.npz"), evaluator, (8, 8), cache_dir=tmp_path / "cache")
    assert f"statistics {path} are damaged" in caplog.text
    np.testing.assert_array_equal(again.mu, first.mu)
    np.testing.assert_array_equal(again.sigma, first.sigma)

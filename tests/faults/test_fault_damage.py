"""Truncated and bit-flipped checkpoints, shards and caches: detected, named, and never used silently."""

from __future__ import annotations

import json
import logging
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from faultkit import (
    TINY_TRAIN,
    assert_same_state,
    cli,
    digests,
    files,
    flip_bit,
    one_error_line,
    prepare_args,
    sample_args,
    truncate,
)
from PIL import Image

from irepa.errors import DataError
from irepa.evaluate import FeatureExtractor
from irepa.train.checkpoint import checkpoint_damage, checkpoint_path
from irepa.utils.io import MANIFEST_FORMAT, file_digest, manifest_path

DAMAGES = {"truncated": truncate, "bit-flipped": flip_bit}
REASONS = {"truncated": "truncated", "bit-flipped": "SHA-256"}


@pytest.fixture
def run_copy(reference_run, tmp_path):
    """A private copy of the finished tiny run (checkpoints at steps 4, 8 and 12)."""
    run = tmp_path / "run"
    shutil.copytree(reference_run[0], run)
    return run


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


def test_a_token_cache_with_non_finite_tokens_is_named_and_recomputed(tmp_path, caplog):
    """A cache whose manifest matches (written with the NaN) still never serves a non-finite target."""
    from irepa.align.target_cache import cached_tokens
    from irepa.utils.io import atomic_torch_save

    g = torch.Generator().manual_seed(0)
    dataset = [{"image": torch.rand(3, 8, 8, generator=g)} for _ in range(6)]
    key = {"encoder": "counting", "n": 6}
    first = cached_tokens(dataset, CountingEncoder(), tmp_path, key, batch_size=4)
    (path,) = tmp_path.glob("tokens-*.pt")
    poisoned = first.clone()
    poisoned[4, 1, 0] = float("inf")
    atomic_torch_save(poisoned, path, manifest=True)
    calls = CountingEncoder.calls
    with caplog.at_level(logging.WARNING):
        again = cached_tokens(dataset, CountingEncoder(), tmp_path, key, batch_size=4)
    assert f"token cache {path} holds non-finite tokens for item 4" in caplog.text and CountingEncoder.calls > calls
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


# ----------------------------------------------------------------------------- round two: damage found by reading


def latent_train_args(cache: Path, run: Path) -> list:
    """The tiny training run on the 16-px latent cache of ``prepare_args`` (4 x 8 x 8 latents)."""
    return [*TINY_TRAIN, "--data.source", "latents", "--data.path", cache, "--data.resolution", "16",
            "--data.num_classes", "4", "--model.in_channels", "4", "--model.input_size", "8", "--out", run]


def flip_exponent(shard: Path, item: int) -> None:
    """Flip the top exponent bit of the first value of ``item`` in both moment arrays of a safetensors shard
    (0.077 becomes 2.6e37): the size and header stay intact, only the SHA-256 tells."""
    data = bytearray(shard.read_bytes())
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    for key in ("moments", "moments_flip"):
        entry = header[key]
        width = {"F32": 4, "F16": 2}[entry["dtype"]]
        start = 8 + size + entry["data_offsets"][0] + item * width * math.prod(entry["shape"][1:])
        data[start + width - 1] ^= 0x40  # little-endian: the sign/exponent byte comes last
    shard.write_bytes(bytes(data))


def test_a_flipped_exponent_in_a_latent_shard_is_named_not_blamed_on_the_learning_rate(
    reference_latents, tiny_vae, tmp_path, capsys
):
    cache = tmp_path / "cache"
    shutil.copytree(reference_latents[0], cache)
    shard = cache / "shard-00002.safetensors"
    flip_exponent(shard, 1)  # item 9: shard 2 holds items 8..11
    before = digests(cache)
    assert cli(*latent_train_args(cache, tmp_path / "run")) == 3
    line = one_error_line(capsys)
    assert str(shard) in line and "item 9" in line and "--verify" in line and "train.lr" not in line
    assert digests(cache) == before
    assert cli(*prepare_args(tiny_vae, cache), "--verify") == 0  # the advised repair
    assert files(cache) == files(reference_latents[0])


def test_a_truncated_latent_index_is_named_with_the_rebuild(reference_latents, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(reference_latents[0], cache)
    truncate(cache / "index.json")
    before = digests(cache)
    assert cli(*latent_train_args(cache, tmp_path / "run")) == 3
    line = one_error_line(capsys)
    assert str(cache / "index.json") in line and "damaged" in line and "--overwrite" in line
    assert digests(cache) == before


def test_a_truncated_sampling_record_is_named_with_what_to_do(reference_run, reference_samples, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference_samples[0], out)
    truncate(out / "run.json")
    before = digests(out)
    assert cli(*sample_args(reference_run[0] / "checkpoints", out)) == 5
    line = one_error_line(capsys)
    assert str(out / "run.json") in line and "damaged" in line and "delete" in line
    assert digests(out) == before


@pytest.mark.parametrize("where", ["row", "header"])
def test_an_undecodable_byte_in_the_training_log_never_blocks_a_resume(where, run_copy, reference_run, caplog):
    log_path = run_copy / "metrics.csv"
    lines = log_path.read_bytes().split(b"\n")
    damaged = 0 if where == "header" else 3  # the header, or the row of step 3
    lines[damaged] = lines[damaged][:2] + b"\xff" + lines[damaged][3:]
    log_path.write_bytes(b"\n".join(lines))
    ckpts = run_copy / "checkpoints"
    checkpoint_path(ckpts, 12).unlink()  # so that the resume trains steps 9..12 again
    manifest_path(checkpoint_path(ckpts, 12)).unlink()
    before = digests(ckpts)
    with caplog.at_level(logging.WARNING):
        assert cli(*TINY_TRAIN, "--out", run_copy, "--resume") == 0
    assert f"training log {log_path}" in caplog.text
    assert_same_state(checkpoint_path(ckpts, 12), checkpoint_path(reference_run[0] / "checkpoints", 12))
    assert {k: v for k, v in digests(ckpts).items() if "0000012" not in k} == before
    rows = log_path.read_text().splitlines()  # decodable again
    steps = [int(r.split(",")[0]) for r in rows[1:]]
    if where == "row":
        assert steps == [s for s in range(1, 13) if s != 3]
    else:  # the damaged log is kept aside, the new one starts at the resume
        assert steps == [9, 10, 11, 12] and (run_copy / "metrics.csv.damaged").read_bytes() == b"\n".join(lines)


def _unloadable(path: Path) -> None:
    """Rewrite a checkpoint so that its zip CRCs and its manifest are right but torch.load fails."""
    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    pickle_name = next(n for n in members if n.endswith("data.pkl"))
    members[pickle_name] = b"\x80\x02not a pickle"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    digest = file_digest(path)
    manifest_path(path).write_text(json.dumps({"format": MANIFEST_FORMAT, "file": path.name, "size": digest.size,
                                               "sha256": digest.sha256}))
    assert checkpoint_damage(path) is None


def test_a_checkpoint_torch_cannot_load_is_skipped_only_where_a_fallback_is_asked_for(
    run_copy, reference_run, tmp_path, capsys, caplog
):
    ckpts = run_copy / "checkpoints"
    latest = checkpoint_path(ckpts, 12)
    _unloadable(latest)
    before = digests(ckpts)
    for resume in (["--resume"], ["--resume", latest]):  # the newest, or exactly this file: no fallback
        assert cli(*TINY_TRAIN, "--out", run_copy, *resume) == 5
        line = one_error_line(capsys)
        assert str(latest) in line and "torch.load failed" in line and "--resume auto" in line
    assert digests(ckpts) == before

    with caplog.at_level(logging.WARNING):  # a run folder: the newest checkpoint that loads, with a warning
        assert cli(*sample_args(run_copy, tmp_path / "s")) == 0
    assert f"using checkpoint {checkpoint_path(ckpts, 8)}" in capsys.readouterr().err
    assert f"checkpoint {latest} is damaged (torch.load failed" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cli(*TINY_TRAIN, "--out", run_copy, "--resume", "auto") == 0
    assert f"checkpoint {latest} is damaged (torch.load failed" in caplog.text
    assert_same_state(latest, checkpoint_path(reference_run[0] / "checkpoints", 12))


def test_resuming_a_checkpoint_of_another_run_exits_5_naming_the_field(run_copy, capsys):
    before = digests(run_copy)
    assert cli(*TINY_TRAIN, "--model.hidden_size", "64", "--out", run_copy, "--resume") == 5
    line = one_error_line(capsys)
    assert "model.hidden_size: 32 in the checkpoint, 64 now" in line and "config.yaml" in line
    assert digests(run_copy) == before


def test_resuming_a_finished_run_says_there_is_nothing_to_do(run_copy, capsys):
    before = digests(run_copy / "checkpoints")
    assert cli(*TINY_TRAIN, "--out", run_copy, "--resume") == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and str(checkpoint_path(run_copy / "checkpoints", 12)) in out and "None" not in out
    assert digests(run_copy / "checkpoints") == before


def test_a_sampler_mismatch_names_the_differing_fields(reference_run, reference_samples, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference_samples[0], out)
    before = digests(out)
    args = sample_args(reference_run[0] / "checkpoints", out)
    args[args.index("--steps") + 1] = "8"
    assert cli(*args) == 2
    line = one_error_line(capsys)
    assert "sampler.steps: 4 there, 8 now" in line and "{" not in line
    assert digests(out) == before


def test_a_merge_killed_midway_leaves_a_temp_file_the_rerun_removes(reference_run, reference_samples, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference_samples[0], out)
    (out / "samples_24.npz").unlink()  # as if killed while merging: the shards are there, the merge is not
    leaked = out / ".samples_24.npz.tmp-4242-a1b2c3.npz"
    leaked.write_bytes(b"\0" * 4096)
    foreign = out / ".notes.txt.tmp-4242-a1b2c3.txt"  # another program's temp file in the same folder
    foreign.write_bytes(b"not ours")
    shards = digests(out / "shards")
    assert cli(*sample_args(reference_run[0] / "checkpoints", out)) == 0
    assert not leaked.exists() and foreign.read_bytes() == b"not ours"
    assert digests(out / "shards") == shards
    assert files(out)["samples_24.npz"] == files(reference_samples[0])["samples_24.npz"]


# ----------------------------------------------------------------------------- eval: the reference first


class CountingMeanColour(FeatureExtractor):
    """Mean colour as 3-d features (standing in for Inception pool features); counts the images it was given."""

    name, fd_metric, outputs = "mean-colour", "fid", ("pool",)
    images = 0

    def extract(self, images):
        CountingMeanColour.images += len(images)
        return {"pool": images.double().mean(dim=(1, 2))}


def test_eval_refuses_reference_statistics_of_the_wrong_shape_before_any_sample_feature(
    reference_samples, tmp_path, capsys, monkeypatch
):
    from irepa.evaluate import cli as eval_cli

    monkeypatch.setattr(eval_cli, "build_extractor", lambda *a, **k: CountingMeanColour())
    samples = tmp_path / "samples_24.npz"
    shutil.copy(reference_samples[0] / "samples_24.npz", samples)
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(5), sigma=np.eye(5))  # 5-d statistics for 3-d features
    earlier = tmp_path / "eval_samples_24_inception.json"
    earlier.write_text('{"metrics": {"fd": 1.0}}\n')  # a result of an earlier evaluation
    before = digests(tmp_path)
    CountingMeanColour.images = 0
    assert cli("eval", "--samples", samples, "--ref", bad, "--no-cache", "--no-progress") == 3
    line = one_error_line(capsys)
    assert line.startswith("irepa eval: --ref") and str(bad) in line and "(5,)" in line and "(3,)" in line
    assert CountingMeanColour.images <= 1  # one probe image, not the 24 samples
    assert digests(tmp_path) == before


def test_a_metric_that_fails_never_replaces_an_earlier_result(reference_samples, tmp_path, capsys, monkeypatch):
    from irepa.evaluate import cli as eval_cli
    from irepa.evaluate import evaluator
    from irepa.evaluate.frechet import FrechetDistanceError

    def singular(*args, **kwargs):
        raise FrechetDistanceError("fid: the matrix square root is not finite")

    monkeypatch.setattr(eval_cli, "build_extractor", lambda *a, **k: CountingMeanColour())
    monkeypatch.setattr(evaluator, "frechet_distance_details", singular)
    samples = tmp_path / "samples_24.npz"
    shutil.copy(reference_samples[0] / "samples_24.npz", samples)
    earlier = tmp_path / "eval_samples_24_inception.json"
    earlier.write_text('{"metrics": {"fid": 1.0}}\n')
    before = digests(tmp_path)
    assert cli("eval", "--samples", samples, "--ref", samples, "--no-cache", "--no-progress") == 1
    line = one_error_line(capsys)
    assert line.startswith("irepa eval: fid could not be computed") and f"the earlier {earlier} is kept" in line
    failed = tmp_path / "eval_samples_24_inception.failed.json"
    assert json.loads(failed.read_text())["errors"] == {"fid": "fid: the matrix square root is not finite"}
    assert {k: v for k, v in digests(tmp_path).items() if k != failed.name} == before


def test_eval_names_a_folder_given_as_samples(tmp_path, capsys):
    assert cli("eval", "--samples", tmp_path, "--ref", "fashion-mnist") == 3
    assert f"--samples {tmp_path} is a folder, not a file" in one_error_line(capsys)

"""Latent caches: resumable byte-identical shards, statistics, flipped entries, mismatch refusal."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from irepa.codecs.vae import load_vae
from irepa.data import (
    CacheMismatchError,
    CorruptImageError,
    DataConfig,
    SampleKey,
    build_dataset,
    denormalize_latents,
    normalize_latents,
    prepare_latents,
    sample_posterior,
)
from irepa.data import cli as data_cli
from irepa.data.prepare import Processes
from irepa.utils import io as atomic

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RES = 32


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


def write_images(root: Path, per_class: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for name, count in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            h, w = rng.integers(32, 48, size=2)
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            pixels[:, : w // 3] //= 4  # left/right asymmetry, so a flip changes the latents
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_images(root, {"cat": 4, "dog": 3, "fox": 3})  # 10 items -> shards of 4, 4, 2
    return root


def run(images: Path, vae: Path, out: Path, **kwargs):
    cfg = DataConfig(
        source="folder",
        path=str(images),
        resolution=kwargs.pop("resolution", RES),
        on_corrupt=kwargs.pop("on_corrupt", "skip"),
    )
    kwargs.setdefault("processes", Processes())
    return prepare_latents(cfg, str(vae), out, batch_size=3, shard_size=4, num_workers=0, **kwargs)


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.safetensors"))}


@pytest.fixture(scope="module")
def reference(images, vae_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    run(images, vae_dir, out)
    return out


class Killed(RuntimeError):
    pass


def test_resumed_run_writes_byte_identical_shards(images, vae_dir, reference, tmp_path):
    out = tmp_path / "cache"

    def kill_after_first(shard):
        raise Killed(f"stopped after shard {shard}")

    with pytest.raises(Killed):
        run(images, vae_dir, out, on_shard_done=kill_after_first)
    assert sorted(shard_bytes(out)) == ["shard-00000.safetensors"]
    assert json.loads((out / "index.json").read_text())["complete"] is False
    with pytest.raises(CacheMismatchError, match="incomplete"):
        build_dataset(DataConfig(source="latents", path=str(out), resolution=RES))
    stale = out / ".shard-00001.safetensors.tmp-424242"  # what a kill mid-write leaves
    stale.write_bytes(b"half a shard")
    first_shard = (out / "shard-00000.safetensors").stat().st_mtime_ns

    encoded = []
    index = run(images, vae_dir, out, on_shard_done=encoded.append)
    assert encoded == [1, 2]  # shard 0 was not recomputed
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == first_shard
    assert not stale.exists() and index["complete"]
    assert shard_bytes(out) == shard_bytes(reference)
    assert (out / "index.json").read_bytes() == (reference / "index.json").read_bytes()


def test_crash_while_writing_leaves_no_shard(images, vae_dir, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    real_replace = atomic.os.replace

    def crash_on_second(src, dst):
        if str(dst).endswith("shard-00001.safetensors"):
            raise OSError("disk died")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", crash_on_second)
    with pytest.raises(OSError, match="disk died"):
        run(images, vae_dir, out)
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "shard-00000.safetensors"]
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert run(images, vae_dir, out)["complete"]


def test_processes_take_disjoint_shards(images, vae_dir, reference, tmp_path):
    out = tmp_path / "cache"
    done: dict[int, list[int]] = {0: [], 1: []}
    with pytest.raises(RuntimeError, match="not written"):  # process 0 finishes first; shard 1 is missing
        run(images, vae_dir, out, processes=Processes(0, 2), on_shard_done=done[0].append)
    run(images, vae_dir, out, processes=Processes(1, 2), on_shard_done=done[1].append)
    assert done == {0: [0, 2], 1: [1]}
    final_pass = []
    assert run(images, vae_dir, out, on_shard_done=final_pass.append)["complete"] and final_pass == []
    assert shard_bytes(out) == shard_bytes(reference)


def test_statistics_equal_numpy_over_the_cache(reference):
    index = json.loads((reference / "index.json").read_text())
    shards = [load_file(str(reference / s["file"])) for s in index["shards"]]
    means = np.concatenate([s["moments"][s["valid"].astype(bool), :4] for s in shards]).astype(np.float64)
    assert means.shape == (10, 4, RES // 2, RES // 2)
    np.testing.assert_allclose(
        index["latent_stats"]["mean"], means.mean(axis=(0, 2, 3)), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(index["latent_stats"]["std"], means.std(axis=(0, 2, 3)), rtol=1e-10)
    ds = build_dataset(DataConfig(source="latents", path=str(reference), resolution=RES))
    mean, std = ds.latent_stats
    assert mean.shape == std.shape == (4,) and ds.latent_shape == (4, RES // 2, RES // 2)
    np.testing.assert_allclose(std.numpy(), means.std(axis=(0, 2, 3)), rtol=1e-6)


def test_flipped_key_returns_the_flipped_latent_entry(reference, vae_dir, images):
    ds = build_dataset(DataConfig(source="latents", path=str(reference), resolution=RES))
    assert len(ds) == 10 and ds.num_classes == 3
    shard = load_file(str(reference / "shard-00001.safetensors"))
    plain, flipped = ds[SampleKey(5, False)], ds[SampleKey(5, True)]
    np.testing.assert_array_equal(plain["moments"].numpy(), shard["moments"][1])
    np.testing.assert_array_equal(flipped["moments"].numpy(), shard["moments_flip"][1])
    torch.testing.assert_close(flipped["image"], plain["image"].flip(-1), rtol=0, atol=0)
    assert flipped["moments"].shape == (8, RES // 2, RES // 2)
    assert not torch.allclose(plain["moments"], flipped["moments"], atol=1e-3)
    # The cached entries are the VAE's posterior of exactly these pixels (mean, logvar).
    vae = load_vae(str(vae_dir))
    with torch.no_grad():
        for item in (plain, flipped):
            dist = vae.encode(item["image"][None] * 2 - 1).latent_dist
            torch.testing.assert_close(
                item["moments"][None], torch.cat([dist.mean, dist.logvar], 1), rtol=1e-4, atol=1e-5
            )


def test_cache_refuses_mismatched_data(reference, images, vae_dir, tmp_path):
    cfg = DataConfig(source="latents", path=str(reference), resolution=RES)
    with pytest.raises(CacheMismatchError, match="resolution 32, not 64"):
        build_dataset(cfg.replace(resolution=64))
    with pytest.raises(CacheMismatchError, match="VAE"):
        build_dataset(cfg.replace(vae="stabilityai/sd-vae-ft-ema"))
    assert len(build_dataset(cfg.replace(vae=str(vae_dir)))) == 10
    copy = tmp_path / "copy"
    shutil.copytree(images, copy)
    assert len(build_dataset(cfg.replace(image_root=str(copy)))) == 10  # moved pixels are fine
    (copy / "dog" / "02.png").rename(copy / "dog" / "99.png")
    with pytest.raises(CacheMismatchError, match="different files"):
        build_dataset(cfg.replace(image_root=str(copy)))
    shutil.copy(copy / "dog" / "99.png", copy / "fox" / "extra.png")
    with pytest.raises(CacheMismatchError, match="holds 10 items but the images .* number 11"):
        build_dataset(cfg.replace(image_root=str(copy)))
    with pytest.raises(CacheMismatchError, match="shard_size"):
        prepare_latents(
            DataConfig(source="folder", path=str(images), resolution=RES),
            str(vae_dir),
            reference,
            shard_size=5,
            num_workers=0,
            processes=Processes(),
        )


def test_unreadable_images_in_prepare(images, vae_dir, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(images, data)
    (data / "dog" / "01b.png").write_bytes(b"\x89PNG broken")
    with caplog.at_level(logging.WARNING, logger="irepa.data"):
        index = run(data, vae_dir, tmp_path / "skip")
    assert index["count"] == 11 and index["num_valid"] == 10
    assert [s["file"] for s in index["skipped"]] == [str(data / "dog" / "01b.png")]
    assert "1 unreadable image(s) left out of the cache" in caplog.text and "01b.png" in caplog.text
    ds = build_dataset(DataConfig(source="latents", path=str(tmp_path / "skip"), resolution=RES))
    assert len(ds) == 10 and "01b.png" not in " ".join(ds.describe(i) for i in range(len(ds)))
    with pytest.raises(CorruptImageError, match="01b.png"):
        run(data, vae_dir, tmp_path / "fail", on_corrupt="fail")


def test_cli_prepare_latents_and_offline_vae(images, vae_dir, reference, tmp_path, monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    data_cli.add_parser(parser.add_subparsers())
    argv = [
        "prepare-latents",
        "--data",
        str(images),
        "--vae",
        str(vae_dir),
        "--resolution",
        str(RES),
        "--out",
        str(tmp_path / "cli"),
        "--batch-size",
        "3",
        "--shard-size",
        "4",
        "--num-workers",
        "0",
    ]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert "10 items" in capsys.readouterr().out
    assert shard_bytes(tmp_path / "cli") == shard_bytes(reference)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set.*--vae"):
        load_vae("stabilityai/sd-vae-ft-mse")


def test_posterior_sampling_and_normalisation():
    g = torch.Generator().manual_seed(3)
    moments = torch.randn(2, 8, 4, 4, generator=g)
    z = sample_posterior(moments, torch.Generator().manual_seed(9))
    eps = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(z, moments[:, :4] + torch.exp(moments[:, 4:] / 2) * eps)
    mean, std = torch.tensor([0.1, -0.2, 0.3, 0.0]), torch.tensor([0.5, 1.0, 2.0, 4.0])
    normed = normalize_latents(z, mean, std)
    torch.testing.assert_close(normed[:, 2], (z[:, 2] - 0.3) / 2.0)
    torch.testing.assert_close(denormalize_latents(normed, mean, std), z)


def test_every_item_maps_to_its_cache_row_through_the_loader(reference, monkeypatch):
    from irepa.data import latent_cache, make_loader

    monkeypatch.setattr(latent_cache, "OPEN_SHARDS", 1)  # force handle eviction between shards
    ds = build_dataset(DataConfig(source="latents", path=str(reference), resolution=RES))
    index = json.loads((reference / "index.json").read_text())
    shards = [load_file(str(reference / s["file"])) for s in index["shards"]]
    rows = {name: np.concatenate([s[name] for s in shards]) for name in ("moments", "moments_flip", "labels")}
    for i in range(len(ds)):
        for flip in (False, True):
            item = ds[SampleKey(i, flip)]
            expected = rows["moments_flip" if flip else "moments"][i]
            np.testing.assert_array_equal(item["moments"].numpy(), expected)
            assert int(item["label"]) == rows["labels"][i]
    batch = next(iter(make_loader(ds, batch_size=4, seed=2, start_step=3, num_workers=2)))
    for moments, idx, flipped in zip(batch["moments"], batch["index"], batch["flipped"]):
        expected = rows["moments_flip" if flipped else "moments"][int(idx)]
        np.testing.assert_array_equal(moments.numpy(), expected)


def test_latent_items_without_images_decode_nothing(reference, monkeypatch):
    from irepa.codecs import unit_images
    from irepa.data import folder

    cfg = DataConfig(source="latents", path=str(reference), resolution=RES)
    plain, raw = build_dataset(cfg), build_dataset(cfg, image_mode="uint8")
    expected = [plain[SampleKey(i, i % 2 == 1)] for i in range(len(plain))]
    for i, want in enumerate(expected):
        got = raw[SampleKey(i, i % 2 == 1)]
        assert got["image"].dtype == torch.uint8 and torch.equal(unit_images(got["image"]), want["image"])
    monkeypatch.setattr(folder, "load_image_file", lambda *a: pytest.fail("an image was decoded"))
    bare = build_dataset(cfg, image_mode="none")
    for i, want in enumerate(expected):
        got = bare[SampleKey(i, i % 2 == 1)]
        assert "image" not in got and sorted(got) == sorted(k for k in want if k != "image")
        for name in ("moments", "label", "index", "flipped"):
            assert torch.equal(got[name], want[name])

"""Datasets and pixel transforms: ADM centre crop, folder labels, unreadable files, Fashion-MNIST, HF."""

from __future__ import annotations

import gzip
import logging
import struct
import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from irepa.data import CorruptImageError, DataConfig, SampleKey, build_dataset, center_crop_arr
from irepa.data import fashion_mnist as fm
from irepa.data.folder import ImageFolderDataset, list_image_folder
from irepa.data.synthetic import COLOURS, SHAPES, SyntheticShapes
from irepa.data.transforms import fit_small_image

torch.set_num_threads(1)


def random_image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def write_folder(root: Path, layout: dict[str, int], size: tuple[int, int] = (40, 48)) -> None:
    """``layout``: class name -> number of PNG files (H, W = size)."""
    for c, (name, count) in enumerate(layout.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            random_image(*size, seed=100 * c + i).save(root / name / f"img_{i:03d}.png")


# ---------------------------------------------------------------- ADM centre crop


def box_halve(a: np.ndarray) -> np.ndarray:
    """Halve an even-sized uint8 (H, W, 3) array by pair averages: columns first, then rows, each
    pass rounded half up to uint8 (how a separable 8-bit resampler with a BOX kernel computes it)."""
    a = a.astype(np.int64)
    cols = (a[:, 0::2] + a[:, 1::2] + 1) // 2
    return ((cols[0::2] + cols[1::2] + 1) // 2).astype(np.uint8)


def test_center_crop_halving_path_matches_numpy_box_average():
    # 256x320 -> two exact halvings (128x160, 64x80), no resize needed, centre crop of 64 columns.
    image = random_image(256, 320, seed=1)
    got = center_crop_arr(image, 64)
    step = np.asarray(image)
    for _ in range(2):
        step = box_halve(step)
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, step[:, 8:72])


@pytest.mark.parametrize("height,width,res", [(90, 150, 48), (375, 500, 64), (300, 200, 64)])
def test_center_crop_matches_reference_steps(height, width, res):
    image = random_image(height, width, seed=height)
    # Independent computation: halve while the short side allows, bicubic to res, slice the middle.
    ref = image
    while min(ref.width, ref.height) >= 2 * res:
        ref = ref.resize((ref.width // 2, ref.height // 2), Image.BOX)
    s = res / min(ref.width, ref.height)
    ref = np.asarray(ref.resize((round(ref.width * s), round(ref.height * s)), Image.BICUBIC))
    top, left = (ref.shape[0] - res) // 2, (ref.shape[1] - res) // 2
    np.testing.assert_array_equal(center_crop_arr(image, res), ref[top : top + res, left : left + res])


def test_center_crop_keeps_the_centre():
    # A white column in the middle of a wide black image stays in the middle of the crop.
    a = np.zeros((64, 256, 3), np.uint8)
    a[:, 126:130] = 255
    out = center_crop_arr(Image.fromarray(a), 32)
    column_profile = out[..., 0].astype(float).mean(axis=0)
    assert abs(np.argmax(column_profile) - 15.5) <= 1
    assert column_profile[:8].max() < 5 and column_profile[-8:].max() < 5


# ---------------------------------------------------------------- image folder


def test_folder_labels_are_sorted_folder_names_and_stable(tmp_path):
    write_folder(tmp_path / "data", {"zebra": 2, "apple": 3, "Mango": 1})
    (tmp_path / "data" / "apple" / "notes.txt").write_text("not an image")
    files, labels, classes = list_image_folder(tmp_path / "data")
    assert classes == ["Mango", "apple", "zebra"]  # code-point order, independent of creation order
    assert [f.split("/")[0] for f in files] == ["Mango"] + ["apple"] * 3 + ["zebra"] * 2
    assert labels == [0, 1, 1, 1, 2, 2]
    assert not any(f.endswith(".txt") for f in files)
    ds = ImageFolderDataset(tmp_path / "data", resolution=32)
    again = ImageFolderDataset(tmp_path / "data", resolution=32)
    assert ds.files == again.files and ds.fingerprint() == again.fingerprint()
    assert ds.num_classes == 3 and len(ds) == 6
    item = ds[4]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and int(item["label"]) == 2
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    random_image(40, 48, seed=7).save(tmp_path / "data" / "zebra" / "img_999.png")
    assert ImageFolderDataset(tmp_path / "data", resolution=32).fingerprint() != ds.fingerprint()


def test_folder_accepts_train_subfolder_and_checks_num_classes(tmp_path):
    write_folder(tmp_path / "imagenet" / "train", {"n01": 2, "n02": 2})
    write_folder(tmp_path / "imagenet" / "val", {"n01": 1, "n02": 1})
    cfg = DataConfig(source="folder", path=str(tmp_path / "imagenet"), resolution=32)
    ds = build_dataset(cfg)
    assert len(ds) == 4 and ds.root.name == "train"
    assert len(build_dataset(cfg.replace(split="val"))) == 2
    assert len(build_dataset(cfg.replace(limit=3))) == 3
    with pytest.raises(ValueError, match="num_classes"):
        build_dataset(cfg.replace(num_classes=1000))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset(cfg.replace(path=str(tmp_path / "missing")))


def test_flip_key_mirrors_the_image(tmp_path):
    write_folder(tmp_path / "d", {"a": 2})
    ds = build_dataset(DataConfig(source="folder", path=str(tmp_path / "d"), resolution=32))
    plain, flipped = ds[SampleKey(1, False)], ds[SampleKey(1, True)]
    assert bool(flipped["flipped"]) and not bool(plain["flipped"])
    torch.testing.assert_close(flipped["image"], plain["image"].flip(-1), rtol=0, atol=0)
    no_flip = build_dataset(DataConfig(source="folder", path=str(tmp_path / "d"), resolution=32, flip=False))
    torch.testing.assert_close(no_flip[SampleKey(1, True)]["image"], plain["image"], rtol=0, atol=0)


# ---------------------------------------------------------------- unreadable images


def make_corrupt_folder(root: Path) -> tuple[Path, Path]:
    write_folder(root, {"a": 3, "b": 2})
    garbage = root / "a" / "img_001b.jpg"  # sorts right after img_001.png
    garbage.write_bytes(b"this is not a jpeg")
    truncated = root / "b" / "img_000b.png"
    good = root / "b" / "img_000.png"
    truncated.write_bytes(good.read_bytes()[:200])
    return garbage, truncated


def test_unreadable_images_are_skipped_and_logged(tmp_path, caplog):
    garbage, truncated = make_corrupt_folder(tmp_path / "d")
    ds = ImageFolderDataset(tmp_path / "d", resolution=32, on_corrupt="skip")
    bad = ds.files.index("a/img_001b.jpg")
    with caplog.at_level(logging.WARNING, logger="irepa.data"):
        item = ds[bad]
    # Replaced by the next readable item, deterministically.
    assert int(item["index"]) == bad + 1
    torch.testing.assert_close(item["image"], ds[bad + 1]["image"])
    assert str(garbage) in caplog.text and str(garbage) in ds.corrupt_files
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="irepa.data"):
        verified = ImageFolderDataset(tmp_path / "d", resolution=32, on_corrupt="skip", verify=True)
    assert len(verified) == len(ds) - 2
    assert "dropping 2 unreadable" in caplog.text
    assert str(garbage) in caplog.text and str(truncated) in caplog.text


def test_unreadable_images_fail_naming_the_file(tmp_path):
    garbage, truncated = make_corrupt_folder(tmp_path / "d")
    ds = ImageFolderDataset(tmp_path / "d", resolution=32, on_corrupt="fail")
    with pytest.raises(CorruptImageError, match="img_001b.jpg") as err:
        ds[ds.files.index("a/img_001b.jpg")]
    assert err.value.path == str(garbage)
    with pytest.raises(CorruptImageError, match="img_000b.png"):
        ds[ds.files.index("b/img_000b.png")]
    with pytest.raises(CorruptImageError, match="2 unreadable"):
        ImageFolderDataset(tmp_path / "d", resolution=32, on_corrupt="fail", verify=True)


# ---------------------------------------------------------------- Fashion-MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding written here from the format description (not with the reader under test)."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_fashion_files(folder: Path, n: int, split_prefix: str, gz: bool, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    for stem, array in (
        (f"{split_prefix}-images-idx3-ubyte", images),
        (f"{split_prefix}-labels-idx1-ubyte", labels),
    ):
        data = idx_bytes(array)
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_reader_parses_idx_files(tmp_path, gz):
    images, labels = write_fashion_files(tmp_path, 7, "t10k", gz=gz)
    got_images, got_labels = fm.read_fashion_mnist(str(tmp_path), split="test")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels.astype(np.int64))
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int64


def test_idx_reader_handles_wide_types_and_rejects_bad_files(tmp_path):
    ints = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    (tmp_path / "ints.idx").write_bytes(idx_bytes(ints))
    np.testing.assert_array_equal(fm.read_idx(tmp_path / "ints.idx"), ints.astype(np.int32))
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX"):
        fm.read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(idx_bytes(np.zeros((4, 5), np.uint8))[:-3])
    with pytest.raises(ValueError, match="payload"):
        fm.read_idx(tmp_path / "short.idx")


def test_fashion_env_override_and_offline_error(tmp_path, monkeypatch):
    images, _ = write_fashion_files(tmp_path / "fm", 3, "train", gz=True, seed=3)
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path / "fm"))
    np.testing.assert_array_equal(fm.read_fashion_mnist(split="train")[0], images)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fm.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        fm.read_fashion_mnist(str(tmp_path / "empty"), split="test")
    assert "download failed" in str(err.value) and str(tmp_path / "empty") in str(err.value)
    with pytest.raises(ValueError, match="valid: train, test"):
        fm.read_fashion_mnist(str(tmp_path / "fm"), split="validation")


def bilinear_up2(x: np.ndarray) -> np.ndarray:
    """Exact 2x bilinear upsampling with half-pixel centres, one axis at a time."""

    def axis0(a):
        prev = np.concatenate([a[:1], a[:-1]])
        nxt = np.concatenate([a[1:], a[-1:]])
        out = np.empty((2 * a.shape[0],) + a.shape[1:])
        out[0::2] = 0.75 * a + 0.25 * prev
        out[1::2] = 0.75 * a + 0.25 * nxt
        return out

    return axis0(axis0(x).T).T


def test_fashion_resolution_padding_and_resize(tmp_path):
    images, labels = write_fashion_files(tmp_path, 4, "train", gz=True, seed=5)
    cfg = DataConfig(source="fashion-mnist", path=str(tmp_path), resolution=32)
    ds = build_dataset(cfg)
    assert ds.num_classes == 10 and len(ds) == 4
    item = ds[2]
    img = item["image"].numpy()
    assert img.shape == (3, 32, 32) and int(item["label"]) == labels[2]
    np.testing.assert_allclose(img[:, 2:30, 2:30], np.broadcast_to(images[2] / 255.0, (3, 28, 28)), atol=1e-6)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(img[:, border] == 0)
    np.testing.assert_allclose(
        build_dataset(cfg.replace(resolution=28))[2]["image"][0].numpy(), images[2] / 255.0, atol=1e-6
    )
    up = build_dataset(cfg.replace(resolution=56))[2]["image"].numpy()
    np.testing.assert_allclose(up[1], bilinear_up2(images[2] / 255.0), atol=1e-5)
    np.testing.assert_array_equal(up[0], up[2])
    assert fit_small_image(images[0], 16).shape == (16, 16, 3)


@pytest.mark.skipif(
    not Path(fm.DEBIAN_DIR, "t10k-labels-idx1-ubyte.gz").exists(), reason="Debian package absent"
)
def test_fashion_reader_on_the_installed_test_split():
    images, labels = fm.read_fashion_mnist(fm.DEBIAN_DIR, split="test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 1000))  # balanced test set


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_class_coded():
    a, b = SyntheticShapes(64, 32, num_classes=16, seed=3), SyntheticShapes(64, 32, num_classes=16, seed=3)
    other = SyntheticShapes(64, 32, num_classes=16, seed=4)
    for i in (0, 5, 17):
        torch.testing.assert_close(a[i]["image"], b[i]["image"], rtol=0, atol=0)
        assert not torch.equal(a[i]["image"], other[i]["image"])
    assert np.bincount([int(a[i]["label"]) for i in range(len(a))]).tolist() == [4] * 16
    for i in range(16):
        pixels = a[i]["image"].permute(1, 2, 0).reshape(-1, 3).numpy()
        saturated = pixels[pixels.max(axis=1) - pixels.min(axis=1) > 0.4]  # shape pixels, not grey background
        colour = np.asarray(list(COLOURS.values())[i // len(SHAPES)])
        np.testing.assert_allclose(saturated.mean(axis=0), colour, atol=0.05)
    with pytest.raises(ValueError, match="1..16"):
        SyntheticShapes(8, 32, num_classes=17)


# ---------------------------------------------------------------- config and optional HF source


def test_config_rejects_bad_values_with_valid_choices():
    with pytest.raises(ValueError, match="valid sources: synthetic, folder"):
        DataConfig(source="imagenet")
    with pytest.raises(ValueError, match="skip, fail"):
        DataConfig(on_corrupt="ignore")
    with pytest.raises(ValueError, match="needs `path`"):
        DataConfig(source="folder")
    with pytest.raises(ValueError, match="valid keys"):
        DataConfig.from_dict({"source": "synthetic", "resolutoin": 32})
    cfg = DataConfig(source="synthetic", resolution=32, limit=5)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    assert len(build_dataset(cfg)) == 5


class _FakeClassLabel:
    num_classes = 3


class _FakeHFDataset:
    def __init__(self, rows):
        self.rows = rows
        self.column_names = ["img", "label"]
        self.features = {"img": object(), "label": _FakeClassLabel()}
        self._fingerprint = "abc123"

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def test_hf_source_reads_rows_and_reports_missing_package(monkeypatch):
    pictures = [random_image(48, 64, seed=i) for i in range(4)]
    rows = [{"img": p, "label": i % 3} for i, p in enumerate(pictures)]
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return _FakeHFDataset(rows)

    fake = types.SimpleNamespace(load_dataset=load_dataset, load_from_disk=None)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    ds = build_dataset(DataConfig(source="hf", path="someone/tiny", split="train", resolution=32))
    assert calls == [("someone/tiny", "train")] and ds.num_classes == 3 and len(ds) == 4
    item = ds[SampleKey(3, True)]
    expected = torch.from_numpy(center_crop_arr(pictures[3], 32)[:, ::-1].copy()).permute(2, 0, 1) / 255.0
    torch.testing.assert_close(item["image"], expected)
    assert int(item["label"]) == 0
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        build_dataset(DataConfig(source="hf", path="someone/tiny"))

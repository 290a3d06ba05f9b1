"""What items carry as "image": float (default), the source's uint8, or nothing; and the uint8 -> float helper."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from irepa.codecs import unit_images
from irepa.data import DataConfig, SampleKey, build_dataset, make_loader
from irepa.data import fashion_mnist as fm
from irepa.data import folder as folder_module
from irepa.data.hf import HFImageDataset
from irepa.data.synthetic import SyntheticShapes
from irepa.data.transforms import to_chw_float, to_chw_tensor
from irepa.errors import ConfigError

torch.set_num_threads(1)


def write_folder(root: Path, per_class: dict[str, int], size: tuple[int, int] = (40, 48)) -> Path:
    rng = np.random.default_rng(0)
    for name, count in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def every_byte_image() -> np.ndarray:
    """A uint8 (16, 16, 3) image holding every value 0..255 in each channel."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    return np.stack([values, values.T, values[::-1]], axis=-1)


def test_unit_images_is_bit_identical_to_the_dataset_side_conversion():
    rng = np.random.default_rng(1)
    pictures = [every_byte_image()] + [rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for _ in range(3)]
    dataset_side = torch.stack([to_chw_float(p) for p in pictures])  # what float-mode items hold
    batch = torch.stack([to_chw_tensor(p) for p in pictures])  # what uint8-mode items hold
    assert batch.dtype == torch.uint8 and batch.shape == (4, 3, 16, 16)
    assert batch.nbytes * 4 == dataset_side.nbytes
    converted = unit_images(batch)
    assert converted.dtype == torch.float32
    assert torch.equal(converted.view(torch.int32), dataset_side.view(torch.int32))  # every bit
    independent = np.stack([p.transpose(2, 0, 1).astype(np.float32) / np.float32(255) for p in pictures])
    np.testing.assert_array_equal(converted.numpy(), independent)
    assert torch.equal(unit_images(batch, device="cpu"), converted)
    # why a table and not a division: a multiplication by 1/255 (how CUDA divides by a scalar) differs
    x = torch.arange(256, dtype=torch.float32)
    assert not torch.equal(x * (1 / 255), x / 255)
    # float images: float32, values untouched
    floats = torch.rand(2, 3, 4, 4)
    assert torch.equal(unit_images(floats), floats)
    assert unit_images(floats.double()).dtype == torch.float32


def test_folder_items_in_each_image_mode(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "d", {"a": 2, "b": 2})
    cfg = DataConfig(source="folder", path=str(root), resolution=32)
    plain, raw, bare = (build_dataset(cfg, image_mode=m) for m in ("float", "uint8", "none"))
    assert plain.image_mode == "float" and build_dataset(cfg).image_mode == "float"  # the default is unchanged
    for key in (SampleKey(1, False), SampleKey(3, True)):
        a, b = plain[key], raw[key]
        assert a["image"].dtype == torch.float32 and b["image"].dtype == torch.uint8
        assert b["image"].shape == (3, 32, 32)
        assert torch.equal(unit_images(b["image"][None])[0], a["image"])
        for name in ("label", "index", "flipped"):
            assert torch.equal(a[name], b[name])
    monkeypatch.setattr(folder_module, "load_image_file", lambda *a: pytest.fail("an image was decoded"))
    for i in range(4):
        item = bare[SampleKey(i, True)]
        assert "image" not in item and int(item["label"]) == (0 if i < 2 else 1) and bool(item["flipped"])
    with pytest.raises(ConfigError, match="unknown image_mode 'jpeg'; valid: float, uint8, none"):
        build_dataset(cfg, image_mode="jpeg")


def test_loader_batches_of_uint8_images_match_float_batches(tmp_path):
    root = write_folder(tmp_path / "d", {"a": 3, "b": 3})
    cfg = DataConfig(source="folder", path=str(root), resolution=16)
    float_batch = next(iter(make_loader(build_dataset(cfg), batch_size=4, seed=3, start_step=1)))
    uint8_batch = next(iter(make_loader(build_dataset(cfg, image_mode="uint8"), batch_size=4, seed=3, start_step=1)))
    assert uint8_batch["image"].dtype == torch.uint8 and uint8_batch["image"].shape == (4, 3, 16, 16)
    assert torch.equal(unit_images(uint8_batch["image"]), float_batch["image"])
    assert torch.equal(uint8_batch["flipped"], float_batch["flipped"])
    bare = next(iter(make_loader(build_dataset(cfg, image_mode="none"), batch_size=4, seed=3, start_step=1)))
    assert "image" not in bare and torch.equal(bare["label"], float_batch["label"])


def test_float_sources_stay_float_in_uint8_mode():
    plain, raw = SyntheticShapes(8, 16, seed=2), SyntheticShapes(8, 16, seed=2, image_mode="uint8")
    for i in (0, 5):
        assert raw[i]["image"].dtype == torch.float32 and torch.equal(raw[i]["image"], plain[i]["image"])
        assert torch.equal(unit_images(raw[i]["image"]), plain[i]["image"])


def test_fashion_mnist_gives_uint8_when_no_resampling_is_needed(monkeypatch):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    monkeypatch.setattr(fm, "read_fashion_mnist", lambda root, split: (images, np.array([1, 2, 3])))
    for resolution in (28, 30, 32):
        pad = (resolution - 28) // 2
        plain = fm.FashionMNISTDataset(resolution=resolution)[SampleKey(2, True)]["image"]
        raw = fm.FashionMNISTDataset(resolution=resolution, image_mode="uint8")[SampleKey(2, True)]["image"]
        expected = np.pad(images[2][:, ::-1], pad)  # mirrored, then a zero border
        assert raw.dtype == torch.uint8
        np.testing.assert_array_equal(raw.numpy(), np.broadcast_to(expected, (3, resolution, resolution)))
        np.testing.assert_array_equal(plain.numpy(), np.broadcast_to(expected.astype(np.float32) / np.float32(255),
                                                                     (3, resolution, resolution)))
        assert torch.equal(unit_images(raw), plain)
    resized = fm.FashionMNISTDataset(resolution=56, image_mode="uint8")[0]["image"]
    assert resized.dtype == torch.float32 and torch.equal(resized, fm.FashionMNISTDataset(resolution=56)[0]["image"])


class FakeHFDataset:
    """Rows with an image and a label column; counts how often a row with its image is read."""

    def __init__(self, rows, columns=("img", "label")):
        self.rows, self.column_names = rows, list(columns)
        self.features = {"img": object(), "label": types.SimpleNamespace(num_classes=3)}
        self.image_reads = 0

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        if "img" in self.column_names:
            self.image_reads += 1
        return {k: v for k, v in self.rows[i].items() if k in self.column_names}

    def select_columns(self, columns):
        view = FakeHFDataset(self.rows, columns)
        view.features = self.features
        return view


def test_hf_labels_are_read_without_the_images(monkeypatch):
    rng = np.random.default_rng(0)
    rows = [{"img": Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)), "label": i % 3}
            for i in range(5)]
    fake = FakeHFDataset(rows)
    monkeypatch.setitem(sys.modules, "datasets",
                        types.SimpleNamespace(load_dataset=lambda name, split: fake, load_from_disk=None))
    bare = HFImageDataset("someone/tiny", resolution=16, image_mode="none")
    assert [int(bare[i]["label"]) for i in range(5)] == [0, 1, 2, 0, 1] and fake.image_reads == 0
    raw = HFImageDataset("someone/tiny", resolution=16, image_mode="uint8")[SampleKey(4, True)]
    plain = HFImageDataset("someone/tiny", resolution=16)[SampleKey(4, True)]
    assert raw["image"].dtype == torch.uint8 and torch.equal(unit_images(raw["image"]), plain["image"])
    assert fake.image_reads == 2

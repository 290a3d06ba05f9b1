"""Corrupt and wrong-mode images in a folder dataset: skipped and counted, or refused, as configured."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from faultkit import cli
from PIL import Image

from irepa.data import CorruptImageError, DataConfig, build_dataset

GOOD = ["a/ok0.png", "a/ok1.png", "a/cmyk.jpg", "b/ok2.png"]  # CMYK converts to RGB faithfully
BAD = ["b/cut.png", "b/junk.jpg", "b/deep16.png"]  # truncated, not an image, 16-bit grey


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a/ok0.png", "a/ok1.png", "b/ok2.png", "b/cut.png"):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / name)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).convert("CMYK").save(root / "a/cmyk.jpg")
    data = (root / "b/cut.png").read_bytes()
    (root / "b/cut.png").write_bytes(data[: len(data) // 2])
    (root / "b/junk.jpg").write_bytes(b"this is not an image" * 10)
    Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(root / "b/deep16.png")
    assert Image.open(root / "b/deep16.png").mode.startswith("I")
    return root


def config(root, **kw) -> DataConfig:
    return DataConfig(source="folder", path=str(root), resolution=8, flip=False, num_workers=0, **kw)


def test_verify_skips_and_counts_the_bad_images(folder, caplog):
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(config(folder, verify=True, on_corrupt="skip"))
    assert sorted(ds.files) == sorted(GOOD)
    assert ds.corrupt_files == {str(folder / b) for b in BAD}
    assert "dropping 3 unreadable image(s)" in caplog.text
    assert all(ds[i]["image"].shape == (3, 8, 8) for i in range(len(ds)))


def test_without_verify_bad_items_are_replaced_and_counted_as_met(folder):
    ds = build_dataset(config(folder, on_corrupt="skip"))
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == len(GOOD) + len(BAD)  # batches keep their size
    assert ds.corrupt_files == {str(folder / b) for b in BAD}
    served = {ds.files[int(item["index"])] for item in items}
    assert served == set(GOOD)  # every bad item was replaced by a readable one


@pytest.mark.parametrize("verify", [True, False])
def test_fail_policy_refuses_naming_the_file(folder, verify):
    with pytest.raises(CorruptImageError) as err:
        ds = build_dataset(config(folder, verify=verify, on_corrupt="fail"))
        for i in range(len(ds)):
            ds[i]
    assert any(str(folder / b) in str(err.value) for b in BAD)


def test_prepare_latents_counts_skipped_images_or_refuses(folder, tiny_vae, tmp_path, capsys):
    args = ["prepare-latents", "--data", folder, "--vae", tiny_vae, "--resolution", "8", "--num-workers", "0"]
    assert cli(*args, "--out", tmp_path / "skip") == 0
    index = json.loads((tmp_path / "skip" / "index.json").read_text())
    assert sorted(s["file"] for s in index["skipped"]) == sorted(str(folder / b) for b in BAD)
    assert index["num_valid"] == len(GOOD)
    assert "3 unreadable" in capsys.readouterr().out

    assert cli(*args, "--out", tmp_path / "fail", "--on-corrupt", "fail") == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("irepa ")]
    assert len(err) == 1 and any(str(folder / b) in err[0] for b in BAD) and "--on-corrupt skip" in err[0]

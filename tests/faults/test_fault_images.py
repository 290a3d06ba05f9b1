"""Corrupt and wrong-mode images in a folder dataset: skipped and counted, or refused, as configured."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from faultkit import TINY_TRAIN, cli, digests, one_error_line
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


# ----------------------------------------------------------------------------- image-data problems: exit 3


def _folder_train(path, tmp_path, *extra) -> list:
    return [*TINY_TRAIN, "--data.source", "folder", "--data.path", path, "--data.num_classes", "2",
            "--out", tmp_path / "run", *extra]


def _image(path, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)


def _empty(root, rng):
    root.mkdir()


def _classes_without_images(root, rng):
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "b" / "readme.txt").write_text("no images here")


def _all_unreadable(root, rng):
    for name in ("a/x.png", "b/y.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not an image")


def _a_file(root, rng):
    _image(root, rng)


def _fewer_images_than_a_batch(root, rng):
    for name in ("a/0.png", "a/1.png", "b/2.png"):
        _image(root / name, rng)


IMAGE_DATA_FAULTS = {  # (what the folder looks like, extra arguments, what the line must say)
    "empty folder": (_empty, [], "no class sub-folders"),
    "class folders without images": (_classes_without_images, [], "no images"),
    "all images unreadable": (_all_unreadable, ["--data.verify", "true"], "none of the 2 images"),
    "a file as the image folder": (_a_file, [], "is a file, not a folder"),
    "a batch larger than the dataset": (_fewer_images_than_a_batch, [], "train.batch_size"),
}


@pytest.mark.parametrize("fault", IMAGE_DATA_FAULTS)
def test_image_data_problems_exit_3_with_one_line(fault, tmp_path, capsys):
    make, extra, says = IMAGE_DATA_FAULTS[fault]
    root = tmp_path / ("x.png" if fault == "a file as the image folder" else "images")
    make(root, np.random.default_rng(0))
    before = digests(tmp_path)
    assert cli(*_folder_train(root, tmp_path, *extra)) == 3
    line = one_error_line(capsys)
    assert says in line and "drop_last" not in line
    assert str(root) in line or fault == "a batch larger than the dataset"
    assert digests(tmp_path) == before  # nothing written, not even the run folder's files


def test_a_skipped_image_is_reported_above_the_progress_bar(tmp_path, capsys):
    """The warning goes through ``tqdm.write``: on its own line, never appended to the bar's text."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i in range(7):
        _image(root / f"{'ab'[i % 2]}/{i}.png", rng)
    (root / "a" / "cut.png").write_bytes(b"truncated")
    logger = logging.getLogger()
    handlers, level = logger.handlers[:], logger.level
    logger.handlers = []  # as in a fresh `irepa` process: the command sets up its own console logging
    try:
        assert cli(*_folder_train(root, tmp_path, "--train.steps", "2", "--train.ckpt_every", "2")) == 0
    finally:
        logger.handlers, logger.level = handlers, level
    pieces = re.split(r"[\r\n]", capsys.readouterr().err)
    warnings = [p for p in pieces if "skipping unreadable image" in p]
    assert warnings and all(p.startswith("WARNING") for p in warnings), warnings

"""Fashion-MNIST: an IDX reader, file lookup / download, and the training dataset.

Files are looked up, in order, in the ``root`` argument, else in ``$IREPA_FASHION_MNIST``, the
Debian ``dataset-fashion-mnist`` package folder and ``$IREPA_HOME/datasets/fashion-mnist``
(``IREPA_HOME`` defaults to ``~/.cache/irepa``). Each file may be gzipped (``.gz``) or raw.
When no folder has them, they are downloaded (md5-checked) into ``root`` or the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from irepa.errors import DataError
from irepa.utils.io import atomic_write_bytes, cache_home

from .base import ImageDataset
from .transforms import fit_small_image, pad_small_image

log = logging.getLogger(__name__)

ENV_VAR = "IREPA_FASHION_MNIST"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"  # the Debian package's install location
MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzipped or raw): zero bytes, type code, rank, big-endian dims, data."""
    path = Path(path)
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header truncated")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path}: IDX payload is {len(data) - header} bytes, dims {dims} need {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


class FashionMNISTNotFound(DataError, FileNotFoundError):
    """The Fashion-MNIST files are neither on disk nor downloadable."""


def cache_dir() -> Path:
    """Download folder: ``$IREPA_HOME/datasets/fashion-mnist``."""
    return cache_home() / "datasets" / "fashion-mnist"


def _search_dirs(root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    dirs = [Path(os.environ[ENV_VAR]).expanduser()] if os.environ.get(ENV_VAR) else []
    return dirs + [Path(DEBIAN_DIR), cache_dir()]


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _download(name: str, directory: Path) -> Path:
    """Fetch one ``.gz`` file from the mirrors into ``directory`` (temp file, md5 check, rename)."""
    target = directory / name
    errors = []
    for mirror in MIRRORS:
        try:
            log.info("downloading %s%s", mirror, name)
            with urllib.request.urlopen(mirror + name, timeout=30) as response:
                data = response.read()
            digest = hashlib.md5(data).hexdigest()
            if digest != MD5[name]:
                raise OSError(f"md5 {digest} != expected {MD5[name]}")
            atomic_write_bytes(target, data)
            return target
        except (urllib.error.URLError, OSError) as err:
            errors.append(f"{mirror}{name}: {err}")
    raise OSError("; ".join(errors))


def read_fashion_mnist(
    root: str | None = None, split: str = "train", download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` ("train": 60k, "test": 10k) as uint8 ``(N, 28, 28)`` and int64 ``(N,)``."""
    if split not in SPLITS:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; valid: {', '.join(SPLITS)}")
    stems = SPLITS[split]
    dirs = _search_dirs(root)
    found = None
    for directory in dirs:
        paths = [_find(directory, stem) for stem in stems]
        if all(paths):
            found = paths
            break
    if found is None:
        target = dirs[0] if root is not None else cache_dir()
        reason = "downloading disabled"
        if download:
            try:
                found = [_download(stem + ".gz", target) for stem in stems]
            except OSError as err:
                reason = f"download failed: {err}"
        if found is None:
            raise FashionMNISTNotFound(
                f"Fashion-MNIST {split} files ({', '.join(s + '[.gz]' for s in stems)}) not found in "
                f"{', '.join(str(d) for d in dirs)} and {reason}",
                fix=f"`apt-get install dataset-fashion-mnist` (installs them in {DEBIAN_DIR}), "
                f"or put the files in {target}, or set {ENV_VAR} to their folder",
            )
    images, labels = read_idx(found[0]), read_idx(found[1])
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"{found[0]} / {found[1]}: expected uint8 images (N, H, W) and N labels, "
            f"got {images.dtype} {images.shape} and {labels.shape}"
        )
    return images, labels.astype(np.int64)


class FashionMNISTDataset(ImageDataset):
    """Fashion-MNIST as RGB ``(3, R, R)``: 28 px kept, 2-px zero padding for 32, else bilinear resize."""

    def __init__(
        self,
        root: str | None = None,
        split: str = "train",
        resolution: int = 32,
        flip: bool = True,
        on_corrupt: str = "skip",
        num_classes: int | None = None,
        limit: int | None = None,
        image_mode: str = "float",
    ):
        super().__init__(resolution, flip, on_corrupt, image_mode)
        if num_classes is not None and num_classes != len(CLASSES):
            raise ValueError(f"Fashion-MNIST has {len(CLASSES)} classes, not num_classes={num_classes}")
        images, labels = read_fashion_mnist(root, split)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.images, self.labels = images, labels
        self.num_classes = len(CLASSES)
        self.classes = list(CLASSES)
        self.split = split
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def load_pixels(self, index: int) -> np.ndarray:
        """uint8 where no resampling is needed (28, 30, 32 px), float32 in [0, 1] otherwise."""
        padded = pad_small_image(self.images[index], self.resolution)
        return padded if padded is not None else fit_small_image(self.images[index], self.resolution)

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def describe(self, index: int) -> str:
        return f"fashion-mnist {self.split} #{index}"

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            digest = hashlib.sha256(np.ascontiguousarray(self.images).tobytes())
            digest.update(np.ascontiguousarray(self.labels).tobytes())
            self._fingerprint = f"fashion-mnist:{self.split}:sha256:" + digest.hexdigest()
        return self._fingerprint

"""Image-folder dataset in the ImageNet layout: ``root/<class>/<file>`` (or ``root/<split>/<class>/``)."""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from irepa.errors import DataError

from .base import CorruptImageError, ImageDataset, load_image_file

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


def resolve_folder_root(path: str | os.PathLike, split: str | None = "train") -> Path:
    """``path/<split>`` when that folder exists (ImageNet's ``train/``), else ``path`` itself."""
    root = Path(path).expanduser()
    layout = f"root/<class>/<image> or root/{split}/<class>/<image>"
    if root.exists() and not root.is_dir():
        raise DataError(f"image folder {root} is a file, not a folder", fix=f"give the folder that holds {layout}")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; expected {layout}")
    if split and (root / split).is_dir():
        return root / split
    return root


def list_image_folder(root: str | os.PathLike) -> tuple[list[str], list[int], list[str]]:
    """Relative image paths, labels and class names; classes are the sorted sub-folder names.

    Files are found recursively inside each class folder, in sorted order, so the listing (and
    every index into it) is the same on every machine.
    """
    root = Path(root)
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"no class sub-folders in {root}",
                        fix="arrange the images in the ImageNet layout root/<class>/<image>")
    files: list[str] = []
    labels: list[int] = []
    ignored = 0
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if filename.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(Path(dirpath, filename).relative_to(root).as_posix())
                    labels.append(label)
                else:
                    ignored += 1
    if ignored:
        log.info(
            "ignored %d non-image files under %s (extensions: %s)", ignored, root, " ".join(IMAGE_EXTENSIONS)
        )
    if not files:
        raise DataError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) in the {len(classes)} class folder(s) of {root}",
                        fix="put the images in root/<class>/<image>, or give the folder that holds them")
    return files, labels, classes


def find_unreadable(paths: list[str], resolution: int, num_workers: int = 1) -> list[str]:
    """Decode every file (threads; PIL releases the GIL) and return those that fail."""

    def bad(path: str) -> str | None:
        try:
            load_image_file(path, resolution)
        except CorruptImageError:
            return path
        return None

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results = list(tqdm(pool.map(bad, paths), total=len(paths), desc="verifying images", unit="img"))
    return [p for p in results if p is not None]


class ImageFolderDataset(ImageDataset):
    """Images of ``root/<class>/...`` ADM-centre-cropped to ``resolution``; labels from sorted folders."""

    def __init__(
        self,
        path: str | os.PathLike,
        resolution: int = 256,
        split: str | None = "train",
        flip: bool = True,
        on_corrupt: str = "skip",
        num_classes: int | None = None,
        limit: int | None = None,
        verify: bool = False,
        num_workers: int = 1,
        image_mode: str = "float",
    ):
        super().__init__(resolution, flip, on_corrupt, image_mode)
        self.root = resolve_folder_root(path, split)
        files, labels, self.classes = list_image_folder(self.root)
        if num_classes is not None and num_classes != len(self.classes):
            raise ValueError(
                f"{self.root} has {len(self.classes)} class folders but num_classes={num_classes}; "
                "set num_classes to null or to the folder count"
            )
        self.num_classes = len(self.classes)
        if limit is not None:
            files, labels = files[:limit], labels[:limit]
        self.files, self.labels = files, np.asarray(labels, dtype=np.int64)
        if verify:
            self._drop_unreadable(num_workers)

    def _drop_unreadable(self, num_workers: int) -> None:
        bad = set(find_unreadable([str(self.root / f) for f in self.files], self.resolution, num_workers))
        if not bad:
            return
        listed = sorted(bad)
        if len(bad) == len(self.files):
            raise DataError(f"none of the {len(bad)} images under {self.root} can be read (e.g. {listed[0]})",
                            fix="check the files (truncated downloads, wrong format, 16-bit images) or give "
                                "another data.path")
        if self.on_corrupt == "fail":
            raise CorruptImageError(
                listed[0], f"{len(listed)} unreadable image(s) under {self.root}: {listed}"
            )
        log.warning("dropping %d unreadable image(s) under %s: %s", len(listed), self.root, listed)
        self.corrupt_files |= bad
        keep = [i for i, f in enumerate(self.files) if str(self.root / f) not in bad]
        self.files = [self.files[i] for i in keep]
        self.labels = self.labels[keep]

    def __len__(self) -> int:
        return len(self.files)

    def path_of(self, index: int) -> str:
        return str(self.root / self.files[index])

    def describe(self, index: int) -> str:
        return self.path_of(index)

    def load_pixels(self, index: int) -> np.ndarray:
        return load_image_file(self.path_of(index), self.resolution)

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for f, y in zip(self.files, self.labels.tolist()):
            digest.update(f"{y}\t{f}\n".encode())
        return "folder:sha256:" + digest.hexdigest()

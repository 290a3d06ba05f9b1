"""Hugging Face ``datasets`` source (optional dependency, imported only when used)."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image

from .base import IMAGE_ERRORS, CorruptImageError, ImageDataset
from .transforms import center_crop_arr

IMAGE_KEYS = ("image", "img", "pixel_values", "jpg", "png")
LABEL_KEYS = ("label", "labels", "class", "target", "cls")


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "data source 'hf' needs the Hugging Face `datasets` package: pip install datasets "
            "(or use source: folder with an ImageNet-layout folder)"
        ) from err
    return datasets


def open_hf_dataset(path: str, split: str) -> Any:
    """A ``save_to_disk`` folder (``load_from_disk``) or a hub/cache name (``load_dataset``)."""
    datasets = _import_datasets()
    if os.path.isdir(path) and (
        os.path.exists(os.path.join(path, "dataset_info.json"))
        or os.path.exists(os.path.join(path, "state.json"))
        or os.path.exists(os.path.join(path, "dataset_dict.json"))
    ):
        ds = datasets.load_from_disk(path)
        if hasattr(ds, "keys") and not hasattr(ds, "features"):  # a DatasetDict
            if split not in ds:
                raise ValueError(f"{path} has splits {sorted(ds.keys())}, not {split!r}; set `split`")
            ds = ds[split]
        return ds
    return datasets.load_dataset(path, split=split)


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{what} column {wanted!r} not in the dataset columns {columns}")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(f"no {what} column among {columns}; set hf_{what}_key (tried {', '.join(candidates)})")


def to_pil(value: Any) -> Image.Image:
    """A ``datasets`` image cell (PIL image, ``{"bytes"|"path"}`` dict or array) as a PIL image."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return Image.open(value["path"])
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        array = np.asarray(value)
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.transpose(1, 2, 0)  # CHW -> HWC
        return Image.fromarray(array.squeeze().astype(np.uint8))
    raise TypeError(f"unsupported image cell type {type(value).__name__}")


class HFImageDataset(ImageDataset):
    """A ``datasets.Dataset`` with an image column and an integer label column, ADM-cropped."""

    def __init__(
        self,
        path: str,
        split: str = "train",
        resolution: int = 256,
        flip: bool = True,
        on_corrupt: str = "skip",
        num_classes: int | None = None,
        limit: int | None = None,
        image_key: str | None = None,
        label_key: str | None = None,
        image_mode: str = "float",
    ):
        super().__init__(resolution, flip, on_corrupt, image_mode)
        self.name, self.split = path, split
        self.ds = open_hf_dataset(path, split)
        columns = list(self.ds.column_names)
        self.image_key = _pick(columns, image_key, IMAGE_KEYS, "image")
        self.label_key = _pick(columns, label_key, LABEL_KEYS, "label")
        feature = self.ds.features.get(self.label_key) if hasattr(self.ds, "features") else None
        declared = getattr(feature, "num_classes", None)
        if num_classes is None and declared is None:
            raise ValueError(
                f"label column {self.label_key!r} of {path} declares no class count; set num_classes"
            )
        if num_classes is not None and declared is not None and num_classes != declared:
            raise ValueError(f"{path} declares {declared} classes but num_classes={num_classes}")
        self.num_classes = int(num_classes if num_classes is not None else declared)
        self.size = min(len(self.ds), limit) if limit is not None else len(self.ds)
        self._label_view: Any = None

    def __len__(self) -> int:
        return self.size

    def _row(self, index: int) -> dict[str, Any]:
        return self.ds[int(index)]

    def _checked_label(self, index: int, value: Any) -> int:
        label = int(value)
        if not 0 <= label < self.num_classes:
            raise ValueError(f"{self.describe(index)}: label {label} outside [0, {self.num_classes})")
        return label

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """One row read gives both the picture and the label."""
        row = self._row(index)
        label = self._checked_label(index, row[self.label_key])
        try:
            image = to_pil(row[self.image_key])
            image.load()
            return center_crop_arr(image, self.resolution), label
        except IMAGE_ERRORS as err:
            raise CorruptImageError(self.describe(index), err) from err

    def load_pixels(self, index: int) -> np.ndarray:
        return self.load(index)[0]

    def label(self, index: int) -> int:
        """The label alone, read from a label-only view of the rows (no image is decoded)."""
        if self._label_view is None:
            select = getattr(self.ds, "select_columns", None)
            self._label_view = select([self.label_key]) if select is not None else self.ds
        return self._checked_label(index, self._label_view[int(index)][self.label_key])

    def describe(self, index: int) -> str:
        return f"{self.name}[{self.split}] #{index}"

    def fingerprint(self) -> str:
        token = getattr(self.ds, "_fingerprint", None) or "unknown"
        return f"hf:{self.name}:{self.split}:{token}:n={self.size}"

"""Shared dataset machinery: sample keys (index + flip), item dicts and unreadable-image policy."""

from __future__ import annotations

import logging
import struct
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from irepa.errors import ConfigError, DataError

from .transforms import center_crop_arr, hflip_hwc, to_chw_float, to_chw_tensor

log = logging.getLogger(__name__)

# What items carry as "image": float32 in [0, 1] (the default), the source's uint8 when it has one, or nothing.
IMAGE_MODES = ("float", "uint8", "none")

# What PIL raises on unreadable, truncated or hostile files.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


class SampleKey(NamedTuple):
    """What the loader asks a dataset for: an item and whether to mirror it."""

    index: int
    flip: bool


class CorruptImageError(DataError, RuntimeError):
    """An image file that cannot be decoded (or has a pixel format irepa does not read); ``path`` names it."""

    def __init__(self, path: str, reason: BaseException | str | None = None):
        # One-argument form: a ready message (how DataLoader workers re-raise exceptions).
        super().__init__(path if reason is None else f"cannot read image {path}: {reason}")
        self.path = path
        self.reason = str(reason)


def parse_key(key: Any) -> tuple[int, bool]:
    """``int`` -> (index, no flip); ``SampleKey`` / ``(index, flip)`` -> as given."""
    if isinstance(key, tuple):
        index, flip = key
        return int(index), bool(flip)
    if isinstance(key, (int, np.integer)) or (torch.is_tensor(key) and key.ndim == 0):
        return int(key), False
    raise TypeError(f"dataset key must be an int or (index, flip), got {type(key).__name__}")


# Pixel formats that become 8-bit RGB without losing their meaning; 16-bit and float images ("I;16",
# "I", "F") would be clipped to 0..255 by PIL and are treated like unreadable files instead.
EIGHT_BIT_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)


def load_image_file(path: str, resolution: int) -> np.ndarray:
    """Decode an image file and ADM-centre-crop it; unreadable files (and pixel formats that are not
    8-bit) raise ``CorruptImageError``."""
    try:
        with Image.open(path) as image:
            if image.mode not in EIGHT_BIT_MODES:
                raise CorruptImageError(path, f"pixel format {image.mode} is not 8-bit; convert the file to 8-bit RGB")
            image.load()
            return center_crop_arr(image, resolution)
    except IMAGE_ERRORS as err:
        raise CorruptImageError(path, err) from err


class ImageDataset(Dataset):
    """Base of every irepa dataset.

    Subclasses implement ``__len__``, ``load_pixels(index)`` (``(R, R, 3)`` uint8 or float in
    [0, 1]; may raise ``CorruptImageError``) and ``label(index)``, and may add entries in
    ``extra(index, flip)``. ``dataset[SampleKey(i, flip)]`` returns ``{"image", "label", "index",
    "flipped", ...}``; a plain ``int`` key means no flip. With ``on_corrupt="skip"`` an unreadable
    item is logged and replaced by the next readable one (deterministically, so batches keep
    their size and resumed runs see the same data); with ``"fail"`` it raises.

    ``image_mode`` says what ``"image"`` holds: ``"float"`` (default) float32 ``(3, R, R)`` in
    [0, 1]; ``"uint8"`` the source's uint8 ``(3, R, R)`` pixels when it has them (a quarter of the
    bytes through worker memory and to the GPU; sources of float pixels still give float32), made
    float on the device by :func:`irepa.codecs.unit_images`; ``"none"`` no image at all:
    nothing is decoded and items hold only the label, index, flip and extras such as cached latents.
    """

    num_classes: int
    resolution: int

    def __init__(self, resolution: int, flip: bool = True, on_corrupt: str = "skip", image_mode: str = "float"):
        if image_mode not in IMAGE_MODES:
            raise ConfigError(f"unknown image_mode {image_mode!r}; valid: {', '.join(IMAGE_MODES)}")
        self.image_mode = image_mode
        self.resolution = int(resolution)
        self.flip = bool(flip)
        self.on_corrupt = on_corrupt
        self.corrupt_files: set[str] = set()

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_pixels(self, index: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def label(self, index: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """Pixels and label of one item (sources that read both at once override this)."""
        return self.load_pixels(index), self.label(index)

    def extra(self, index: int, flip: bool) -> dict[str, torch.Tensor]:
        """Additional per-item tensors (e.g. cached latents)."""
        return {}

    def fingerprint(self) -> str:  # pragma: no cover - abstract
        """A string that changes whenever the items or their order change."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Human-readable name of an item (a file path where there is one)."""
        return f"item {index}"

    def item(self, index: int, flip: bool) -> dict[str, torch.Tensor]:
        """The item dict for one index, without any corrupt-file substitution."""
        flip = flip and self.flip
        out: dict[str, torch.Tensor] = {}
        if self.image_mode == "none":
            label = self.label(index)
        else:
            pixels, label = self.load(index)
            if flip:
                pixels = hflip_hwc(pixels)
            out["image"] = to_chw_float(pixels) if self.image_mode == "float" else to_chw_tensor(pixels)
        out["label"] = torch.tensor(label, dtype=torch.int64)
        out["index"] = torch.tensor(index, dtype=torch.int64)
        out["flipped"] = torch.tensor(flip)
        out.update(self.extra(index, flip))
        return out

    def __getitem__(self, key: Any) -> dict[str, torch.Tensor]:
        index, flip = parse_key(key)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} items")
        index %= n
        for step in range(n):
            candidate = (index + step) % n
            try:
                return self.item(candidate, flip)
            except CorruptImageError as err:
                if self.on_corrupt == "fail":
                    hint = "set on_corrupt: skip to skip unreadable images"
                    raise CorruptImageError(err.path, f"{err.reason} ({hint})") from err
                if err.path not in self.corrupt_files:
                    self.corrupt_files.add(err.path)
                    log.warning(
                        "skipping unreadable image %s (%s); %d unreadable so far: %s",
                        err.path,
                        err.reason,
                        len(self.corrupt_files),
                        sorted(self.corrupt_files),
                    )
        raise DataError(f"no readable image in the dataset ({n} items, all unreadable)",
                        fix="check the image files (each one was named in a warning)")

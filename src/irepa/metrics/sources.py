"""Image sources for the metric commands: a folder, Fashion-MNIST, or scikit-image's sample photos.

A source is an ordered list of image ids with on-demand loading, so images are streamed through an
encoder in batches. Each source can also give a pixel foreground mask per image (for SRSS) and,
for labelled sources, a class label per image (for the linear probe).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
BUILTIN_SOURCES = ("fashion-mnist", "skimage")


def _to_float_image(array: np.ndarray) -> torch.Tensor:
    """``(H, W)``, ``(H, W, 3|4)`` uint8/bool/float array -> float ``(3, H, W)`` in [0, 1]."""
    if array.dtype == bool:
        array = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if x.ndim == 2:
        x = x.unsqueeze(-1)
    x = x[..., :3].permute(2, 0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.clamp(0, 1).contiguous()


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as float ``(3, H, W)`` in [0, 1] (grey and alpha images become RGB)."""
    from PIL import Image

    with Image.open(path) as im:
        return _to_float_image(np.asarray(im.convert("RGB")))


def read_mask(path: str | os.PathLike) -> torch.Tensor:
    """A mask file as bool ``(H, W)``: any non-zero pixel (any channel) is foreground."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] in (3, 4) else arr.max(axis=-1)
    return torch.from_numpy(arr > 0)


def token_masks(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Pixel mask ``(H, W)`` -> token mask ``(gh * gw,)``: a token is foreground if any pixel of its patch is.

    The encoder resizes the whole image to its input size, so patch ``(i, j)`` covers rows
    ``[i H / gh, (i + 1) H / gh)`` of the original; adaptive max pooling takes exactly the pixels
    that overlap it.
    """
    pooled = F.adaptive_max_pool2d(mask.float()[None, None], grid)
    return (pooled > 0).reshape(-1)


@dataclass
class ImageSource:
    """An ordered collection of images with optional masks and labels."""

    name: str
    ids: list[str]
    loader: Callable[[int], torch.Tensor]
    fingerprint: str
    mask_loader: Callable[[int], torch.Tensor | None] | None = None
    labels: list[int] | None = None
    classes: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as float ``(3, H, W)`` in [0, 1]."""
        return self.loader(i)

    def mask(self, i: int) -> torch.Tensor | None:
        """Pixel foreground mask ``(H, W)`` of image ``i``, or None when the source has none for it."""
        return self.mask_loader(i) if self.mask_loader is not None else None

    def subset(self, indices: Sequence[int], tag: str) -> ImageSource:
        """The images at ``indices`` (in that order); ``tag`` names the selection in the cache key."""
        idx = list(indices)
        return ImageSource(
            name=self.name,
            ids=[self.ids[i] for i in idx],
            loader=lambda k: self.loader(idx[k]),
            fingerprint=f"{self.fingerprint}|{tag}",
            mask_loader=(lambda k: self.mask_loader(idx[k])) if self.mask_loader else None,
            labels=[self.labels[i] for i in idx] if self.labels is not None else None,
            classes=self.classes,
            notes=list(self.notes),
        )

    def first(self, n: int | None) -> ImageSource:
        """The first ``n`` images (all of them when ``n`` is None or larger than the source)."""
        if n is None or n >= len(self):
            if n is not None and n > len(self):
                note = f"{self.name} has {len(self)} images; using all of them (asked for {n})"
                return replace(self, notes=[*self.notes, note])
            return self
        if n < 1:
            raise ValueError(f"--n must be at least 1, got {n}")
        return self.subset(range(n), f"first{n}")


# ---------------------------------------------------------------- folder
def list_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted by relative path."""
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _folder_fingerprint(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256(str(root.resolve()).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _find_mask(masks_dir: Path, rel: Path) -> Path | None:
    for cand in (masks_dir / rel.with_suffix(".png"), masks_dir / (rel.stem + ".png")):
        if cand.is_file():
            return cand
    return None


def folder_source(root: str | os.PathLike, labelled: bool = False) -> ImageSource:
    """Images under ``root`` (recursive, sorted). ``labelled``: the first sub-folder names the class."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist; pass a folder of images or one of {', '.join(BUILTIN_SOURCES)}"
        )
    files = list_images(root)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    rels = [p.relative_to(root) for p in files]
    labels = classes = None
    if labelled:
        loose = [r.as_posix() for r in rels if len(r.parts) < 2]
        if loose:
            raise ValueError(f"labelled folders need one sub-folder per class; loose files: {', '.join(loose[:3])}")
        classes = sorted({r.parts[0] for r in rels})
        labels = [classes.index(r.parts[0]) for r in rels]
    return ImageSource(
        name=f"folder:{root}",
        ids=[r.as_posix() for r in rels],
        loader=lambda i: read_image(files[i]),
        fingerprint=f"folder:{_folder_fingerprint(root, files)}",
        labels=labels,
        classes=classes,
    )


def with_mask_folder(src: ImageSource, masks_dir: str | os.PathLike) -> ImageSource:
    """``src`` with masks read from ``masks_dir``: one PNG per image, same relative path or same stem."""
    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise FileNotFoundError(f"mask folder {masks_dir} does not exist")
    found = [_find_mask(masks_dir, Path(i)) for i in src.ids]
    missing = [i for i, m in zip(src.ids, found) if m is None]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(src)} images have no mask in {masks_dir} (e.g. {', '.join(missing[:3])}); "
            "provide one PNG per image with the same stem (foreground = non-zero)"
        )
    fp = hashlib.sha256("".join(f"{m}:{m.stat().st_mtime_ns}" for m in found).encode()).hexdigest()[:12]
    return ImageSource(
        name=src.name,
        ids=src.ids,
        loader=src.loader,
        fingerprint=f"{src.fingerprint}|masks:{fp}",
        mask_loader=lambda i: read_mask(found[i]),
        labels=src.labels,
        classes=src.classes,
        notes=[n for n in src.notes if "silhouette" not in n],
    )


# ---------------------------------------------------------------- Fashion-MNIST
def fashion_mnist_source(split: str = "test", root: str | None = None) -> ImageSource:
    """Fashion-MNIST (28x28 grey, as RGB); foreground mask = non-zero pixels."""
    from irepa.data import fashion_mnist

    images, labels = fashion_mnist.read_fashion_mnist(root=root, split=split)
    classes = getattr(fashion_mnist, "CLASSES", None) or [str(c) for c in range(10)]
    return ImageSource(
        name="fashion-mnist",
        ids=[f"{split}-{i:05d}" for i in range(len(images))],
        loader=lambda i: _to_float_image(images[i]),
        fingerprint=f"fashion-mnist:{split}:{len(images)}",
        mask_loader=lambda i: torch.from_numpy(images[i] > 0),
        labels=[int(v) for v in labels],
        classes=list(classes),
    )


# ---------------------------------------------------------------- scikit-image sample photos
SKIMAGE_IMAGES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle",
    "camera",
    "coins",
    "horse",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "cell",
    "clock",
    "moon",
    "brick",
    "grass",
    "gravel",
)


def skimage_image(name: str) -> np.ndarray:
    """One of scikit-image's bundled photos by name (``motorcycle`` is the left stereo view)."""
    import skimage.data

    if name not in SKIMAGE_IMAGES:
        raise ValueError(f"unknown scikit-image photo {name!r}; valid: {', '.join(SKIMAGE_IMAGES)}")
    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def skimage_mask(name: str) -> torch.Tensor | None:
    """Foreground mask of a scikit-image photo: only ``horse`` (a silhouette, horse = black) has one."""
    if name != "horse":
        return None
    return torch.from_numpy(~skimage_image("horse"))


def skimage_source() -> ImageSource:
    """scikit-image's bundled photos (no download)."""
    names = list(SKIMAGE_IMAGES)
    return ImageSource(
        name="skimage",
        ids=names,
        loader=lambda i: _to_float_image(skimage_image(names[i])),
        fingerprint=f"skimage:{','.join(names)}",
        mask_loader=lambda i: skimage_mask(names[i]),
        notes=["skimage: only `horse` has a foreground silhouette; SRSS is NaN for the other photos"],
    )


def open_source(
    spec: str,
    n: int | None = None,
    masks_dir: str | os.PathLike | None = None,
    labelled: bool = False,
    split: str = "test",
) -> ImageSource:
    """``fashion-mnist``, ``skimage`` or a folder path -> its first ``n`` images as an :class:`ImageSource`.

    ``masks_dir`` replaces the built-in masks; ``labelled`` reads class labels (folder-per-class);
    ``split`` picks the Fashion-MNIST split.
    """
    if spec == "fashion-mnist":
        src = fashion_mnist_source(split=split)
    elif spec == "skimage":
        if labelled:
            raise ValueError("the skimage photos have no class labels; use fashion-mnist or a folder-per-class")
        src = skimage_source()
    else:
        src = folder_source(spec, labelled=labelled)
    src = src.first(n)
    return with_mask_folder(src, masks_dir) if masks_dir is not None else src


def load_image_spec(spec: str) -> tuple[torch.Tensor, str]:
    """``skimage:NAME`` or an image path -> (float ``(3, H, W)`` in [0, 1], a short label)."""
    if spec.startswith("skimage:"):
        name = spec.split(":", 1)[1]
        return _to_float_image(skimage_image(name)), name
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"image {spec} does not exist; pass a file or skimage:NAME ({', '.join(SKIMAGE_IMAGES)})"
        )
    return read_image(path), path.stem

"""Reference statistics from an image folder, an ADM reference batch (``.npz``) or Fashion-MNIST, cached.

Statistics are computed once and cached on disk under a key made of the source (path, sizes and
modification times of its files), the target resolution, the image count and the feature
extractor (name, weights sha256, preprocessing), so a changed file or network never reuses stale
statistics. ADM reference batches that carry precomputed ``mu``/``sigma`` (and ``mu_s``/``sigma_s``)
use them for FID / sFID, as the ADM suite does, and their ``arr_0`` images for precision / recall.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from irepa.utils.io import cache_home, check_file

from .evaluator import Evaluator, ReferenceStats
from .npz import check_images, npz_keys, open_npz_array

log = logging.getLogger(__name__)

FASHION_MNIST = "fashion-mnist"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$IREPA_HOME/eval_refs`` (``IREPA_HOME`` defaults to ``~/.cache/irepa``)."""
    return cache_home() / "eval_refs"


class LazyImages:
    """A read-only ``(N, H, W, 3)`` uint8 sequence whose images are produced on slicing."""

    def __init__(self, n: int, size: tuple[int, int], load: Callable[[int], np.ndarray]):
        self.n, self.size, self.load = n, tuple(size), load
        self.dtype = np.dtype(np.uint8)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.n, *self.size, 3)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("LazyImages supports slices only")
        return np.stack([self.load(i) for i in range(*index.indices(self.n))])


def _resolution_error(what: str, got: tuple[int, int], want: tuple[int, int]) -> ValueError:
    return ValueError(f"resolution mismatch: samples are {want[0]}x{want[1]} but {what} is {got[0]}x{got[1]}. "
                      "Compare at equal resolution, or pass --resize (resize_reference=True) to centre-crop and "
                      "resize the reference to the sample resolution")


def fashion_mnist_images(size: tuple[int, int], num: int | None = None, root: str | None = None) -> LazyImages:
    """The Fashion-MNIST test split as RGB at ``size`` (the training transform: pad 28 -> 32, else resize)."""
    from irepa.data.fashion_mnist import read_fashion_mnist
    from irepa.data.transforms import fit_small_image

    if size[0] != size[1]:
        raise ValueError(f"Fashion-MNIST references are square; the samples are {size[0]}x{size[1]}")
    gray, _ = read_fashion_mnist(root, split="test")
    n = len(gray) if num is None else min(num, len(gray))

    def load(i: int) -> np.ndarray:
        return np.round(fit_small_image(gray[i], size[0]) * 255.0).astype(np.uint8)

    return LazyImages(n, size, load)


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, hidden entries skipped), in sorted order."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath, f) for f in sorted(filenames)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    return files


def folder_images(root: Path, size: tuple[int, int], num: int | None = None, resize: bool = False) -> LazyImages:
    """Images of a folder as RGB uint8; a size other than ``size`` is an error unless ``resize``."""
    from PIL import Image

    from irepa.data.transforms import center_crop_arr

    files = list_images(root)
    if not files:
        raise ValueError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) under {root}")
    files = files[:num] if num is not None else files

    def load(i: int) -> np.ndarray:
        with Image.open(files[i]) as im:
            got = (im.height, im.width)
            if got != tuple(size):
                if not resize:
                    raise _resolution_error(f"reference image {files[i]}", got, size)
                if size[0] != size[1]:
                    raise ValueError(f"--resize needs square samples, got {size[0]}x{size[1]}")
                return center_crop_arr(im, size[0])
            return np.asarray(im.convert("RGB"))

    return LazyImages(len(files), size, load)


def resize_batch(images: Any, size: tuple[int, int]) -> LazyImages:
    """Centre-crop and resize an array of uint8 images to square ``size`` (ADM crop)."""
    from PIL import Image

    from irepa.data.transforms import center_crop_arr

    if size[0] != size[1]:
        raise ValueError(f"--resize needs square samples, got {size[0]}x{size[1]}")
    return LazyImages(len(images), size, lambda i: center_crop_arr(Image.fromarray(np.asarray(images[i])), size[0]))


def _fingerprint(spec: str, size: tuple[int, int], num: int | None, resize: bool, extractor: dict[str, Any]) -> dict:
    if spec == FASHION_MNIST:
        source: Any = FASHION_MNIST + ":test"
    else:
        path = Path(spec).resolve()
        files = list_images(path) if path.is_dir() else [path]
        h = hashlib.sha256()
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(path) if path.is_dir() else f.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        source = {"path": str(path), "files": len(files), "listing_sha256": h.hexdigest()}
    return {"version": CACHE_VERSION, "source": source, "size": list(size), "num_ref": num, "resize": resize,
            "extractor": extractor}


def reference_stats(
    spec: str, evaluator: Evaluator, size: tuple[int, int], num_ref: int | None = None, resize: bool = False,
    cache_dir: str | Path | None = None, use_cache: bool = True, fashion_root: str | None = None,
) -> ReferenceStats:
    """Reference statistics for ``spec`` (``"fashion-mnist"``, an image folder or an ``.npz``) at ``size``."""
    if num_ref is not None and num_ref < 2:
        raise ValueError(f"num_ref must be >= 2, got {num_ref}")
    if spec != FASHION_MNIST and not Path(spec).exists():
        raise FileNotFoundError(f"reference {spec!r} does not exist; pass an image folder, an .npz reference "
                                f"batch, or {FASHION_MNIST!r}")
    desc = evaluator.extractor.describe()
    key_obj = _fingerprint(spec, size, num_ref, resize, desc)
    key = hashlib.sha256(json.dumps(key_obj, sort_keys=True).encode()).hexdigest()[:20]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / f"ref-{key}.npz"
    info = {"reference": spec, "cache_file": str(cached), "cache_key": key_obj["source"]}
    damage = check_file(cached) if use_cache and cached.is_file() else None
    if damage is not None:
        log.warning("cached reference statistics %s are damaged (%s); computing them again", cached, damage)
    if use_cache and cached.is_file() and damage is None:
        log.info("using cached reference statistics %s", cached)
        sidecar = cached.with_suffix(".json")
        try:
            source = json.loads(sidecar.read_bytes().decode("utf-8")).get("stats_source") if sidecar.is_file() else None
        except (ValueError, AttributeError):  # a damaged note only loses the description of the statistics
            source = None
        return ReferenceStats.load(cached, info | {"from_cache": True, "stats_source": source})

    stats = _compute(spec, evaluator, size, num_ref, resize, fashion_root)
    stats.info.update(info)
    if use_cache:
        cache.mkdir(parents=True, exist_ok=True)
        stats.save(cached)
        from irepa.utils.io import atomic_write_json

        atomic_write_json(cached.with_suffix(".json"), key_obj | {"stats_source": stats.info.get("stats_source")})
    return stats


def _compute(spec: str, evaluator: Evaluator, size: tuple[int, int], num_ref: int | None, resize: bool,
             fashion_root: str | None) -> ReferenceStats:
    if spec == FASHION_MNIST:
        return evaluator.reference(fashion_mnist_images(size, num_ref, fashion_root),
                                   {"stats_source": "computed from Fashion-MNIST test images"})
    path = Path(spec)
    if path.is_dir():
        return evaluator.reference(folder_images(path, size, num_ref, resize),
                                   {"stats_source": f"computed from images in {path}"})
    if path.suffix != ".npz":
        raise ValueError(f"reference {spec!r}: expected an image folder, a .npz file or {FASHION_MNIST!r}")
    return _from_npz(path, evaluator, size, num_ref, resize)


def _from_npz(path: Path, evaluator: Evaluator, size: tuple[int, int], num_ref: int | None,
              resize: bool) -> ReferenceStats:
    keys = set(npz_keys(path))
    images = None
    if "arr_0" in keys:
        images = open_npz_array(path, "arr_0")
        check_images(images, f"reference batch {path}")
        if num_ref is not None:
            images = images[:num_ref]
        got = tuple(images.shape[1:3])
        if got != tuple(size):
            if not resize:
                raise _resolution_error(f"the reference batch {path}", got, size)
            images = resize_batch(images, size)
    ex = evaluator.extractor
    pre = None
    if {"mu", "sigma"} <= keys:
        with np.load(path, allow_pickle=False) as d:
            pre = {k: d[k] for k in ("mu", "sigma", "mu_s", "sigma_s") if k in d.files}
    if images is None and pre is None:
        raise ValueError(f"{path} holds neither images (arr_0) nor statistics (mu, sigma); it has {sorted(keys)}")
    if pre is None or ex.fd_metric != "fid":  # precomputed statistics are Inception statistics
        if images is None:
            raise ValueError(f"{path} holds only precomputed Inception statistics; {ex.name} features need the "
                             "reference images (arr_0)")
        return evaluator.reference(images, {"stats_source": f"computed from arr_0 of {path}"})
    stats = None
    if images is not None:
        stats = evaluator.reference(images)
        if pre["mu"].shape != stats.mu.shape:
            raise ValueError(f"{path}: precomputed mu has shape {pre['mu'].shape} but {ex.name} gives "
                             f"{stats.mu.shape}")
    else:
        stats = ReferenceStats(pre["mu"], pre["sigma"])
    stats.mu, stats.sigma = pre["mu"], pre["sigma"]
    used = ["mu/sigma"]
    if "mu_s" in pre and "sigma_s" in pre:
        stats.mu_s, stats.sigma_s = pre["mu_s"], pre["sigma_s"]
        used.append("mu_s/sigma_s")
    stats.num_images = None  # the statistics come from a set of unknown size
    source = f"precomputed {' and '.join(used)} from {path}"
    if images is not None:
        computed = "per-image features" + ("" if "mu_s" in pre else " and spatial statistics")
        source += f"; {computed} from its {len(images)} arr_0 images"
    stats.info["stats_source"] = source
    return stats

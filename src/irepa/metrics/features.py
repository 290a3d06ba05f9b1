"""Encoder features of an image source, streamed in batches and cached on disk.

Token features ``(N, T, D)`` are stored as float16 ``.npy`` files (memory-mapped when read back) with
a JSON sidecar, keyed by encoder name, weights, grid, image source and count, so computing another
metric on the same images does not run the encoder again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from irepa.metrics.sources import ImageSource
from irepa.utils.io import atomic_path, atomic_write_json, cache_home, check_file

log = logging.getLogger(__name__)

REDUCTIONS = ("tokens", "mean")
CACHE_VERSION = 2  # 2: encoders resize images and positions as the paper's code (no antialias)


def default_cache_dir() -> Path:
    """``$IREPA_HOME/features`` (``IREPA_HOME`` defaults to ``~/.cache/irepa``)."""
    return cache_home() / "features"


def parse_weights(spec: str | None, encoders: list[str]) -> dict[str, str | None]:
    """``"random"`` (all encoders) or ``"name=path,name=random"`` -> weights per encoder (None = default)."""
    out: dict[str, str | None] = dict.fromkeys(encoders)
    if not spec:
        return out
    if "=" not in spec:
        return dict.fromkeys(encoders, spec)
    for item in spec.split(","):
        name, sep, value = item.rpartition("=")  # the last "=": a name may hold one (dinov2-vit-s+global=0.1)
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ValueError(f"--weights entry {item!r} is not name=path")
        if name not in out:
            raise ValueError(f"--weights names {name!r}, which is not among the encoders: {', '.join(encoders)}")
        out[name] = value
    return out


def load_encoder(name: str, weights: str | None, grid: tuple[int, int], device: str = "cpu"):
    """The named encoder from the zoo, frozen, at the requested token grid."""
    from irepa import encoders as zoo

    loader = getattr(zoo, "load_encoder", None)
    if loader is None:
        raise RuntimeError("irepa.encoders.load_encoder is not available in this installation")
    encoder = loader(name, weights=weights, grid=grid, device=device)
    if tuple(encoder.grid) != tuple(grid):
        raise ValueError(f"encoder {name} gives a {encoder.grid} grid, not the requested {grid}")
    return encoder.freeze()


def _weights_identity(weights: str | None) -> str:
    if weights in (None, "random"):
        return str(weights)
    p = Path(weights)
    if p.is_file():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return str(weights)


@dataclass(frozen=True)
class FeatureRequest:
    """What identifies a feature array: who encodes what, how."""

    encoder: str
    weights: str | None
    grid: tuple[int, int]
    source: ImageSource
    reduce: str = "tokens"

    def __post_init__(self) -> None:
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduce!r}; valid: {', '.join(REDUCTIONS)}")

    def key(self) -> str:
        payload = {
            "version": CACHE_VERSION,
            "encoder": self.encoder,
            "weights": _weights_identity(self.weights),
            "grid": list(self.grid),
            "source": self.source.fingerprint,
            "n": len(self.source),
            "reduce": self.reduce,
        }
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.encoder)
        return f"{safe}-{self.grid[0]}x{self.grid[1]}-{self.reduce}-{digest}"

    def meta(self, shape: tuple[int, ...], dtype: str) -> dict:
        return {
            "version": CACHE_VERSION,
            "encoder": self.encoder,
            "weights": self.weights,
            "grid": list(self.grid),
            "source": self.source.name,
            "n": len(self.source),
            "ids": self.source.ids,
            "reduce": self.reduce,
            "shape": list(shape),
            "dtype": dtype,
        }


def is_cached(request: FeatureRequest, cache_dir: str | os.PathLike | None) -> bool:
    """Whether ``request``'s features are in ``cache_dir`` already."""
    return _cached(request, Path(cache_dir) if cache_dir is not None else None) is not None


def _cached(request: FeatureRequest, cache_dir: Path | None) -> np.ndarray | None:
    if cache_dir is None:
        return None
    data, meta = cache_dir / f"{request.key()}.npy", cache_dir / f"{request.key()}.json"
    if not (data.is_file() and meta.is_file()):
        return None
    damage = check_file(data)
    if damage is not None:
        log.warning("feature cache %s is damaged (%s); encoding again", data, damage)
        return None
    try:
        info = json.loads(meta.read_text())
        array = np.load(data, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if info.get("ids") != request.source.ids or list(array.shape) != info.get("shape"):
        return None
    return array


def _encode_batches(request: FeatureRequest, batch_size: int, device: str, progress: bool) -> Iterator[np.ndarray]:
    encoder = load_encoder(request.encoder, request.weights, request.grid, device)
    param = next(encoder.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    n = len(request.source)
    bar = tqdm(total=n, desc=f"encode {request.encoder}", unit="img", disable=not progress)
    try:
        for start in range(0, n, batch_size):
            idx = range(start, min(start + batch_size, n))
            x = torch.cat([encoder.preprocess(request.source.image(i)[None]) for i in idx])
            with torch.inference_mode():
                tokens = encoder(x.to(device=device, dtype=dtype)).float()
            expect = request.grid[0] * request.grid[1]
            if tokens.ndim != 3 or tokens.shape[1] != expect:
                raise ValueError(f"encoder {request.encoder} returned {tuple(tokens.shape)}, expected (B, {expect}, D)")
            if request.reduce == "mean":
                yield tokens.mean(dim=1).cpu().numpy().astype(np.float32)
            else:
                yield tokens.cpu().numpy().astype(np.float16)
            bar.update(len(idx))
    finally:
        bar.close()


def iter_features(
    request: FeatureRequest,
    batch_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, features)`` batches in source order, from the cache or from the encoder.

    Tokens come as float16 ``(b, T, D)`` (``reduce="tokens"``), pooled features as float32 ``(b, D)``
    (``reduce="mean"``). A fresh encoding is written to the cache only once every batch is done.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    cache = Path(cache_dir) if cache_dir is not None else None
    array = _cached(request, cache)
    if array is not None:
        for start in range(0, array.shape[0], batch_size):
            yield start, np.array(array[start : start + batch_size])
        return
    if cache is None:
        start = 0
        for batch in _encode_batches(request, batch_size, device, progress):
            yield start, batch
            start += len(batch)
        return
    cache.mkdir(parents=True, exist_ok=True)
    n = len(request.source)
    with atomic_path(cache / f"{request.key()}.npy", manifest=True) as tmp:
        store = None
        start = 0
        for batch in _encode_batches(request, batch_size, device, progress):
            if store is None:
                store = np.lib.format.open_memmap(tmp, mode="w+", dtype=batch.dtype, shape=(n, *batch.shape[1:]))
            store[start : start + len(batch)] = batch
            yield start, batch
            start += len(batch)
        store.flush()
        shape, dtype = store.shape, str(store.dtype)
        del store
    atomic_write_json(cache / f"{request.key()}.json", request.meta(shape, dtype))


def load_features(
    request: FeatureRequest,
    batch_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """All features of ``request`` as one array (see :func:`iter_features`)."""
    parts = [b for _, b in iter_features(request, batch_size, cache_dir, device, progress)]
    return np.concatenate(parts)

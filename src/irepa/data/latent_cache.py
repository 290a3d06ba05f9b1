"""On-disk format of a VAE latent cache, its reader and the per-channel statistics.

A cache folder holds ``index.json`` and ``shard-NNNNN.safetensors`` files. Shard ``i`` covers
dataset items ``[i * shard_size, (i + 1) * shard_size)`` and stores

* ``moments``      ``(n, 2C, r, r)``: posterior mean and log-variance of the image,
* ``moments_flip`` ``(n, 2C, r, r)``: the same for its horizontal mirror,
* ``valid``        ``(n,)`` uint8: 0 for an unreadable image (its moments are zeros),
* ``labels``       ``(n,)`` int64 (``-1`` where unreadable).

``index.json`` records what the cache was made from (image source, its fingerprint and item
count, VAE, resolution, shard list) and, once ``complete``, the unreadable items, the
per-channel latent mean / std over the posterior means of the unflipped valid images, and the
size and SHA-256 of every shard (``checksums``). Readers check every shard's size when they open
a cache (a truncated copy is named at once); ``irepa prepare-latents --verify`` checks the hashes.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as safetensors_save

from irepa.errors import DataError
from irepa.utils.io import atomic_write_bytes, file_digest, read_json

FORMAT = "irepa-latents-v1"
INDEX_NAME = "index.json"
OPEN_SHARDS = 32  # shard files a reader keeps open
STATS_OVER = "posterior means of the unflipped images (all valid items), population std"


class CacheMismatchError(DataError):
    """A latent cache that does not belong to the requested data / VAE / resolution."""


# Posterior means and log-variances of a VAE are O(10) (diffusers clamps the log-variance to [-30, 20]);
# a cached value beyond this is damage (a flipped high exponent bit), not data.
MOMENT_LIMIT = 1e6
REPAIR_HINT = "rerun the same `irepa prepare-latents` command: it re-encodes damaged or missing shards"
VERIFY_HINT = ("rerun the same `irepa prepare-latents` command with --verify: it checks every shard's SHA-256 and "
               "re-encodes the damaged ones")


def shard_damage(
    path: Path, expected_count: int, checksum: dict[str, Any] | None = None, deep: bool = False
) -> str | None:
    """Why a shard file cannot be used, or None. Checks its size against ``checksum`` (when recorded)
    and that its header parses with the expected item count; ``deep`` also compares the SHA-256."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if checksum is not None and size != int(checksum["size"]):
        return f"{size} bytes, {checksum['size']} were written (truncated or overwritten)"
    try:
        with safe_open(str(path), framework="numpy") as fh:
            rows = fh.get_slice("valid").get_shape()[0]
    except Exception as err:  # safetensors raises its own error types for broken headers
        return f"unreadable safetensors file ({' '.join(str(err).split())})"
    if rows != expected_count:
        return f"holds {rows} items, {expected_count} expected"
    if deep and checksum is not None and file_digest(path).sha256 != checksum["sha256"]:
        return "its contents do not match the recorded SHA-256 (bit damage)"
    return None


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


def shard_table(count: int, shard_size: int) -> list[dict[str, Any]]:
    """``[{"file", "start", "count"}, ...]`` covering ``count`` items in order."""
    return [
        {"file": shard_name(i), "start": start, "count": min(shard_size, count - start)}
        for i, start in enumerate(range(0, count, shard_size))
    ]


META_KEY = "irepa"


def save_shard(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    """Serialise and write atomically. The metadata goes in ONE key as sorted JSON: safetensors
    writes several metadata keys in hash order, which would make equal shards differ in bytes."""
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    header = {META_KEY: json.dumps(metadata, sort_keys=True)}
    atomic_write_bytes(path, safetensors_save(arrays, metadata=header))


def read_shard_metadata(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="numpy") as fh:
        return json.loads((fh.metadata() or {}).get(META_KEY, "{}"))


def read_index(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a latent cache (no {INDEX_NAME}); make one with `irepa prepare-latents`"
        )
    index = read_json(path, "latent cache index", error=DataError,
                      fix="rebuild the cache: rerun `irepa prepare-latents` for this data with --overwrite "
                          "(or restore the file)")
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise CacheMismatchError(f"{path}: format {found!r}, expected {FORMAT!r}")
    return index


class LatentCache:
    """Read access to a complete cache: ``moments(index, flip)`` -> float32 ``(2C, r, r)``."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        if not self.index.get("complete"):
            done = sum((self.folder / s["file"]).is_file() for s in self.index["shards"])
            raise CacheMismatchError(
                f"latent cache {self.folder} is incomplete ({done} of {len(self.index['shards'])} shards); "
                "rerun the same `irepa prepare-latents` command to finish it"
            )
        self.shard_size = int(self.index["shard_size"])
        self._check_sizes()
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._pid = os.getpid()

    def _check_sizes(self) -> None:
        """A truncated or missing shard is named when the cache is opened, not mid-epoch."""
        checksums = self.index.get("checksums") or {}
        bad = []
        for shard in self.index["shards"]:
            path = self.folder / shard["file"]
            recorded = checksums.get(shard["file"])
            if not path.is_file():
                bad.append(f"{shard['file']}: missing")
            elif recorded is not None and path.stat().st_size != int(recorded["size"]):
                bad.append(f"{shard['file']}: {path.stat().st_size} of {recorded['size']} bytes")
        if bad:
            raise DataError(f"latent cache {self.folder} has damaged shards ({'; '.join(bad[:5])})", fix=REPAIR_HINT)

    def __getstate__(self) -> dict[str, Any]:  # open file handles stay per process
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()
        return state

    def _handle(self, shard: int) -> Any:
        """Memory-mapped shard, from a small per-process LRU (ImageNet has over a thousand shards)."""
        if self._pid != os.getpid():  # forked into a worker: reopen
            self._handles, self._pid = OrderedDict(), os.getpid()
        if shard in self._handles:
            self._handles.move_to_end(shard)
        else:
            self._handles[shard] = safe_open(str(self.folder / shard_name(shard)), framework="numpy")
            if len(self._handles) > OPEN_SHARDS:
                self._handles.popitem(last=False)
        return self._handles[shard]

    def moments(self, index: int, flip: bool = False) -> np.ndarray:
        """The cached moments of item ``index``. A value no VAE gives (NaN, infinity, or beyond
        :data:`MOMENT_LIMIT`: a flipped exponent bit in a shard whose size is intact, which only the
        SHA-256 finds) is named here instead of surfacing later as a non-finite loss."""
        shard, offset = divmod(int(index), self.shard_size)
        name = "moments_flip" if flip else "moments"
        values = self._handle(shard).get_slice(name)[offset : offset + 1][0].astype(np.float32)
        largest = float(np.abs(values).max(initial=0.0))
        if not largest <= MOMENT_LIMIT:  # also true for NaN
            raise DataError(f"latent cache shard {self.folder / shard_name(shard)} holds {name} no VAE gives "
                            f"(|value| up to {largest:.3g}) for item {int(index)} (row {offset}): the file is "
                            "damaged", fix=VERIFY_HINT)
        return values

    @property
    def skipped(self) -> list[int]:
        return [int(s["index"]) for s in self.index.get("skipped", [])]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.index["latent_shape"])  # type: ignore[return-value]

    @property
    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        stats = self.index["latent_stats"]
        return np.asarray(stats["mean"], dtype=np.float32), np.asarray(stats["std"], dtype=np.float32)

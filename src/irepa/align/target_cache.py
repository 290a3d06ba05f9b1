"""Alignment targets computed once: encode a dataset with a frozen encoder and serve the tokens with its items.

The targets of an un-augmented dataset never change, so computing them once is exact, not an
approximation; it removes the encoder's forward (often costlier than the denoiser's step on small
models) from every training step. One cache, used by the trainer (``align.cache_targets``) and the
small-scale experiments (the quickstart, ``irepa compare``): :func:`with_cached_targets`.

A stored token set is found again by its key: the encoder (name, weights, input resolution, resize
and position-embedding rules), the model grid, the number of items, the dataset's fingerprint and
its seed (plus the data section's source, path, resolution, limit and split).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from irepa.codecs.base import unit_images
from irepa.errors import ConfigError, DataError
from irepa.utils.io import atomic_torch_save, atomic_write_json, usable_file

log = logging.getLogger(__name__)


def first_non_finite(tokens: torch.Tensor) -> int | None:
    """The first item (along dim 0) holding a NaN or infinity, or None (one pass, chunked to bound memory)."""
    for start in range(0, tokens.shape[0], 4096):
        chunk = tokens[start:start + 4096]
        finite = torch.isfinite(chunk.reshape(chunk.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            return start + int((~finite).nonzero()[0])
    return None


@torch.no_grad()
def encode_dataset(dataset: Dataset, encoder, batch_size: int = 64, desc: str = "encode",
                   dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Tokens ``(N, T, D)`` in ``dtype`` for every item of ``dataset`` (unflipped)."""
    chunks = []
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc, unit="batch", dynamic_ncols=True):
        images = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))])
        chunks.append(encoder.encode(unit_images(images)).to(dtype).cpu())
    return torch.cat(chunks)


def cached_tokens(dataset: Dataset, encoder, cache_dir: str | Path, key: dict, batch_size: int = 64,
                  dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Load the tokens for ``key`` (a JSON-able description of encoder + data) or compute and store them.

    ``encoder`` is an encoder, or a function without arguments returning one (called only on a cache miss).
    Tokens are stored in ``dtype`` (float16 halves the file; the trainer keeps float32).
    """
    if dtype != torch.float16:
        key = {**key, "dtype": str(dtype)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"tokens-{digest}.pt"
    if usable_file(path, "token cache"):
        stored = torch.load(path, map_location="cpu", weights_only=True)
        bad = first_non_finite(stored)
        if bad is not None:
            log.warning("token cache %s holds non-finite tokens for item %d: computing it again", path, bad)
        elif stored.shape[0] == len(dataset):
            return stored
    if not hasattr(encoder, "encode"):
        encoder = encoder()
    tokens = encode_dataset(dataset, encoder, batch_size, desc=f"encode {key.get('encoder', '')}", dtype=dtype)
    bad = first_non_finite(tokens)
    if bad is not None:
        where = dataset.describe(bad) if hasattr(dataset, "describe") else f"item {bad}"
        raise DataError(f"encoder {key.get('encoder', '')} gives non-finite tokens for {where}",
                        fix="check that image; tokens above 65504 overflow float16 (the default): store float32")
    atomic_torch_save(tokens, path, manifest=True)
    atomic_write_json(path.with_suffix(".json"), key)
    return tokens


class TokenCachedDataset(Dataset):
    """Wraps a dataset; each item also carries ``target.<name>`` tokens for its index."""

    def __init__(self, base: Dataset, tokens: dict[str, torch.Tensor]):
        for name, t in tokens.items():
            if t.shape[0] != len(base):
                raise ValueError(f"{name}: {t.shape[0]} cached token sets for {len(base)} items")
        self.base, self.tokens = base, tokens
        self.num_classes = getattr(base, "num_classes", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        item = self.base[key]
        if bool(item.get("flipped", False)):
            raise ValueError("cached encoder tokens are of unflipped images; train with data.flip=false")
        index = int(item["index"])
        for name, t in self.tokens.items():
            item[f"target.{name}"] = t[index]
        return item


def target_cache_key(entry, grid: tuple[int, int], cfg, dataset: Dataset) -> dict[str, Any]:
    """What determines an encoder's tokens for every item of ``dataset`` (``entry``: an ``align.encoders`` item)."""
    a, data = cfg.align, cfg.data
    fingerprint = dataset.fingerprint() if hasattr(dataset, "fingerprint") else None
    return {
        "encoder": entry.name,
        "weights": str(entry.weights),
        "resolution": a.encoder_resolution,
        "resize": a.encoder_resize,
        "pos_embed": a.encoder_pos_embed,
        "grid": list(grid),
        "items": len(dataset),
        "fingerprint": fingerprint,
        "seed": data.seed,
        "data": {k: getattr(data, k) for k in ("source", "path", "resolution", "limit", "split")},
    }


def with_cached_targets(
    dataset: Dataset,
    cfg,
    grid: tuple[int, int],
    encoders: Mapping[str, Any],
    cache_dir: str | Path,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    once: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> TokenCachedDataset:
    """``dataset`` whose items carry every ``cfg.align.encoders`` encoder's tokens (``target.<name>``).

    ``encoders`` maps names to encoders or to functions returning one (called only when the tokens
    are not stored yet); ``grid`` is the model's token grid. ``once`` guards each encoding (several
    processes: the main one encodes and stores while the others wait, then all read the same file).
    Refused for flipped data: the stored tokens are those of the unflipped images.
    """
    if cfg.data.flip:
        raise ConfigError("cached encoder targets are the tokens of unflipped images",
                          fix="set data.flip false, or align.cache_targets false to encode every step")
    tokens = {}
    for entry in cfg.align.encoders:
        key = target_cache_key(entry, grid, cfg, dataset)
        with once():
            tokens[entry.name] = cached_tokens(dataset, encoders[entry.name], cache_dir, key, batch_size, dtype=dtype)
    return TokenCachedDataset(dataset, tokens)

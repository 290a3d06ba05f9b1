"""Alignment targets computed once: encode a dataset with a frozen encoder and serve the tokens with its items.

The targets of an un-augmented dataset never change, so computing them once is exact, not an
approximation; it removes the encoder's forward (often costlier than the denoiser's step on small
models) from every training step. Used by the trainer (``align.cache_targets``) and the small-scale
experiments.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from irepa.codecs.base import unit_images
from irepa.errors import DataError
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

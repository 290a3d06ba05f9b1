"""``prepare_latents``: encode a dataset with a VAE into a resumable, sharded latent cache.

Each process (``accelerate launch`` starts one per GPU) encodes the shards ``i`` with
``i % num_processes == process_index`` that are not on disk yet. A shard is written to a temp
file and renamed into place only when complete, so a killed run leaves either a whole shard or
none, and a rerun of the same command finishes the rest. The main process then computes the
per-channel latent statistics and marks ``index.json`` complete.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from irepa.codecs.latent import ChannelMoments, encode_moments
from irepa.codecs.vae import load_vae, vae_downsample, vae_id
from irepa.errors import CheckpointError, ConfigError, DataError
from irepa.utils.io import atomic_write_json, file_digest, remove_stale_temps

from .base import CorruptImageError, ImageDataset
from .config import DataConfig
from .latent_cache import (
    FORMAT,
    INDEX_NAME,
    REPAIR_HINT,
    STATS_OVER,
    CacheMismatchError,
    read_shard_metadata,
    save_shard,
    shard_damage,
    shard_table,
)
from .sources import build_source_dataset

log = logging.getLogger(__name__)

# DataConfig fields that decide which items (and in which order) a cache holds.
SOURCE_FIELDS = (
    "source",
    "path",
    "split",
    "resolution",
    "num_classes",
    "limit",
    "seed",
    "synthetic_size",
    "hf_image_key",
    "hf_label_key",
)
# index.json fields that must agree for a rerun to resume instead of refusing.
PLAN_FIELDS = (
    "format",
    "source",
    "dataset_fingerprint",
    "count",
    "vae",
    "resolution",
    "latent_shape",
    "dtype",
    "shard_size",
    "shards",
)
DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class Processes:
    """Who am I among the encoding processes (from ``accelerate`` by default)."""

    index: int = 0
    count: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    barrier: Callable[[], None] = lambda: None

    @classmethod
    def from_accelerate(cls) -> Processes:
        from accelerate import PartialState

        use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "") in ("1", "true")
        state = PartialState(cpu=use_cpu)  # cpu=True lets CPU-only machines run several processes (gloo)
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != state.num_processes:  # processes would write the same shards
            raise ConfigError(
                f"launched as {launched} processes but accelerate sees {state.num_processes}",
                fix="check the launcher (accelerate launch / torchrun) environment",
            )
        return cls(state.process_index, state.num_processes, state.device, state.wait_for_everyone)


def source_record(cfg: DataConfig) -> dict[str, Any]:
    """The identity-defining part of a data config, with an absolute local path."""
    record = {name: getattr(cfg, name) for name in SOURCE_FIELDS}
    if record["path"] and Path(record["path"]).expanduser().exists():
        record["path"] = str(Path(record["path"]).expanduser().resolve())
    return record


class _EncodeView(Dataset):
    """Items by global index as (image, label, valid, name); unreadable images become zeros."""

    def __init__(self, base: ImageDataset, on_corrupt: str):
        self.base, self.on_corrupt = base, on_corrupt

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            item = self.base.item(index, False)
            return {"image": item["image"], "label": item["label"], "valid": True, "name": ""}
        except CorruptImageError as err:
            if self.on_corrupt == "fail":
                raise CorruptImageError(err.path, f"{err.reason} (use --on-corrupt skip to skip it)") from err
            r = self.base.resolution
            name = self.base.describe(index)
            log.warning("unreadable image %s (%s): cached as invalid", name, err.reason)
            return {"image": torch.zeros(3, r, r), "label": torch.tensor(-1), "valid": False, "name": name}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k}: {old.get(k)!r} vs {new.get(k)!r}" for k in PLAN_FIELDS if old.get(k) != new.get(k)]


def damaged_shards(out: Path, index: dict[str, Any], deep: bool) -> list[str]:
    """Shard files on disk that fail their checks (size and header; ``deep``: SHA-256), named in a warning."""
    checksums = index.get("checksums") or {}
    damaged = []
    for shard in index["shards"]:
        path = out / shard["file"]
        if not path.is_file():
            continue
        reason = shard_damage(path, shard["count"], checksums.get(shard["file"]), deep)
        if reason is not None:
            log.warning("shard %s is damaged (%s): it will be encoded again", path, reason)
            damaged.append(shard["file"])
    return damaged


def _check_existing(
    out: Path, plan: dict[str, Any], overwrite: bool, is_main: bool, verify: bool = False
) -> tuple[dict[str, Any] | None, list[str]]:
    """The existing complete index if nothing is left to do, and the damaged shards of a cache of
    this configuration (to encode again); raises on a foreign cache. Shard sizes and headers are
    always checked, their SHA-256 with ``verify``.
    """
    index_path = out / INDEX_NAME
    shards_here = sorted(p.name for p in out.glob("shard-*.safetensors"))
    if index_path.is_file():
        try:
            old = json.loads(index_path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise DataError(f"{index_path} is damaged ({err})",
                            fix="pass --overwrite to rebuild the cache, or restore the file") from err
        diffs = _differences(old, plan)
        if not diffs:
            damaged = damaged_shards(out, old, verify)
            return (old if old.get("complete") and not damaged else None), damaged
        reason = f"{out} holds a latent cache of a different configuration ({'; '.join(diffs[:4])})"
    elif shards_here:
        reason = f"{out} holds shard files but no {INDEX_NAME}"
    else:
        return None, []
    if not overwrite:
        raise CacheMismatchError(f"{reason}; choose another --out or pass --overwrite to replace it")
    if is_main:
        log.warning("%s; --overwrite: removing it", reason)
        for name in shards_here:
            (out / name).unlink()
        index_path.unlink(missing_ok=True)
    return None, []


def prepare_latents(
    data: DataConfig,
    vae: str,
    out: str | os.PathLike,
    batch_size: int = 32,
    shard_size: int = 1024,
    num_workers: int = 4,
    dtype: str = "float32",
    overwrite: bool = False,
    processes: Processes | None = None,
    on_shard_done: Callable[[int], None] | None = None,
    verify: bool = False,
) -> dict[str, Any]:
    """Encode ``data`` (image source, ``data.resolution``) with the VAE ``vae`` into ``out``.

    Returns the index dict (``complete`` is True once every shard exists and the statistics are
    written). ``on_shard_done(shard)`` is called after each shard is safely on disk. A rerun
    re-encodes shards that are missing or damaged (``verify``: also check every shard's SHA-256).
    """
    if dtype not in DTYPES:
        raise ConfigError(f"unknown cache dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if batch_size < 1 or shard_size < 1:
        raise ConfigError(f"--batch-size and --shard-size must be >= 1, got {batch_size} and {shard_size}")
    procs = processes or Processes.from_accelerate()
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    record = source_record(data)
    base = build_source_dataset(record, data.on_corrupt)
    model = load_vae(vae, procs.device)
    factor = vae_downsample(model)
    if data.resolution % factor:
        raise ValueError(f"resolution {data.resolution} is not a multiple of the VAE downsampling {factor}")
    channels = int(model.config.latent_channels)
    r = data.resolution // factor
    plan = {
        "format": FORMAT,
        "complete": False,
        "source": record,
        "dataset_fingerprint": base.fingerprint(),
        "count": len(base),
        "num_classes": base.num_classes,
        "vae": vae_id(vae),
        "vae_scaling_factor": float(getattr(model.config, "scaling_factor", 1.0)),
        "resolution": data.resolution,
        "latent_shape": [channels, r, r],
        "dtype": dtype,
        "shard_size": shard_size,
        "shards": shard_table(len(base), shard_size),
    }
    done, damaged = _check_existing(out, plan, overwrite, procs.index == 0, verify)
    if done is not None:
        log.info("latent cache %s is already complete (%d items)", out, done["count"])
        return done
    if damaged:
        procs.barrier()  # every process has looked at the shards before any is deleted
    if procs.index == 0:
        for stale in remove_stale_temps(out):
            log.info("removed unfinished temp file %s", stale.name)
        for name in damaged:
            (out / name).unlink(missing_ok=True)
        atomic_write_json(out / INDEX_NAME, plan)
    procs.barrier()
    if procs.count == 1 and torch.cuda.device_count() > 1:
        log.info(
            "%d GPUs visible: `accelerate launch --num_processes N` encodes on all of them",
            torch.cuda.device_count(),
        )

    mine = [(i, s) for i, s in enumerate(plan["shards"]) if i % procs.count == procs.index]
    todo = [(i, s) for i, s in mine if not (out / s["file"]).is_file()]
    if len(todo) < len(mine):
        log.info(
            "process %d: %d shard(s) already on disk, %d to encode",
            procs.index,
            len(mine) - len(todo),
            len(todo),
        )
    _encode_shards(
        base, model, out, todo, batch_size, num_workers, DTYPES[dtype], data.on_corrupt, procs, on_shard_done
    )
    procs.barrier()
    if procs.index != 0:
        return plan
    return _finalize(out, plan)


def _encode_shards(
    base: ImageDataset,
    model: torch.nn.Module,
    out: Path,
    todo: list[tuple[int, dict[str, Any]]],
    batch_size: int,
    num_workers: int,
    np_dtype: Any,
    on_corrupt: str,
    procs: Processes,
    on_shard_done: Callable[[int], None] | None,
) -> None:
    """Encode and write the listed shards in order; batches never straddle two shards."""
    if not todo:
        return
    batches, per_shard = [], []
    for _, shard in todo:
        chunks = [
            list(range(b, min(b + batch_size, shard["start"] + shard["count"])))
            for b in range(shard["start"], shard["start"] + shard["count"], batch_size)
        ]
        batches += chunks
        per_shard.append(len(chunks))
    loader = DataLoader(
        _EncodeView(base, on_corrupt),
        batch_sampler=batches,
        num_workers=num_workers,
        persistent_workers=False,
    )
    total = sum(s["count"] for _, s in todo)
    bar = tqdm(total=total, desc=f"encoding latents [{procs.index + 1}/{procs.count}]", unit="img")
    batch_iter = iter(loader)
    for (number, shard), n_batches in zip(todo, per_shard):
        parts: dict[str, list[np.ndarray]] = {"moments": [], "moments_flip": [], "valid": [], "labels": []}
        skipped: list[list[Any]] = []
        for _ in range(n_batches):
            batch = next(batch_iter)
            images = batch["image"]
            both = encode_moments(model, torch.cat([images, images.flip(-1)]))
            valid = batch["valid"].bool()
            both[torch.cat([~valid, ~valid])] = 0.0
            moments, moments_flip = np.split(both.cpu().numpy().astype(np_dtype), 2)
            parts["moments"].append(moments)
            parts["moments_flip"].append(moments_flip)
            parts["valid"].append(valid.numpy().astype(np.uint8))
            parts["labels"].append(batch["label"].numpy().astype(np.int64))
            start = shard["start"] + sum(len(v) for v in parts["valid"][:-1])
            skipped += [[start + j, name] for j, name in enumerate(batch["name"]) if not valid[j]]
            bar.update(len(images))
        tensors = {k: np.concatenate(v) for k, v in parts.items()}
        metadata = {
            "format": FORMAT,
            "shard": number,
            "start": shard["start"],
            "count": shard["count"],
            "skipped": skipped,
        }
        save_shard(out / shard["file"], tensors, metadata)
        if on_shard_done is not None:
            on_shard_done(number)
    bar.close()


def _finalize(out: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """Check all shards, gather unreadable items, compute latent statistics, mark complete."""
    missing = [s["file"] for s in plan["shards"] if not (out / s["file"]).is_file()]
    if missing:
        raise CheckpointError(
            f"{len(missing)} shard(s) of {out} are not written ({', '.join(missing[:5])}...): a process stopped early",
            fix="rerun the same command to finish",
        )
    damaged = [f"{s['file']}: {r}" for s in plan["shards"] if (r := shard_damage(out / s["file"], s["count"]))]
    if damaged:
        raise DataError(f"latent cache {out} has damaged shards ({'; '.join(damaged[:5])})", fix=REPAIR_HINT)
    channels = plan["latent_shape"][0]
    stats = ChannelMoments(channels)
    skipped: list[dict[str, Any]] = []
    checksums: dict[str, dict[str, Any]] = {}
    for shard in tqdm(plan["shards"], desc="latent statistics", unit="shard"):
        path = out / shard["file"]
        digest = file_digest(path)
        checksums[shard["file"]] = {"size": digest.size, "sha256": digest.sha256}
        with safe_open(str(path), framework="numpy") as fh:
            valid = fh.get_tensor("valid").astype(bool)
            stats.update(fh.get_tensor("moments")[valid, :channels])
        skipped += [{"index": int(i), "file": name} for i, name in read_shard_metadata(path)["skipped"]]
    if stats.count == 0:
        raise DataError(
            f"no readable image in {plan['source']['path']}: nothing to compute statistics from",
            fix="check the image folder (see the warnings above for why each image was skipped)",
        )
    index = dict(plan)
    index.update(
        complete=True,
        checksums=checksums,
        skipped=skipped,
        num_valid=plan["count"] - len(skipped),
        latent_stats={"mean": stats.mean.tolist(), "std": stats.std().tolist(), "computed_over": STATS_OVER},
    )
    atomic_write_json(out / INDEX_NAME, index)
    if skipped:
        log.warning(
            "%d unreadable image(s) left out of the cache: %s", len(skipped), [s["file"] for s in skipped]
        )
    log.info("latent cache %s complete: %d items in %d shards", out, index["num_valid"], len(plan["shards"]))
    return index

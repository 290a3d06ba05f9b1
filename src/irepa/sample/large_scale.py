"""Many samples, sharded over processes, resumable, merged into one ADM-style ``samples_<N>.npz``.

* Sample ``i`` gets class ``classes[i % len(classes)]`` (all classes by default: ``i % num_classes``), so
  every class is equally represented (exactly, when ``N`` is a multiple of the class count), and seed
  ``seed + i``. With a generator whose noise comes only from each sample's seed, the images do not
  depend on how many processes ran or how the work was batched.
* The index range is cut into fixed shards ``[k * shard_size, (k + 1) * shard_size)``; process ``r`` of
  ``W`` takes shards ``r, r + W, r + 2W, ...``. Every finished shard is written atomically as
  ``shards/shard_<start>_<end>.npz``; a rerun skips the shards already on disk.
* ``run.json`` pins the settings that determine the images (sampler, seed, checkpoint, EMA, VAE, labels,
  shard size); resuming with different ones is refused rather than mixing two runs.
* The main process then streams the shards into ``samples_<N>.npz`` (``arr_0`` uint8 NHWC, ``labels``)
  and writes ``samples_<N>.json`` with every sampling setting.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from irepa.errors import CheckpointError
from irepa.evaluate.npz import NpzWriter, check_images, open_npz_array, save_npz
from irepa.utils.io import atomic_write_json, check_file, remove_stale_temps

log = logging.getLogger(__name__)

GenerateFn = Callable[[torch.Tensor, list[int]], Any]  # (labels (B,), seeds) -> uint8 (B, H, W, 3)
SHARD_DIR = "shards"
RUN_FILE = "run.json"
LABEL_SCHEME = "cyclic: sample i gets classes[i % len(classes)]"


@dataclass
class SamplingPlan:
    """Which label and seed every sample index gets, and how the index range is cut into shards."""

    num_samples: int
    classes: list[int]
    seed: int = 0
    shard_size: int = 256

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if not self.classes:
            raise ValueError("the plan needs at least one class label")

    def labels(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.classes, dtype=np.int64)[np.arange(start, stop) % len(self.classes)]

    def seeds(self, start: int, stop: int) -> list[int]:
        return [self.seed + i for i in range(start, stop)]

    def shards(self) -> list[tuple[int, int]]:
        return [(s, min(s + self.shard_size, self.num_samples)) for s in range(0, self.num_samples, self.shard_size)]

    def shards_for(self, rank: int, world_size: int) -> list[tuple[int, int]]:
        """The shards process ``rank`` of ``world_size`` generates (round-robin, disjoint, covering)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        return self.shards()[rank::world_size]


def resolve_classes(num_classes: int, classes: Sequence[int] | None = None, unconditional: bool = False) -> list[int]:
    """The class cycle: all classes, a chosen subset, or the null label ``num_classes`` (unconditional)."""
    if unconditional:
        if classes:
            raise ValueError("pass either classes or unconditional, not both")
        return [num_classes]
    if not classes:
        if num_classes < 1:
            raise ValueError("this model has no classes; sample unconditionally")
        return list(range(num_classes))
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"classes {bad} are outside [0, {num_classes - 1}]")
    return [int(c) for c in classes]


def describe_classes(classes: list[int]) -> str | list[int]:
    """``"all N classes"`` for the full cycle ``0..N-1`` (keeps the JSON short), else the list itself."""
    if len(classes) > 1 and classes == list(range(len(classes))):
        return f"all {len(classes)} classes"
    return list(classes)


def shard_path(out_dir: str | Path, start: int, stop: int) -> Path:
    return Path(out_dir) / SHARD_DIR / f"shard_{start:08d}_{stop:08d}.npz"


def shard_complete(path: Path, start: int, stop: int) -> bool:
    """A shard file that holds exactly the images of ``[start, stop)`` and passes its zip CRC check
    (a damaged shard is named in a warning and made again)."""
    if not path.is_file():
        return False
    damage = check_file(path)
    if damage is not None:
        log.warning("sample shard %s is damaged (%s): generating it again", path, damage)
        return False
    try:
        indices = open_npz_array(path, "indices")
        images = open_npz_array(path, "images")
    except (KeyError, ValueError, OSError):
        return False
    return images.shape[0] == stop - start and np.array_equal(indices, np.arange(start, stop))


def _to_uint8_numpy(images: Any, n: int) -> np.ndarray:
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    check_images(arr, "generated images")
    if len(arr) != n:
        raise ValueError(f"the generator returned {len(arr)} images for {n} labels")
    return arr


def generate_shards(
    generate_fn: GenerateFn, plan: SamplingPlan, out_dir: str | Path, rank: int = 0, world_size: int = 1,
    batch_size: int = 32, progress: bool = True,
) -> list[tuple[int, int]]:
    """Generate this process's missing shards; returns the ``(start, stop)`` ranges it generated."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    (Path(out_dir) / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    mine = plan.shards_for(rank, world_size)
    todo = [(s, e) for s, e in mine if not shard_complete(shard_path(out_dir, s, e), s, e)]
    made = []
    bar = tqdm(total=sum(e - s for s, e in todo), desc=f"sampling (process {rank})" if world_size > 1 else "sampling",
               unit="img", position=rank, disable=not progress)
    for start, stop in todo:
        chunks = []
        for b in range(start, stop, batch_size):
            e = min(b + batch_size, stop)
            chunks.append(_to_uint8_numpy(generate_fn(torch.from_numpy(plan.labels(b, e)), plan.seeds(b, e)), e - b))
            bar.update(e - b)
        save_npz(shard_path(out_dir, start, stop), images=np.concatenate(chunks), labels=plan.labels(start, stop),
                 indices=np.arange(start, stop, dtype=np.int64))
        made.append((start, stop))
    bar.close()
    return made


def samples_path(out_dir: str | Path, num_samples: int) -> Path:
    return Path(out_dir) / f"samples_{num_samples}.npz"


def merge_shards(plan: SamplingPlan, out_dir: str | Path, progress: bool = True) -> Path:
    """Stream all shards, in index order, into ``samples_<N>.npz`` (``arr_0`` and ``labels``)."""
    shards = plan.shards()
    missing = [f"[{s}, {e})" for s, e in shards if not shard_complete(shard_path(out_dir, s, e), s, e)]
    if missing:
        more = ", ..." if len(missing) > 5 else ""
        raise CheckpointError(f"{len(missing)} shard(s) not finished: {', '.join(missing[:5])}{more}",
                              fix="run the same sampling command again to complete them")
    first = open_npz_array(shard_path(out_dir, *shards[0]), "images")
    shape = (plan.num_samples, *first.shape[1:])

    def image_chunks():
        for s, e in tqdm(shards, desc="merging shards", disable=not progress, leave=False):
            chunk = open_npz_array(shard_path(out_dir, s, e), "images")
            if chunk.shape[1:] != first.shape[1:]:
                raise ValueError(f"shard [{s}, {e}) has images {chunk.shape[1:]}, the first has {first.shape[1:]}")
            yield chunk

    out = samples_path(out_dir, plan.num_samples)
    with NpzWriter(out) as writer:
        writer.write("arr_0", shape, np.uint8, image_chunks())
        writer.write("labels", (plan.num_samples,), np.int64,
                     (open_npz_array(shard_path(out_dir, s, e), "labels") for s, e in shards))
    return out


# Settings that do not change which image an index gets: they may differ when a run is resumed.
RESUMABLE_KEYS = ("num_samples", "batch_size", "num_processes", "samples_file", "torch_version", "irepa_version")


def _identity(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that determine the images."""
    return {k: v for k, v in settings.items() if k not in RESUMABLE_KEYS}


def check_or_write_run(out_dir: str | Path, settings: dict[str, Any], write: bool) -> None:
    """Refuse to resume a folder made with other settings; record them on the first run."""
    path = Path(out_dir) / RUN_FILE
    if path.is_file():
        old = _identity(json.loads(path.read_text()))
        new = _identity(json.loads(json.dumps(settings)))  # normalise tuples etc. as JSON does
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if diff:
            detail = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff)
            raise ValueError(f"{out_dir} holds samples made with other settings ({detail}). Use another --out, or "
                             "delete the folder to start over")
    elif write:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, settings)


@dataclass
class RunResult:
    samples: Path | None  # the merged file (main process only)
    generated: list[tuple[int, int]] = field(default_factory=list)  # shards this process generated


def run_sampling(
    generate_fn: GenerateFn, plan: SamplingPlan, out_dir: str | Path, settings: dict[str, Any],
    rank: int = 0, world_size: int = 1, batch_size: int = 32, barrier: Callable[[], None] | None = None,
    progress: bool = True,
) -> RunResult:
    """The whole job for one process: check settings, make its shards, and (rank 0) merge and record.

    ``barrier`` synchronises the processes (e.g. ``accelerate.PartialState().wait_for_everyone``).
    """
    out_dir = Path(out_dir)
    barrier = barrier or (lambda: None)
    settings = {**settings, **asdict(plan), "classes": describe_classes(plan.classes), "label_scheme": LABEL_SCHEME}
    is_main = rank == 0
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if (out_dir / SHARD_DIR).is_dir():
            remove_stale_temps(out_dir / SHARD_DIR)  # left by a killed run; nobody else writes yet
    check_or_write_run(out_dir, settings, write=is_main)
    barrier()
    made = generate_shards(generate_fn, plan, out_dir, rank, world_size, batch_size, progress)
    barrier()
    if not is_main:
        return RunResult(None, made)
    merged = merge_shards(plan, out_dir, progress)
    atomic_write_json(merged.with_suffix(".json"), {**settings, "num_processes": world_size,
                                                    "samples_file": merged.name})
    return RunResult(merged, made)


def class_grid(images: np.ndarray, labels: np.ndarray, per_class: int = 16, max_rows: int = 32,
               pad: int = 2) -> torch.Tensor:
    """A uint8 ``(H', W', 3)`` grid with one row per class (first ``max_rows`` classes, in order of appearance).

    When no class has more than one image the images are tiled in a near-square block instead.
    """
    from irepa.sample.pipeline import make_grid

    labels = np.asarray(labels)
    order = list(dict.fromkeys(labels.tolist()))[:max_rows]
    rows = [np.flatnonzero(labels == c)[:per_class] for c in order]
    if max(len(r) for r in rows) == 1:
        picked = np.concatenate(rows)
        return make_grid(torch.from_numpy(np.asarray(images[np.sort(picked)])), math.ceil(math.sqrt(len(picked))), pad)
    ncol = max(len(r) for r in rows)
    blank = np.full(images.shape[1:], 255, dtype=np.uint8)  # fills the rows of classes with fewer images
    tiles = []
    for r in rows:
        tiles += [np.asarray(images[i]) for i in r] + [blank] * (ncol - len(r))
    return make_grid(torch.from_numpy(np.stack(tiles)), ncol, pad)

"""Many samples, spread evenly over processes, resumable, merged into one ADM-style ``samples_<N>.npz``.

* **Labels and seeds.** Sample ``i`` uses seed ``seed + i`` and a class that depends only on
  ``(label_mode, classes, seed, i)``: drawn uniformly at random (the default, as the reference
  evaluation protocol does) or ``classes[i % len(classes)]`` (see :mod:`irepa.sample.labels`). So an
  image depends only on the settings and its index (given a generator whose noise comes only from
  each sample's seed), never on how many processes ran, how the work was batched, or how often the
  run was resumed.
* **Files.** Images are kept in ``shards/shard_<start>_<stop>.npz`` files, each written atomically
  when complete and each inside one block ``[k * shard_size, (k + 1) * shard_size)``. A rerun makes
  only the indices that no complete file holds.
* **Work.** The missing indices are split into ``world_size`` contiguous parts whose sizes differ by
  at most one image, so all processes finish within one batch of each other; each part is cut at
  block boundaries into files.
* **Waiting.** The one collective is a barrier before any sampling. Afterwards each process writes
  its files and a completion marker ``finished/process_<rank>.json`` and returns; the main process
  waits for the files themselves (polling, with a timeout that restarts whenever images arrive),
  then merges. Nobody sits in a collective while others still sample, so a slower GPU cannot trip
  NCCL's watchdog.
* **One job per folder.** The main process holds an OS lock on the folder (``.irepa.lock``) from
  the settings check to the merged file; a second ``irepa sample`` into it is refused at once,
  naming the holder (processes of the same job do not lock).
* ``run.json`` pins the settings that determine the images (sampler, precision, seed, labels,
  checkpoint, EMA, VAE, shard size); resuming with different ones is refused rather than mixing runs.
* The main process streams the files into ``samples_<N>.npz`` (``arr_0`` uint8 NHWC, ``labels``) and
  writes ``samples_<N>.json`` with every sampling setting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from irepa.errors import CheckpointError, ConfigError, DamagedFileError
from irepa.evaluate.npz import NpzWriter, check_images, open_npz_array, save_npz
from irepa.sample.labels import LABEL_MODES, LABEL_SCHEMES, sample_labels
from irepa.utils.images import make_grid
from irepa.utils.io import atomic_write_json, hold_folder, read_json, remove_stale_temps, usable_file

log = logging.getLogger(__name__)

GenerateFn = Callable[[torch.Tensor, list[int]], Any]  # (labels (B,), seeds) -> uint8 (B, H, W, 3)
Range = tuple[int, int]  # indices [start, stop)
SHARD_DIR = "shards"
FINISHED_DIR = "finished"
RUN_FILE = "run.json"
# What runs recorded before these settings existed used; lets such runs be resumed.
LEGACY_SETTINGS = {"label_mode": "balanced", "precision": "fp32"}
MIN_WAIT_S = 1800.0  # the shortest time the main process waits for other processes' next file
WAIT_SHARDS = 4  # ... or this many shards' worth of its own sampling time, when that is longer
_SHARD_NAME = re.compile(r"shard_(\d+)_(\d+)\.npz")


@dataclass
class SamplingPlan:
    """Which label and seed every sample index gets, and the block size of the shard files."""

    num_samples: int
    classes: list[int]
    seed: int = 0
    shard_size: int = 256
    label_mode: str = "random"

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.shard_size < 1:
            raise ConfigError(f"shard_size must be >= 1, got {self.shard_size}")
        if not self.classes:
            raise ConfigError("the plan needs at least one class label")
        if self.seed < 0:
            raise ConfigError(f"the seed must be >= 0, got {self.seed}")
        if self.label_mode not in LABEL_MODES:
            raise ConfigError(f"unknown label mode {self.label_mode!r}; valid: {', '.join(LABEL_MODES)}")

    def labels_of(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """int64 labels of the given sample indices (see :mod:`irepa.sample.labels`)."""
        return sample_labels(self.label_mode, self.classes, self.seed, indices)

    def labels(self, start: int, stop: int) -> np.ndarray:
        return self.labels_of(np.arange(start, stop))

    def seeds_of(self, indices: Sequence[int] | np.ndarray) -> list[int]:
        return [self.seed + int(i) for i in indices]

    def seeds(self, start: int, stop: int) -> list[int]:
        return self.seeds_of(range(start, stop))

    def shards(self) -> list[Range]:
        """The blocks ``[k * shard_size, (k + 1) * shard_size)`` of ``[0, num_samples)``; no file crosses one."""
        return [(s, min(s + self.shard_size, self.num_samples)) for s in range(0, self.num_samples, self.shard_size)]


def resolve_classes(num_classes: int, classes: Sequence[int] | None = None, unconditional: bool = False) -> list[int]:
    """The classes to draw from: all classes, a chosen subset, or the null label ``num_classes`` (unconditional)."""
    if unconditional:
        if classes:
            raise ConfigError("pass either classes or unconditional, not both")
        return [num_classes]
    if not classes:
        if num_classes < 1:
            raise ConfigError("this model has no classes; sample unconditionally")
        return list(range(num_classes))
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"classes {bad} are outside [0, {num_classes - 1}]")
    return [int(c) for c in classes]


def describe_classes(classes: list[int]) -> str | list[int]:
    """``"all N classes"`` for the full list ``0..N-1`` (keeps the JSON short), else the list itself."""
    if len(classes) > 1 and classes == list(range(len(classes))):
        return f"all {len(classes)} classes"
    return list(classes)


# ---------------------------------------------------------------- shard files and what they cover


def shard_path(out_dir: str | Path, start: int, stop: int) -> Path:
    return Path(out_dir) / SHARD_DIR / f"shard_{start:08d}_{stop:08d}.npz"


def shard_complete(path: Path, start: int, stop: int) -> bool:
    """A shard file that holds exactly the images of ``[start, stop)`` and passes its zip CRC check
    (a damaged shard is named in a warning and made again)."""
    if not usable_file(path, "sample shard"):
        return False
    try:
        indices = open_npz_array(path, "indices")
        images = open_npz_array(path, "images")
    except (KeyError, ValueError, OSError):
        return False
    return images.shape[0] == stop - start and np.array_equal(indices, np.arange(start, stop))


def finished_files(plan: SamplingPlan, out_dir: str | Path) -> list[Range]:
    """``(start, stop)`` of every complete shard file holding some of ``[0, num_samples)``."""
    folder = Path(out_dir) / SHARD_DIR
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir()):
        match = _SHARD_NAME.fullmatch(entry.name)
        if match is None:
            continue
        start, stop = int(match[1]), int(match[2])
        if start < min(stop, plan.num_samples) and shard_complete(entry, start, stop):
            found.append((start, stop))
    return found


@dataclass
class Coverage:
    """How complete files cover ``[0, n)``: ``pieces`` to read, in order, and the ``missing`` ranges."""

    pieces: list[tuple[Range, Range]] = field(default_factory=list)  # (file range, indices read from it)
    missing: list[Range] = field(default_factory=list)

    @property
    def num_missing(self) -> int:
        return sum(e - s for s, e in self.missing)


def coverage(files: Sequence[Range], n: int) -> Coverage:
    """Walk ``[0, n)`` taking, at each point, the file that reaches furthest (files may overlap)."""
    ordered = sorted(files)
    result = Coverage()
    pos, i, best = 0, 0, None
    while pos < n:
        while i < len(ordered) and ordered[i][0] <= pos:
            if best is None or ordered[i][1] > best[1]:
                best = ordered[i]
            i += 1
        if best is not None and best[1] > pos:
            stop = min(best[1], n)
            result.pieces.append((best, (pos, stop)))
        else:
            stop = min(ordered[i][0], n) if i < len(ordered) else n
            result.missing.append((pos, stop))
        pos = stop
    return result


def missing_ranges(plan: SamplingPlan, out_dir: str | Path) -> list[Range]:
    """The index ranges of ``[0, num_samples)`` that no complete shard file holds."""
    return coverage(finished_files(plan, out_dir), plan.num_samples).missing


# ---------------------------------------------------------------- splitting the work


def _positions(ranges: Sequence[Range], lo: int, hi: int) -> list[Range]:
    """Index ranges of positions ``[lo, hi)`` of the concatenation of ``ranges``."""
    out, offset = [], 0
    for s, e in ranges:
        a, b = max(lo - offset, 0), min(hi - offset, e - s)
        if a < b:
            out.append((s + a, s + b))
        offset += e - s
    return out


def _cut_at_blocks(ranges: Sequence[Range], block: int) -> list[Range]:
    out = []
    for s, e in ranges:
        while s < e:
            stop = min(e, (s // block + 1) * block)
            out.append((s, stop))
            s = stop
    return out


def assign_work(missing: Sequence[Range], world_size: int, shard_size: int) -> list[list[Range]]:
    """Per process, the shard files it makes: the missing indices cut into ``world_size`` contiguous
    parts whose sizes differ by at most one image, each part cut at multiples of ``shard_size``."""
    if world_size < 1:
        raise ConfigError(f"world_size must be >= 1, got {world_size}")
    total = sum(e - s for s, e in missing)
    bounds = [r * total // world_size for r in range(world_size + 1)]
    return [_cut_at_blocks(_positions(missing, bounds[r], bounds[r + 1]), shard_size) for r in range(world_size)]


# ---------------------------------------------------------------- generating


def _to_uint8_numpy(images: Any, n: int) -> np.ndarray:
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    check_images(arr, "generated images")
    if len(arr) != n:
        raise ValueError(f"the generator returned {len(arr)} images for {n} labels")
    return arr


def generate_ranges(
    generate_fn: GenerateFn, plan: SamplingPlan, out_dir: str | Path, ranges: Sequence[Range],
    batch_size: int = 32, progress: bool = True, desc: str = "sampling", position: int = 0,
) -> list[Range]:
    """Make the shard files ``ranges``; batches run across file boundaries and each file is written as
    soon as its last image exists. Returns the ranges written."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    (Path(out_dir) / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    indices = np.concatenate([np.arange(s, e, dtype=np.int64) for s, e in ranges]) if ranges else np.zeros(0, np.int64)
    pending, made = list(ranges), []
    buffer, buffered = [], 0
    bar = tqdm(total=len(indices), desc=desc, unit="img", position=position, disable=not progress)
    for b in range(0, len(indices), batch_size):
        batch = indices[b:b + batch_size]
        images = generate_fn(torch.from_numpy(plan.labels_of(batch)), plan.seeds_of(batch))
        buffer.append(_to_uint8_numpy(images, len(batch)))
        buffered += len(batch)
        bar.update(len(batch))
        while pending and buffered >= pending[0][1] - pending[0][0]:
            start, stop = pending.pop(0)
            held = np.concatenate(buffer)
            save_npz(shard_path(out_dir, start, stop), images=held[:stop - start], labels=plan.labels(start, stop),
                     indices=np.arange(start, stop, dtype=np.int64))
            buffer, buffered = [held[stop - start:]], buffered - (stop - start)
            made.append((start, stop))
    bar.close()
    return made


def generate_shards(
    generate_fn: GenerateFn, plan: SamplingPlan, out_dir: str | Path, rank: int = 0, world_size: int = 1,
    batch_size: int = 32, progress: bool = True,
) -> list[Range]:
    """Make process ``rank``'s part of the images still missing on disk; returns the files it wrote."""
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside [0, {world_size})")
    mine = assign_work(missing_ranges(plan, out_dir), world_size, plan.shard_size)[rank]
    desc = f"sampling (process {rank})" if world_size > 1 else "sampling"
    return generate_ranges(generate_fn, plan, out_dir, mine, batch_size, progress, desc, rank)


# ---------------------------------------------------------------- completion markers and waiting


def marker_path(out_dir: str | Path, rank: int) -> Path:
    return Path(out_dir) / FINISHED_DIR / f"process_{rank}.json"


def clear_markers(out_dir: str | Path) -> None:
    """Forget the markers of earlier runs (the main process, before the start barrier)."""
    folder = Path(out_dir) / FINISHED_DIR
    if folder.is_dir():
        for entry in folder.glob("process_*.json"):
            entry.unlink(missing_ok=True)


def write_marker(out_dir: str | Path, rank: int, world_size: int, made: Sequence[Range]) -> None:
    """Record that process ``rank`` has written all its files."""
    path = marker_path(out_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"rank": rank, "world_size": world_size, "files": [list(r) for r in made]})


def finished_processes(out_dir: str | Path) -> set[int]:
    folder = Path(out_dir) / FINISHED_DIR
    if not folder.is_dir():
        return set()
    return {int(p.stem.split("_")[1]) for p in folder.glob("process_*.json") if p.stem.split("_")[1].isdigit()}


def _describe(ranges: Sequence[Range], limit: int = 5) -> str:
    shown = ", ".join(f"[{s}, {e})" for s, e in ranges[:limit])
    return shown + (f" and {len(ranges) - limit} more" if len(ranges) > limit else "")


def _overlaps(a: Sequence[Range], b: Sequence[Range]) -> bool:
    return any(s < e2 and s2 < e for s, e in a for s2, e2 in b)


def wait_for_samples(
    plan: SamplingPlan, out_dir: str | Path, assignment: Sequence[Sequence[Range]], timeout_s: float,
    poll_s: float = 5.0, grace_s: float = 120.0, clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once complete files hold every image; ``assignment`` says which process makes which.

    The caller is process 0, done with its own part. Raises ``CheckpointError`` when no new image has
    arrived for ``timeout_s`` seconds (a process crashed or hangs), or when images are still missing
    ``grace_s`` seconds after every process owing them left its completion marker (time for a network
    file system to show the files). Files already written are kept either way.
    """
    last_count, last_change, settled_since = None, clock(), None
    rerun = "Run the same command again: finished shards are kept and only the missing images are generated"
    while True:
        finished = finished_processes(out_dir) | {0}  # markers first: a marker is written after its files
        missing = missing_ranges(plan, out_dir)
        if not missing:
            return
        count = sum(e - s for s, e in missing)
        if count != last_count:
            last_count, last_change = count, clock()
        owing = sorted(r for r, ranges in enumerate(assignment) if _overlaps(ranges, missing))
        if set(owing) <= finished:
            settled_since = clock() if settled_since is None else settled_since
            if clock() - settled_since >= grace_s:
                who = f"process(es) {owing} reported finished" if owing else "no process was given them"
                raise CheckpointError(f"{count} image(s) are missing from {Path(out_dir) / SHARD_DIR} "
                                      f"({_describe(missing)}) but {who}: the processes saw different files when "
                                      f"they started, or files were removed. {rerun}")
        else:
            settled_since = None
        if clock() - last_change > timeout_s:
            raise CheckpointError(f"waited {clock() - last_change:.1f} s without a new image from process(es) "
                                  f"{owing}; still missing: {_describe(missing)}. They may have crashed or hung. "
                                  f"{rerun}; give a slow process more time with --wait-timeout")
        sleep(poll_s)


# ---------------------------------------------------------------- merging and the whole job


def samples_path(out_dir: str | Path, num_samples: int) -> Path:
    return Path(out_dir) / f"samples_{num_samples}.npz"


def merge_shards(plan: SamplingPlan, out_dir: str | Path, progress: bool = True) -> Path:
    """Stream the shard files, in index order, into ``samples_<N>.npz`` (``arr_0`` and ``labels``)."""
    cover = coverage(finished_files(plan, out_dir), plan.num_samples)
    if cover.missing:
        raise CheckpointError(f"{cover.num_missing} image(s) are not generated yet ({_describe(cover.missing)})",
                              fix="run the same sampling command again to complete them")
    first = open_npz_array(shard_path(out_dir, *cover.pieces[0][0]), "images")
    shape = (plan.num_samples, *first.shape[1:])

    def read(key: str) -> Iterator[tuple[np.ndarray, Range, Range]]:
        for (fs, fe), (a, b) in tqdm(cover.pieces, desc=f"merging {key}", disable=not progress, leave=False):
            yield open_npz_array(shard_path(out_dir, fs, fe), key)[a - fs:b - fs], (fs, fe), (a, b)

    def image_chunks() -> Iterator[np.ndarray]:
        for chunk, (fs, fe), _ in read("images"):
            if chunk.shape[1:] != first.shape[1:]:
                raise CheckpointError(f"shard [{fs}, {fe}) has images {chunk.shape[1:]}, the first has "
                                      f"{first.shape[1:]}; delete {shard_path(out_dir, fs, fe)} and sample again")
            yield chunk

    def label_chunks() -> Iterator[np.ndarray]:
        for chunk, (fs, fe), (a, b) in read("labels"):
            if not np.array_equal(chunk, plan.labels(a, b)):
                raise CheckpointError(f"{shard_path(out_dir, fs, fe)} holds other labels than these settings give; "
                                      "it belongs to another run: delete it and sample again")
            yield chunk

    out = samples_path(out_dir, plan.num_samples)
    with NpzWriter(out) as writer:
        writer.write("arr_0", shape, np.uint8, image_chunks())
        writer.write("labels", (plan.num_samples,), np.int64, label_chunks())
    return out


SAMPLE_FOLDER_FIX = "wait for it to finish (or stop it), then rerun to complete the folder; or use another --out"

# Settings that do not change which image an index gets: they may differ when a run is resumed.
# The objective is the checkpoint's (already pinned), recorded so that a samples file describes itself.
RESUMABLE_KEYS = ("num_samples", "batch_size", "num_processes", "samples_file", "torch_version", "irepa_version",
                  "objective")


def _identity(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that determine the images (a setting a run did not record takes its legacy value)."""
    return {k: v for k, v in {**LEGACY_SETTINGS, **settings}.items() if k not in RESUMABLE_KEYS}


def read_run_file(out_dir: str | Path) -> dict[str, Any] | None:
    """The settings recorded in ``out_dir/run.json`` (None before the first run); a damaged file is named."""
    path = Path(out_dir) / RUN_FILE
    if not path.is_file():
        return None
    record = read_json(path, "sampling record", fix=(
        f"it records the settings the shards in {Path(out_dir) / SHARD_DIR} were made with: restore it, or delete "
        f"{out_dir} (or use another --out) to sample again from scratch"))
    if not isinstance(record, dict):
        raise DamagedFileError(path, f"holds a {type(record).__name__}, not the settings", what="sampling record",
                               fix=f"delete {out_dir} (or use another --out) to sample again from scratch")
    return record


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"sampler.steps": 4, ...}``, so a difference names the field, not the whole dict."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_or_write_run(out_dir: str | Path, settings: dict[str, Any], write: bool) -> None:
    """Refuse to resume a folder made with other settings; record them on the first run."""
    path = Path(out_dir) / RUN_FILE
    recorded = read_run_file(out_dir)
    if recorded is not None:
        old = _flat(_identity(recorded))
        new = _flat(_identity(json.loads(json.dumps(settings))))  # normalise tuples etc. as JSON does
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if diff:
            detail = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff)
            hint = ""
            if {k.split(".")[0] for k in diff} & set(LEGACY_SETTINGS):
                hint = (" (runs made before --labels and --precision existed used --labels balanced "
                        "--precision fp32)")
            raise ConfigError(f"{out_dir} holds samples made with other settings ({detail}). Use another --out, "
                              f"the same settings{hint}, or delete the folder to start over")
    elif write:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, settings)


@dataclass
class RunResult:
    samples: Path | None  # the merged file (main process only)
    generated: list[Range] = field(default_factory=list)  # shard files this process wrote


def run_sampling(
    generate_fn: GenerateFn, plan: SamplingPlan, out_dir: str | Path, settings: dict[str, Any],
    rank: int = 0, world_size: int = 1, batch_size: int = 32, barrier: Callable[[], None] | None = None,
    progress: bool = True, wait_timeout: float | None = None, poll_s: float = 5.0,
) -> RunResult:
    """The whole job for one process: check settings, make its part, and (rank 0) wait, merge and record.

    ``barrier`` synchronises the processes once, before any sampling (e.g.
    ``accelerate.PartialState().wait_for_everyone``): every process lists the finished files before
    it, so all split the same missing indices. ``wait_timeout`` bounds the main process's wait for a
    new image from the others (default: the longer of 30 min and 4 shards' worth of its own time).
    """
    out_dir = Path(out_dir)
    barrier = barrier or (lambda: None)
    settings = {**settings, **asdict(plan), "classes": describe_classes(plan.classes),
                "label_scheme": LABEL_SCHEMES[plan.label_mode]}
    is_main = rank == 0
    # one sampling job per folder: the main process holds it until the merged file is written
    owner = hold_folder(out_dir, "a running irepa sample", SAMPLE_FOLDER_FIX) if is_main else contextlib.nullcontext()
    with owner:
        if is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            # temp files left by a killed run (a merged file can be tens of GB); nobody else writes them yet
            if (out_dir / SHARD_DIR).is_dir():
                remove_stale_temps(out_dir / SHARD_DIR)
            merged = samples_path(out_dir, plan.num_samples)
            ours = [merged.name, merged.with_suffix(".json").name, f"{merged.stem}_grid.png", RUN_FILE]
            for stale in remove_stale_temps(out_dir, of=ours):
                log.info("removed %s, left by an earlier run that was stopped while writing", stale)
            clear_markers(out_dir)
        check_or_write_run(out_dir, settings, write=is_main)
        assignment = assign_work(missing_ranges(plan, out_dir), world_size, plan.shard_size)
        barrier()  # no process writes before every process has listed the files
        tic = time.monotonic()
        desc = f"sampling (process {rank})" if world_size > 1 else "sampling"
        made = generate_ranges(generate_fn, plan, out_dir, assignment[rank], batch_size, progress, desc, rank)
        if not is_main:
            write_marker(out_dir, rank, world_size, made)
            return RunResult(None, made)
        if wait_timeout is None:
            own = sum(e - s for s, e in made)
            per_image = (time.monotonic() - tic) / own if own else 0.0
            wait_timeout = max(MIN_WAIT_S, WAIT_SHARDS * plan.shard_size * per_image)
        wait_for_samples(plan, out_dir, assignment, wait_timeout, poll_s)
        merged = merge_shards(plan, out_dir, progress)
        atomic_write_json(merged.with_suffix(".json"), {**settings, "num_processes": world_size,
                                                        "samples_file": merged.name})
        return RunResult(merged, made)


def class_grid(images: np.ndarray, labels: np.ndarray, per_class: int = 16, max_rows: int = 32,
               pad: int = 2) -> torch.Tensor:
    """A uint8 ``(H', W', 3)`` grid with one row per class (first ``max_rows`` classes, in order of appearance).

    When no class has more than one image the images are tiled in a near-square block instead.
    """
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

"""The small-scale setting shared by the quickstart and the recipe comparison.

Fashion-MNIST in pixel space at 32 px (28 px images zero-padded), one grey channel for the model
and RGB for the encoder. A SiT of depth 6 and width 256 with 4 px patches sees an 8x8 token grid,
and DINOv2 ViT-S/14 at 112 px gives the matching 8x8 grid. Chosen so a 2-core CPU trains a few
hundred steps in minutes and the encoder's targets can be cached once.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from irepa.config import RunConfig, load_config
from irepa.models.presets import small_model
from irepa.recipes import split_recipe_name
from irepa.utils.io import atomic_write_json

BASE_OVERRIDES = {
    "model.input_size": 32,
    "model.in_channels": 1,
    "model.num_classes": 10,
    "data.source": "fashion-mnist",
    "data.resolution": 32,
    "data.flip": False,
    "data.num_workers": 0,
    "data.pin_memory": False,
    "data.limit": 4000,
    "align.encoders": "dinov2-vit-s",
    "align.depth": 2,
    "align.projector_hidden_dim": 512,
    "train.steps": 300,
    "train.batch_size": 64,
    "train.lr": 1e-3,
    "train.ema_decay": 0.995,
    "train.extra_ema_decays": [],
    "train.ema_warmup": True,
    "train.grad_clip": 1.0,
    "train.log_every": 10,
    "train.ckpt_every": 150,
    "train.keep_checkpoints": 1,
    "train.sample_every": 0,
    "train.report_to": ["none"],
    "train.mixed_precision": "fp32",
    "sample.kind": "ode-heun",
    "sample.steps": 16,
    "sample.cfg_scale": 1.0,
}

# Each family at the same small size (irepa.models.presets): depth 6, width 256, 4 px patches (an 8x8 token grid).
FAMILY_OVERRIDES = {
    "sit": small_model("sit"),
    "jit": small_model("jit"),
    "meanflow": {**small_model("meanflow"), "sample.kind": "meanflow", "sample.steps": 1},
}


def small_scale_config(out: str | Path, recipe: dict, extra: dict | None = None) -> RunConfig:
    """The small-scale config of a recipe (overrides from :func:`irepa.recipes.recipe_overrides`)."""
    family = split_recipe_name(recipe.get("recipe", "sit"))[0]
    overrides = {**BASE_OVERRIDES, **FAMILY_OVERRIDES[family], **recipe, **(extra or {}), "out": str(out)}
    return load_config(None, overrides)


def token_dataset(cfg: RunConfig, cache_dir: Path, encoder_batch: int = 64, timer: Timer | None = None):
    """The configured dataset, with the alignment encoders' tokens computed once and cached
    (:func:`irepa.align.target_cache.with_cached_targets`, stored in float16).

    ``timer`` (optional) records the phases "data", "encoder weights" and "encode"; an encoder is only
    loaded when its tokens are not cached yet.
    """
    from irepa.align.target_cache import with_cached_targets
    from irepa.data import build_dataset
    from irepa.encoders import load_encoder

    timer = timer or Timer()
    dataset = timer.run("data", build_dataset, cfg.data)
    if not cfg.align.enabled:
        return dataset
    grid = (cfg.model.input_size // _patch(cfg), cfg.model.input_size // _patch(cfg))
    a = cfg.align

    def loader(entry):
        return lambda: timer.run(
            "encoder weights", load_encoder, entry.name, weights=entry.weights, resolution=a.encoder_resolution,
            grid=grid, resize=a.encoder_resize, pos_embed=a.encoder_pos_embed,
        ).freeze()

    encoders = {entry.name: loader(entry) for entry in a.encoders}
    return timer.run("encode", with_cached_targets, dataset, cfg, grid, encoders, cache_dir, encoder_batch,
                     dtype=torch.float16)


def _patch(cfg: RunConfig) -> int:
    from irepa.models import model_config

    return cfg.model.patch_size or model_config(cfg.model.name).patch_size


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    return torch.arange(n) % num_classes


@dataclass
class Timer:
    """Wall and CPU seconds per named phase (CPU: all threads of this process, so it is the work done,
    which a machine shared with other jobs stretches in wall time but not in CPU time).

    Phases may nest; a phase's time excludes the phases run inside it, so the rows add up to the total.
    """

    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    wall_clock: Callable[[], float] = field(default=time.perf_counter, repr=False)
    cpu_clock: Callable[[], float] = field(default=time.process_time, repr=False)
    _inner: list[list[float]] = field(default_factory=list, repr=False)  # per open phase: nested wall, cpu

    def run(self, name: str, fn: Callable, *args, **kwargs):
        self.add(name, 0.0, 0.0)  # rows keep the order in which phases start
        self._inner.append([0.0, 0.0])
        w0, c0 = self.wall_clock(), self.cpu_clock()
        try:
            return fn(*args, **kwargs)
        finally:
            wall, cpu = self.wall_clock() - w0, self.cpu_clock() - c0
            inner_wall, inner_cpu = self._inner.pop()
            self.add(name, wall - inner_wall, cpu - inner_cpu)
            if self._inner:
                self._inner[-1][0] += wall
                self._inner[-1][1] += cpu

    def add(self, name: str, wall_s: float, cpu_s: float) -> None:
        self.wall[name] = self.wall.get(name, 0.0) + wall_s
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu_s

    def table(self) -> list[dict]:
        """One row per phase in the order first run, then a ``total`` row."""
        rows = [{"phase": k, "wall_s": round(self.wall[k], 1), "cpu_s": round(self.cpu[k], 1)} for k in self.wall]
        rows.append({
            "phase": "total",
            "wall_s": round(sum(self.wall.values()), 1),
            "cpu_s": round(sum(self.cpu.values()), 1),
        })
        return rows


def format_time_table(rows: list[dict]) -> str:
    """A Markdown table of :meth:`Timer.table` rows (readable as plain text too)."""
    lines = ["| phase | wall s | CPU s |", "|---|---:|---:|"]
    lines += [f"| {r['phase']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} |" for r in rows]
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    atomic_write_json(path, data, default=_json_default, sort_keys=False)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def read_metrics_csv(path: Path) -> dict[str, list[float]]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            if v not in ("", None):
                cols.setdefault(k, []).append(float(v))
    return cols

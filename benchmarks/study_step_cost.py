"""What a training step of the spatial-vs-global study costs in each family, side by side in one run.

    python benchmarks/study_step_cost.py [--threads 1] [--recipes vanilla,irepa,jit-vanilla,...]

For each recipe in the study's small-scale setting (Fashion-MNIST at 32 px, depth 6, width 256, 8x8 tokens,
batch 32, DINOv2-S targets cached once, first 256 training images), trains 5 steps, then 10 more resumed
from the checkpoint, and prints CPU seconds per step = (CPU of the 10 - CPU of the 5) / 5 (start-up, model
building and the resume about cancel) and the ratio to SiT vanilla. CPU seconds are the work done, which
other jobs on a shared machine stretch in wall time much less; the study's sizing
(docs/study-spatial-vs-global.md) multiplies these by its cells.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from irepa.experiments.quickstart import QUICKSTART_OVERRIDES
from irepa.experiments.small_scale import small_scale_config, token_dataset
from irepa.recipes import recipe_overrides
from irepa.train.trainer import train

RECIPES = "vanilla,irepa,jit-vanilla,jit-irepa,meanflow-vanilla,meanflow-irepa"


def step_cost(recipe: str, root: Path) -> float:
    """CPU seconds per training step of ``recipe`` (see the module docstring)."""
    extra = {**QUICKSTART_OVERRIDES, "data.limit": 256, "train.steps": 15, "train.ckpt_every": 5, "train.log_every": 5}
    cfg = small_scale_config(root / recipe, recipe_overrides(recipe, extra))
    data = token_dataset(cfg, root / "cache")
    c0 = time.process_time()
    train(cfg, stop_after=5, dataset=data)
    c1 = time.process_time()
    train(cfg, resume="auto", stop_after=10, dataset=data)
    c2 = time.process_time()
    return ((c2 - c1) - (c1 - c0)) / 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--recipes", default=RECIPES)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipes = [r for r in args.recipes.split(",") if r]
    with tempfile.TemporaryDirectory() as tmp:
        cost = {r: step_cost(r, Path(tmp)) for r in recipes}
    ref = cost.get("vanilla")
    print(f"| recipe | CPU s per step ({args.threads} thread(s), batch 32) | vs SiT vanilla |")
    print("|---|---|---|")
    for r, c in cost.items():
        print(f"| {r} | {c:.2f} | {c / ref:.2f}x |" if ref else f"| {r} | {c:.2f} | |")


if __name__ == "__main__":
    main()

"""``irepa quickstart``: the whole method on a laptop, offline.

Phases (each with a progress bar, each reusing its cache on a second run): encode the training
images once with DINOv2 ViT-S/14 -> train a small SiT with iREPA -> sample from the EMA model ->
FID against the Fashion-MNIST test split with the offline TF-FID Inception -> report.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path

import torch

from irepa.config import to_dict
from irepa.recipes import recipe_overrides
from irepa.sample.pipeline import load_generator, make_grid, save_png
from irepa.train.checkpoint import latest_checkpoint
from irepa.train.trainer import train
from irepa.utils.io import atomic_path, atomic_write_text

from .evaluation import FidScorer, sample_images
from .small_scale import Timer, format_time_table, read_metrics_csv, small_scale_config, token_dataset, write_json

log = logging.getLogger(__name__)
# The quickstart's own budget on top of the small-scale setting (which the recipe study keeps): 400 steps
# of 32 images at twice the rate (2/3 of the study's 300 x 64 training compute, the same FID), half the
# images to encode (still ~6 passes over them) and 8 Heun steps instead of 16 (the same FID).
# docs/small-scale-study.md, section 4, has the measurements.
QUICKSTART_OVERRIDES = {
    "data.limit": 2000,
    "train.batch_size": 32,
    "train.steps": 400,
    "train.lr": 2e-3,
    "sample.steps": 8,
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]


def run_quickstart(
    out: str | Path = "runs/quickstart",
    steps: int | None = None,
    fid_samples: int = 300,
    fid_ref: int = 1000,
    grid_cfg: float = 2.0,
    extra: dict | None = None,
) -> dict:
    out = Path(out)
    timer = Timer()
    timer.add("startup (Python, imports)", process_age_s(), time.process_time())
    extra = {**QUICKSTART_OVERRIDES, **(extra or {})}
    if steps is not None:
        extra["train.steps"] = steps
    cfg = small_scale_config(out / "run", recipe_overrides("irepa"), extra)
    torch.manual_seed(cfg.train.seed)

    dataset = token_dataset(cfg, out / "cache", timer=timer)
    ckpt_dir = Path(cfg.out) / "checkpoints"
    resume = "auto" if latest_checkpoint(ckpt_dir) is not None else None
    timer.run("train", train, cfg, resume=resume, dataset=dataset)

    generator = load_generator(ckpt_dir, use_ema=True)
    grid_sampler = type(cfg.sample)(**{**to_dict(cfg)["sample"], "cfg_scale": grid_cfg})
    labels = torch.arange(10).repeat_interleave(10)
    grid = timer.run("sample (grid)", generator.generate, labels, list(range(100)), grid_sampler)
    save_png(make_grid(grid, nrow=10), out / "samples.png")

    images = timer.run("sample (FID)", sample_images, generator, fid_samples, cfg.sample, out / "cache", seed=10_000)
    scorer = FidScorer(out / "cache", num_ref=fid_ref, resolution=cfg.data.resolution)
    timer.run("FID reference statistics", scorer.reference_stats)
    fid = timer.run("FID of the samples", scorer, images)

    curves = timer.run("curves", plot_curves, Path(cfg.out) / "metrics.csv", out / "curves.png")
    metrics = {
        "fid": fid["fid"],
        "fid_samples": fid_samples,
        "fid_reference": f"Fashion-MNIST test split, first {fid_ref} images",
        "fid_network": fid["network"],
        "sampler": to_dict(cfg)["sample"],
        "grid_cfg_scale": grid_cfg,
        "steps": cfg.train.steps,
        "final_loss_diffusion": curves.get("loss_diffusion"),
        "final_loss_align": curves.get("loss_align"),
        "timings": timer.table(),
        "checkpoint": str(generator.info["checkpoint"]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.python_version()}",
    }
    write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "report.md", render_report(cfg, metrics))
    return metrics


def process_age_s() -> float:
    """Wall seconds since this process started (Linux ``/proc``; 0.0 where that is not available)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return max(time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def plot_curves(metrics_csv: Path, png: Path) -> dict[str, float]:
    """Diffusion and alignment loss against steps; returns the last logged values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = read_metrics_csv(metrics_csv)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(cols["step"], cols["loss_diffusion"], color="C0")
    axes[0].set(title="diffusion (velocity) loss", xlabel="step")
    if cols.get("loss_align"):
        axes[1].plot(cols["step"], cols["loss_align"], color="C1")
    axes[1].set(title="alignment loss (-cosine x coeff)", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return {k: v[-1] for k, v in cols.items() if v}


def render_report(cfg, metrics: dict) -> str:
    s = metrics["sampler"]
    return f"""# irepa quickstart

iREPA on Fashion-MNIST, CPU only, offline. Everything below was produced by `make quickstart`.

| | |
|---|---|
| FID (N={metrics["fid_samples"]} samples vs {metrics["fid_reference"]}) | **{metrics["fid"]:.2f}** |
| FID network | {metrics["fid_network"]} |
| model | {cfg.model.name} with depth {cfg.model.depth}, width {cfg.model.hidden_size}, pixel space \
{cfg.model.input_size}x{cfg.model.input_size}x{cfg.model.in_channels} (8x8 tokens) |
| alignment | iREPA: {cfg.align.projector} {cfg.align.kernel_size}x{cfg.align.kernel_size} projector after block \
{cfg.align.depth}, z-score alpha {cfg.align.zscore_alpha}, coeff {cfg.align.coeff}, encoder \
{", ".join(e.name for e in cfg.align.encoders)} at 112 px (8x8 tokens, cached once) |
| training | {cfg.train.steps} steps, batch {cfg.train.batch_size}, AdamW lr {cfg.train.lr}, EMA \
{cfg.train.ema_decay}, first {cfg.data.limit} training images, no flips |
| sampler | {s["kind"]}, {s["steps"]} steps, CFG {s["cfg_scale"]} for FID; the grid uses CFG \
{metrics["grid_cfg_scale"]} |
| final losses | diffusion {metrics["final_loss_diffusion"]:.4f}, alignment {metrics["final_loss_align"]:.4f} |
| machine | {metrics["machine"]} |

## Samples (one row per class: {", ".join(CLASS_NAMES)})

![samples](samples.png)

## Training curves

![curves](curves.png)

## Time per phase

Wall and CPU seconds of this run (CPU counts every thread of the process; a cached phase costs
almost nothing on a second run). Installing the environment is not part of this table.

{format_time_table(metrics["timings"])}

Why these settings: the whole run fits in minutes on a 2-core CPU. A 2-core CPU trains this
7M-parameter SiT at roughly two steps of 32 images per second, the 8x8 token grid keeps both the
model and DINOv2-S (at 112 px) cheap, and the encoder targets of an un-augmented dataset never
change, so they are computed once and cached. FID on
{metrics["fid_samples"]} samples is biased upwards compared with the usual 50K; compare numbers only
at equal N.
"""

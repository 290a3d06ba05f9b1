"""``irepa compare``: train several recipes with the same seed, data order and budget; FID vs steps.

Each recipe trains in chunks of ``eval_every`` steps (resuming its own checkpoint), and after each
chunk the EMA model draws the same class-balanced samples (same seeds) for FID. Rows already in
``fid.csv`` are skipped, so an interrupted comparison continues where it stopped. Recipes of different
families (``sit-irepa``, ``jit-irepa``, ``meanflow-irepa``) share the data, encoder and budget; specs
that differ only in sampler changes (``meanflow-irepa+sample.steps=1`` and ``...=16``) share one
training run and differ in how it is sampled.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from irepa.recipes import recipe_overrides
from irepa.sample.pipeline import load_generator
from irepa.train.checkpoint import latest_checkpoint
from irepa.train.trainer import train
from irepa.utils.io import atomic_path, atomic_write_text

from .evaluation import FidScorer, sample_images
from .small_scale import read_metrics_csv, small_scale_config, token_dataset

FIELDS = ["recipe", "step", "fid", "loss_diffusion", "n_samples"]


def _done(path: Path) -> dict[tuple[str, int], dict]:
    if not path.is_file():
        return {}
    with open(path) as f:
        return {(r["recipe"], int(r["step"])): r for r in csv.DictReader(f)}


def _append(path: Path, row: dict) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)


def run_compare(
    recipes: list[str],
    steps: int,
    eval_every: int,
    out: str | Path = "runs/compare",
    encoder: str | None = None,
    fid_samples: int = 300,
    fid_ref: int = 1000,
    extra: dict | None = None,
) -> list[dict]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if eval_every < 1 or steps < eval_every:
        raise ValueError("need 1 <= --eval-every <= --steps")
    for name in recipes:  # fail on a typo now, not after the first recipe has trained
        recipe_overrides(name, extra)
    table = out / "fid.csv"
    done = _done(table)
    scorer = FidScorer(out / "cache", num_ref=fid_ref, resolution=32)
    for name in recipes:
        overrides = {**recipe_overrides(name, extra), "train.steps": steps, "train.ckpt_every": eval_every}
        if encoder:
            overrides["align.encoders"] = encoder
        cfg = small_scale_config(out / training_name(name), overrides)
        dataset = token_dataset(cfg, out / "cache")
        for stop in range(eval_every, steps + 1, eval_every):
            if (name, stop) in done:
                continue
            ckpt_dir = Path(cfg.out) / "checkpoints"
            latest = latest_checkpoint(ckpt_dir)
            have = int(latest.stem.split("_")[1]) if latest else 0
            if have < stop:
                train(cfg, resume="auto" if latest else None, stop_after=stop - have, dataset=dataset)
            generator = load_generator(ckpt_dir / f"step_{stop:07d}.pt", use_ema=True)
            images = sample_images(generator, fid_samples, cfg.sample, out / "cache", seed=10_000)
            fid = scorer(images)["fid"]
            cols = read_metrics_csv(Path(cfg.out) / "metrics.csv")
            loss = next(
                (v for s, v in zip(reversed(cols["step"]), reversed(cols["loss_diffusion"])) if s <= stop), None
            )
            row = {"recipe": name, "step": stop, "fid": round(fid, 3), "loss_diffusion": loss, "n_samples": fid_samples}
            _append(table, row)
            done[(name, stop)] = row
            print(f"{name} step {stop}: FID {fid:.2f}")
    rows = [r for r in _done(table).values() if r["recipe"] in recipes]
    plot_fid(rows, out / "fid_vs_steps.png")
    atomic_write_text(out / "table.md", markdown_table(rows, recipes))
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


def training_name(spec: str) -> str:
    """The run folder of a recipe spec: specs that differ only in ``+sample.*`` changes share one training run."""
    name, *changes = spec.split("+")
    kept = [c for c in changes if not c.startswith("sample.")]
    return "+".join([name, *kept])


def markdown_table(rows: list[dict], recipes: list[str]) -> str:
    steps = sorted({int(r["step"]) for r in rows})
    by = {(r["recipe"], int(r["step"])): float(r["fid"]) for r in rows}
    lines = ["| recipe | " + " | ".join(f"FID @ {s}" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for name in recipes:
        cells = [f"{by[(name, s)]:.2f}" if (name, s) in by else "" for s in steps]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_fid(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in dict.fromkeys(r["recipe"] for r in rows):
        pts = sorted((int(r["step"]), float(r["fid"])) for r in rows if r["recipe"] == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set(xlabel="training step", ylabel="FID (lower is better)", title="FID vs steps")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

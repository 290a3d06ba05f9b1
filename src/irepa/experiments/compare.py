"""``irepa compare``: train several recipes with the same data and budget, over one or several training seeds.

Each (recipe, seed) cell trains in chunks of ``eval_every`` steps (resuming its own checkpoint), and after
each chunk the EMA model draws class-balanced samples for FID (and FD-DINOv2 when asked), the last logged
losses are read, and (when asked) ``irepa diagnose``'s figures of the hidden state are taken. Every
figure is one row of ``runs.csv``; rows already there are skipped, so an interrupted comparison continues
where it stopped: finished cells cost nothing, a half-trained one resumes from its last checkpoint.

With ``seeds`` each cell trains in ``<out>/<recipe>/seed<k>`` with ``train.seed = k`` (initialisation, data
order and noise) and samples from its own seed range, and ``summary.csv`` / ``table.md`` give every
figure's mean over seeds with a 95% Student-t interval (``mean ± t_{0.975, n-1} s / sqrt(n)``); the plot
has error bars. Without seeds a recipe trains once in ``<out>/<recipe>`` (the original layout).

Recipes of different families (``sit-irepa``, ``jit-irepa``, ``meanflow-irepa``) share the data, encoder and
budget; specs that differ only in sampler changes (``meanflow-irepa+sample.steps=1`` and ``...=16``)
share one training run and differ in how it is sampled.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import torch

from irepa.metrics.stats import t_interval
from irepa.recipes import recipe_overrides, split_spec
from irepa.sample.pipeline import load_generator
from irepa.train.checkpoint import latest_checkpoint
from irepa.train.trainer import train
from irepa.utils.io import atomic_open, atomic_path, atomic_write_text

from .evaluation import FdDinoScorer, FidScorer, sample_images
from .small_scale import read_metrics_csv, small_scale_config, token_dataset

FIGURES = ["fid", "fd_dinov2", "loss_diffusion", "loss_align", "diag_probe", "diag_cka", "diag_lds", "diag_cds"]
FIELDS = ["recipe", "seed", "step", *FIGURES, "n_samples"]
TABLE = "runs.csv"
LEGACY_TABLE = "fid.csv"  # the layout before seeds: recipe, step, fid, loss_diffusion, n_samples
SAMPLE_SEED = 10_000  # samples of seed k use SAMPLE_SEED + k * SEED_STRIDE + i
SEED_STRIDE = 100_000


def _key(recipe: str, seed, step) -> tuple[str, str, int]:
    return recipe, "" if seed in (None, "") else str(int(seed)), int(step)


def read_rows(out: Path) -> dict[tuple[str, str, int], dict]:
    """Rows of ``runs.csv`` (and of a comparison written before seeds existed), keyed by (recipe, seed, step)."""
    done: dict[tuple[str, str, int], dict] = {}
    for name in (LEGACY_TABLE, TABLE):
        path = out / name
        if path.is_file():
            with open(path) as f:
                for r in csv.DictReader(f):
                    row = {k: r.get(k, "") for k in FIELDS}
                    done[_key(row["recipe"], row["seed"], row["step"])] = row
    return done


def _append(path: Path, row: dict) -> None:
    if not path.is_file():
        with atomic_open(path, "w") as f:  # the header appears with the first row, never half-written
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerow(row)
        return
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=FIELDS).writerow(row)
        f.flush()


def cell_dir(out: Path, recipe: str, seed: int | None) -> Path:
    """Where a cell trains: ``<out>/<training name>`` or ``<out>/<training name>/seed<k>``."""
    base = out / training_name(recipe)
    return base if seed is None else base / f"seed{seed}"


def run_compare(
    recipes: list[str],
    steps: int,
    eval_every: int,
    out: str | Path = "runs/compare",
    encoder: str | None = None,
    fid_samples: int = 300,
    fid_ref: int = 1000,
    extra: dict | None = None,
    seeds: list[int] | None = None,
    fd_dinov2: bool = False,
    diagnose_t: float | None = None,
    diagnose_n: tuple[int, int] = (500, 250),
    scorer: Callable | None = None,
) -> list[dict]:
    """Train and evaluate every (recipe, seed) cell; returns the rows of these cells (see the module docstring).

    ``scorer`` (images -> ``{"fid": ...}``) replaces the Inception FID, e.g. a scorer with a smaller reference.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if eval_every < 1 or steps < eval_every:
        raise ValueError("need 1 <= --eval-every <= --steps")
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0):
        raise ValueError(f"--seeds needs distinct non-negative integers, got {seeds}")
    for name in recipes:  # fail on a typo now, not after the first recipe has trained
        recipe_overrides(name, extra)
    done = read_rows(out)
    scorer = scorer or FidScorer(out / "cache", num_ref=fid_ref, resolution=32)
    fd_scorer = FdDinoScorer(out / "cache", num_ref=fid_ref, resolution=32) if fd_dinov2 else None
    for name in recipes:
        for seed in seeds if seeds is not None else [None]:
            overrides = {**recipe_overrides(name, extra), "train.steps": steps, "train.ckpt_every": eval_every}
            if encoder:
                overrides["align.encoders"] = encoder
            if seed is not None:
                overrides["train.seed"] = seed
            cfg = small_scale_config(cell_dir(out, name, seed), overrides)
            dataset = None  # built (and the targets encoded) only when this cell still has to train
            for stop in range(eval_every, steps + 1, eval_every):
                if _key(name, seed, stop) in done:
                    continue
                ckpt_dir = Path(cfg.out) / "checkpoints"
                latest = latest_checkpoint(ckpt_dir)
                have = int(latest.stem.split("_")[1]) if latest else 0
                if have < stop:
                    dataset = dataset if dataset is not None else token_dataset(cfg, out / "cache")
                    train(cfg, resume="auto" if latest else None, stop_after=stop - have, dataset=dataset)
                row = evaluate_cell(cfg, name, seed, stop, out, scorer, fd_scorer, fid_samples, diagnose_t,
                                    diagnose_n)
                _append(out / TABLE, row)
                done[_key(name, seed, stop)] = row
                print(f"{name}{'' if seed is None else f' seed {seed}'} step {stop}: FID {float(row['fid']):.2f}")
    wanted = [(n, "" if s is None else str(s)) for n in recipes for s in (seeds if seeds is not None else [None])]
    rows = [r for k, r in read_rows(out).items() if (k[0], k[1]) in wanted]
    summary = summarise(rows)
    write_summary(summary, out / "summary.csv")
    plot_fid(summary, out / "fid_vs_steps.png")
    atomic_write_text(out / "table.md", markdown_table(rows, recipes))
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


def evaluate_cell(cfg, name: str, seed: int | None, stop: int, out: Path, scorer, fd_scorer, fid_samples: int,
                  diagnose_t: float | None, diagnose_n: tuple[int, int]) -> dict:
    """Every figure of one cell at step ``stop`` (the EMA model of that checkpoint)."""
    ckpt = Path(cfg.out) / "checkpoints" / f"step_{stop:07d}.pt"
    generator = load_generator(ckpt, use_ema=True)
    sample_seed = SAMPLE_SEED + (seed or 0) * SEED_STRIDE
    images = sample_images(generator, fid_samples, cfg.sample, out / "cache", seed=sample_seed)
    cols = read_metrics_csv(Path(cfg.out) / "metrics.csv")

    def last(column: str):
        pairs = zip(reversed(cols.get("step", [])), reversed(cols.get(column, [])))
        return next((v for s, v in pairs if s <= stop), "")

    row = {"recipe": name, "seed": "" if seed is None else seed, "step": stop, "n_samples": fid_samples,
           "fid": round(scorer(images)["fid"], 3), "loss_diffusion": last("loss_diffusion"),
           "loss_align": last("loss_align") if cfg.align.enabled else ""}
    if fd_scorer is not None:
        row["fd_dinov2"] = round(fd_scorer(images)["fid"], 3)
    if diagnose_t is not None:
        from .diagnose import diagnose_runs

        diag = diagnose_runs([cfg.out], (diagnose_t,), n_train=diagnose_n[0], n_test=diagnose_n[1])[-1]
        row.update({f"diag_{k}": round(float(diag[k]), 4) for k in ("probe", "cka", "lds", "cds")})
    return {k: row.get(k, "") for k in FIELDS}


def summarise(rows: list[dict], level: float = 0.95) -> list[dict]:
    """Per (recipe, step): every figure's mean over seeds with its Student-t interval and the count."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], int(r["step"])), []).append(r)
    out = []
    for (recipe, step), rs in groups.items():
        row: dict = {"recipe": recipe, "step": step, "n_seeds": len(rs)}
        for fig in FIGURES:
            vals = [float(r[fig]) for r in rs if r.get(fig) not in ("", None)]
            if not vals:
                continue
            est = t_interval(vals, level)
            row[f"{fig}_mean"], row[f"{fig}_ci_low"], row[f"{fig}_ci_high"] = est.value, est.ci_low, est.ci_high
        out.append(row)
    return out


def summary_columns(summary: list[dict]) -> list[str]:
    cols = ["recipe", "step", "n_seeds"]
    for fig in FIGURES:
        if any(f"{fig}_mean" in r for r in summary):
            cols += [f"{fig}_mean", f"{fig}_ci_low", f"{fig}_ci_high"]
    return cols


def write_summary(summary: list[dict], path: Path) -> None:
    with atomic_open(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=summary_columns(summary), restval="")
        w.writeheader()
        w.writerows(summary)


def training_name(spec: str) -> str:
    """The run folder of a recipe spec: specs that differ only in ``+sample.*`` changes share one training run."""
    name, changes = split_spec(spec)
    kept = [c for c in changes if not c.startswith("sample.")]
    return "+".join([name, *kept])


def format_estimate(mean: float, low: float, high: float, digits: int = 2) -> str:
    """``12.34 ± 1.20`` (the interval's half-width), or the mean alone when there is no interval."""
    if not math.isfinite(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(high - low) / 2:.{digits}f}"


def markdown_table(rows: list[dict], recipes: list[str]) -> str:
    """FID per recipe and step: the value, or with several seeds mean ± 95% t-interval half-width (n)."""
    summary = {(r["recipe"], r["step"]): r for r in summarise(rows)}
    steps = sorted({int(r["step"]) for r in rows})
    seeded = any(r["n_seeds"] > 1 for r in summary.values())
    head = "FID (mean ± 95% t-interval over seeds)" if seeded else "FID"
    lines = ["| recipe | " + " | ".join(f"{head} @ {s}" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for name in recipes:
        cells = []
        for s in steps:
            r = summary.get((name, s))
            if r is None or "fid_mean" not in r:
                cells.append("")
            elif r["n_seeds"] > 1:
                cells.append(f"{format_estimate(r['fid_mean'], r['fid_ci_low'], r['fid_ci_high'])} (n={r['n_seeds']})")
            else:
                cells.append(f"{r['fid_mean']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_fid(summary: list[dict], png: Path) -> None:
    """FID against steps per recipe; error bars are the 95% t-intervals over seeds where there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in dict.fromkeys(r["recipe"] for r in summary):
        pts = sorted((r["step"], r["fid_mean"], r["fid_ci_low"], r["fid_ci_high"]) for r in summary
                     if r["recipe"] == name and "fid_mean" in r)
        x, y = [p[0] for p in pts], [p[1] for p in pts]
        err = [[p[1] - p[2] if math.isfinite(p[2]) else 0 for p in pts],
               [p[3] - p[1] if math.isfinite(p[3]) else 0 for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
    ax.set(xlabel="training step", ylabel="FID (lower is better)", title="FID vs steps (95% t-interval over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

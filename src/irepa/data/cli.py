"""``irepa prepare-latents``: encode an image dataset into a resumable VAE latent cache."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from irepa.errors import ConfigError, DataError
from irepa.utils.console import setup_logging

from .config import CORRUPT_POLICIES, DataConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare-latents",
        help="encode images with a VAE into a sharded, resumable latent cache",
        description=(
            "Store the VAE posterior moments (mean, logvar) of every image and of its horizontal mirror, "
            "in safetensors shards with a JSON index and per-channel latent statistics. Rerunning the same "
            "command after an interruption finishes the missing shards only."
        ),
    )
    p.add_argument(
        "--data",
        default=None,
        help="image folder (root/<class>/<image> or root/train/<class>/...), "
        "or HF dataset name / Fashion-MNIST folder with --source",
    )
    p.add_argument(
        "--source",
        default="folder",
        choices=("folder", "fashion-mnist", "hf", "synthetic"),
        help="image source (default: folder)",
    )
    p.add_argument("--split", default="train", help="folder sub-directory / dataset split (default: train)")
    p.add_argument(
        "--vae",
        required=True,
        help="diffusers AutoencoderKL: hub id (stabilityai/sd-vae-ft-mse, stabilityai/sd-vae-ft-ema) "
        "or local folder",
    )
    p.add_argument(
        "--resolution", type=int, default=256, help="ADM centre-crop size in pixels (default: 256)"
    )
    p.add_argument("--out", required=True, help="cache folder to write (created if missing)")
    p.add_argument(
        "--batch-size", type=int, default=32, help="images per VAE forward, per process (default: 32)"
    )
    p.add_argument("--shard-size", type=int, default=1024, help="items per shard file (default: 1024)")
    p.add_argument(
        "--num-workers", type=int, default=4, help="image decoding workers per process (default: 4)"
    )
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "float16"), help="storage dtype of the moments"
    )
    p.add_argument("--limit", type=int, default=None, help="encode only the first N items")
    p.add_argument(
        "--num-classes", type=int, default=None, help="class count (synthetic source; a check otherwise)"
    )
    p.add_argument(
        "--on-corrupt",
        default="skip",
        choices=CORRUPT_POLICIES,
        help="unreadable images: skip (logged, left out of the cache) or fail (default: skip)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a cache of a different configuration in --out"
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="check the SHA-256 of every shard of an existing cache and re-encode damaged ones "
        "(sizes and headers are always checked)",
    )
    p.set_defaults(func=run_prepare_latents, on_interrupt="finished shards are kept: rerun the same command "
                   "to encode the rest")


def run_prepare_latents(args: argparse.Namespace) -> int:
    from .prepare import prepare_latents

    setup_logging(logging.INFO, "%(asctime)s %(levelname)s %(name)s: %(message)s")  # above the progress bars
    if args.source in ("folder", "hf") and not args.data:
        raise ConfigError(f"--source {args.source} needs --data", fix="give the image folder or dataset name")
    if args.source == "folder" and not Path(args.data).expanduser().is_dir():
        what = "is a file, not a folder" if Path(args.data).expanduser().exists() else "no such folder"
        raise DataError(f"--data {args.data}: {what}", fix="give a folder of images (root/<class>/<image>)")
    for name in ("batch_size", "shard_size", "resolution"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    cfg = DataConfig(
        source=args.source,
        path=args.data,
        split=args.split,
        resolution=args.resolution,
        limit=args.limit,
        num_classes=args.num_classes,
        on_corrupt=args.on_corrupt,
        num_workers=args.num_workers,
        flip=False,
    )
    index = prepare_latents(
        cfg,
        args.vae,
        args.out,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        num_workers=args.num_workers,
        dtype=args.dtype,
        overwrite=args.overwrite,
        verify=args.verify,
    )
    if index.get("complete"):
        print(
            f"latent cache {args.out}: {index['num_valid']} items, latent shape {index['latent_shape']}, "
            f"{len(index['shards'])} shards, {len(index['skipped'])} unreadable"
        )
    return 0

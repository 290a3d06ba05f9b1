"""Data loading throughput: images/s of the library's loader, beside the training step's rate.

    python benchmarks/data_loader.py --train-json train.json            # on the training machine
    python benchmarks/data_loader.py --device cpu --quick --train-json cpu.json

The loader is ``irepa.data.make_loader`` (deterministic batches, ``num_workers`` processes, pinned
memory on CUDA machines) over

* ``synthetic``: the coloured-shapes dataset rendered at ``--resolution`` (numpy per item);
* ``folder``: an image folder read, decoded and ADM-centre-cropped by ``ImageFolderDataset`` — your
  own with ``--folder PATH`` (e.g. ImageNet's train/), otherwise ``--folder-images`` JPEGs of
  ImageNet's typical 500x375 size written to a temporary folder and removed afterwards.

Latent training (``data.source: latents``) reads the same images (for the encoder targets) plus
memory-mapped latent moments, so the folder figure is its cost too. The first batches (worker
start-up) are not timed. With ``--train-json`` (the output of ``train_step.py``) each loader rate is
set against the fastest training step measured there: a ratio above 1 means the loader keeps up.
On a machine with few cores the loader's workers and the training step share the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import machine_info, pick_device, print_table, save_result, say

from irepa.data import make_loader
from irepa.data.folder import ImageFolderDataset
from irepa.data.synthetic import SyntheticShapes


def write_folder(root: Path, count: int, size: tuple[int, int], classes: int = 8) -> None:
    """``count`` JPEGs (quality 90) of smooth shapes plus fine noise, spread over ``classes`` folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    for i in range(count):
        coarse = rng.random((h // 25 + 1, w // 25 + 1, 3))
        base = np.kron(coarse, np.ones((25, 25, 1)))[:h, :w]
        image = np.clip(255 * (0.8 * base + 0.2 * rng.random((h, w, 3))), 0, 255).astype(np.uint8)
        folder = root / f"class_{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:06d}.jpg", quality=90)


def loader_rate(dataset, batch: int, workers: int, pin: bool, batches: int) -> dict[str, float]:
    """Images/s over ``batches`` batches after the start-up ones."""
    it = iter(make_loader(dataset, batch_size=batch, seed=0, num_workers=workers, pin_memory=pin))
    for _ in range(1 + 2 * workers):  # start-up: workers spawn and fill their prefetch queues
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    took = time.perf_counter() - start
    del it
    return {"images_per_s": batches * batch / took, "batches_per_s": batches / took}


def fastest_training(path: str) -> dict[str, Any] | None:
    rows = [r for r in json.loads(Path(path).read_text())["rows"] if r.get("variant") == "ours"]
    return max(rows, key=lambda r: r["images_per_s"]) if rows else None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda (default when present: pinned memory) or cpu")
    p.add_argument("--quick", action="store_true", help="CPU-sized: batch 8, workers 0 and 2, 6 timed batches")
    p.add_argument("--batch", type=int, default=None, help="images per batch (default 64; 8 quick)")
    p.add_argument("--workers", default=None, help="comma list of num_workers (default 0,4,8,16 capped by cores)")
    p.add_argument("--batches", type=int, default=None, help="timed batches per setting (default 20; 6 quick)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--folder", default=None, help="an image folder (root/<class>/<image>) to read instead")
    p.add_argument("--folder-images", type=int, default=None, help="JPEGs to generate (default 512; 64 quick)")
    p.add_argument("--train-json", default=None, help="train_step.py output to compare against")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    args.batch = args.batch or (8 if args.quick else 64)
    default_workers = "0,2" if args.quick else ",".join(str(w) for w in (0, 4, 8, 16) if w <= cores)
    args.workers = [int(w) for w in (args.workers or default_workers).split(",")]
    args.batches = args.batches or (6 if args.quick else 20)
    args.folder_images = args.folder_images or (64 if args.quick else 512)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device or ("cpu" if args.quick else None))
    pin = device.type == "cuda"
    info = machine_info(device)
    say(f"device: {info['device']} | cores {info['cpu_count']} | load {info.get('load_average_1m_at_start', '-')}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="irepa-loader-bench-") as tmp:
        folder = args.folder
        if folder is None:
            folder = Path(tmp) / "images"
            say(f"writing {args.folder_images} JPEGs (500x375) to a temporary folder")
            write_folder(folder, args.folder_images, (500, 375))
        datasets = {
            "synthetic": SyntheticShapes(size=max(1024, args.batch * 4), resolution=args.resolution),
            "folder": ImageFolderDataset(folder, resolution=args.resolution),  # root/train/ when present
        }
        for name, dataset in datasets.items():
            for workers in args.workers:
                r = loader_rate(dataset, args.batch, workers, pin, args.batches)
                rows.append({"dataset": name, "workers": workers, "batch": args.batch, **r})
                say(f"  {name:9s} workers {workers:2d}: {r['images_per_s']:8.1f} img/s")
    train = fastest_training(args.train_json) if args.train_json else None
    if train is not None:
        for r in rows:
            r["loader_over_training"] = r["images_per_s"] / train["images_per_s"]
    say("")
    print_table(rows, [("dataset", "dataset", ""), ("workers", "workers", "d"), ("batch", "batch", "d"),
                       ("batches_per_s", "batches/s", ".2f"), ("images_per_s", "img/s", ".1f"),
                       ("loader_over_training", "loader/train", ".1f")])
    if train is not None:
        say(f"\ntraining reference: the fastest 'ours' row of {args.train_json}: {train['model']} {train['recipe']} "
            f"{train['precision']} {train['mode']} batch {train['batch']}, {train['images_per_s']:.2f} img/s")
    bytes_per_batch = args.batch * 3 * args.resolution**2 * 4
    say(f"one batch of float32 images is {bytes_per_batch / 2**20:.0f} MiB ({args.batch} x 3 x {args.resolution}^2)")
    save_result(args, "data_loader", info, rows, training_reference=train)
    return 0


if __name__ == "__main__":
    sys.exit(main())

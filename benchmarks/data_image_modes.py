"""What a training batch costs in each ``image_mode``: decode time and bytes through worker memory.

    python benchmarks/data_image_modes.py [--images 64] [--resolution 256] [--batch 256] [--repeats 3]

Writes ``--images`` JPEGs of ImageNet-like size (375 x 500) to a temporary image folder, reads every
item in each mode, best of ``--repeats`` interleaved passes (``float``: today's float32 items,
``uint8``: the source's bytes, ``none``: no image, e.g. a latent-cache run without an encoder) and
prints items/s, the bytes a batch of ``--batch`` items moves, and both as ratios to ``float``. With a
GPU it also times the host-to-device copy plus :func:`irepa.codecs.unit_images` per batch against
copying float32.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from irepa.codecs import unit_images
from irepa.data import IMAGE_MODES, DataConfig, build_dataset


def write_jpegs(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    (root / "class0").mkdir(parents=True)
    for i in range(count):
        pixels = rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "class0" / f"{i:05d}.jpg", quality=90)


def items_per_second(dataset) -> tuple[float, int]:
    tic = time.perf_counter()
    item = None
    for i in range(len(dataset)):
        item = dataset[i]
    seconds = time.perf_counter() - tic
    image = item.get("image")
    return len(dataset) / seconds, 0 if image is None else image.nbytes


def transfer_ms(batch: torch.Tensor, repeats: int = 10) -> float:
    batch = batch.pin_memory()
    unit_images(batch, "cuda")
    torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(repeats):
        unit_images(batch, "cuda")
    torch.cuda.synchronize()
    return (time.perf_counter() - tic) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp), args.images)
        cfg = DataConfig(source="folder", path=tmp, resolution=args.resolution)
        datasets = {mode: build_dataset(cfg, image_mode=mode) for mode in IMAGE_MODES}
        results: dict[str, tuple[float, int]] = {}
        for _ in range(args.repeats):  # interleaved, so a noisy neighbour hurts every mode alike
            for mode, dataset in datasets.items():
                rate, nbytes = items_per_second(dataset)
                results[mode] = (max(rate, results.get(mode, (0.0, 0))[0]), nbytes)
    base_rate, base_bytes = results["float"]
    print(f"{args.images} JPEGs 375x500 -> {args.resolution} px; batch of {args.batch}")
    print(f"{'mode':>6} {'items/s':>10} {'speed-up':>9} {'MB/batch':>9} {'bytes ratio':>12}")
    for mode, (rate, nbytes) in results.items():
        mb = nbytes * args.batch / 2**20
        print(f"{mode:>6} {rate:10.1f} {rate / base_rate:8.2f}x {mb:9.1f} {nbytes / base_bytes:12.2f}")
    if torch.cuda.is_available():
        shape = (args.batch, 3, args.resolution, args.resolution)
        as_uint8 = torch.randint(0, 256, shape, dtype=torch.uint8)
        float_ms, uint8_ms = transfer_ms(as_uint8.float().div_(255)), transfer_ms(as_uint8)
        print(f"host->GPU + to float: float32 {float_ms:.2f} ms, uint8 {uint8_ms:.2f} ms "
              f"({float_ms / uint8_ms:.2f}x)")


if __name__ == "__main__":
    main()

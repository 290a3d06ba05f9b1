"""Exercise every CUDA path of irepa in a few minutes and print a pass/fail table.

Run on a machine with a GPU (two GPUs add the multi-process checks):

    python benchmarks/gpu_check.py [--out gpu_check.json]

Checks: bf16 and fp16 training with regional ``torch.compile`` (finite, falling losses; fp16 through the
loss scaler), each recipe family (SiT, JiT, MeanFlow's JVP) on CUDA, exact resume, resume on fewer
visible devices, a 2-process run (``torchrun``) when two GPUs exist, bf16 vs fp32 sampling (the
difference is reported), device-side ``uint8 -> [0, 1]`` conversion, and evaluation features with TF32
off against float64. Nothing is downloaded: encoders have random weights, data is synthetic.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from irepa.utils.io import atomic_write_json

RESULTS: list[dict] = []
DEVICE = "cuda"  # --cpu-dry-run checks this script itself on a CPU (no fp16, no compile, no torchrun)


def check(name: str):
    def wrap(fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                detail = fn(*args, **kwargs) or ""
                status = "skip" if detail.startswith("skipped") else "pass"
            except Exception as err:  # noqa: BLE001 - the table reports every failure and carries on
                detail = f"{type(err).__name__}: {err}".splitlines()[0][:300]
                traceback.print_exc()
                status = "FAIL"
            RESULTS.append({"check": name, "status": status, "detail": detail,
                            "seconds": round(time.perf_counter() - t0, 1)})
            print(f"[{status}] {name}: {detail}", flush=True)

        return run

    return wrap


def tiny_config(out: Path, **extra):
    from irepa.config import load_config

    overrides = {
        "model.name": "SiT-B/2", "model.depth": 4, "model.input_size": 32, "model.in_channels": 3,
        "model.num_classes": 10, "data.source": "synthetic", "data.resolution": 32, "data.num_classes": 10,
        "data.synthetic_size": 512, "data.num_workers": 2, "align.encoders": "dinov2-vit-s", "align.depth": 2,
        "align.projector": "conv", "align.norm": "zscore", "align.coeff": 1.0, "train.steps": 40,
        "train.batch_size": 32, "train.lr": 3e-4, "train.log_every": 10, "train.ckpt_every": 20,
        "train.sample_every": 0, "train.report_to": ["none"], "train.ema_decay": 0.99, "out": str(out),
    }
    if DEVICE == "cpu":  # the dry run only checks that this script works: a much smaller problem
        overrides.update({"model.hidden_size": 64, "model.num_heads": 2, "model.input_size": 16, "data.resolution": 16,
                          "train.batch_size": 8, "data.num_workers": 0, "train.lr": 1e-3})
    overrides.update(extra)
    cfg = load_config(None, overrides)
    for e in cfg.align.encoders:
        e.weights = "random"
    return cfg


def _falling(losses: list[float]) -> str:
    import math

    if not all(math.isfinite(v) for v in losses):
        raise AssertionError(f"non-finite losses: {losses}")
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    if not last < first:
        raise AssertionError(f"loss did not fall: {first:.4f} -> {last:.4f}")
    return f"loss {first:.4f} -> {last:.4f}"


@check("bf16 training, regional torch.compile")
def bf16_compile(tmp: Path):
    from irepa.train.trainer import train

    on_gpu = DEVICE == "cuda"
    extra = {"train.mixed_precision": "bf16" if on_gpu else "fp32", "train.compile": on_gpu}
    return _falling(train(tiny_config(tmp / "bf16", **extra)).losses)


@check("fp16 training through the loss scaler, compiled")
def fp16_compile(tmp: Path):
    from irepa.train.trainer import train

    if DEVICE != "cuda":
        return "skipped: fp16 needs CUDA"
    return _falling(train(tiny_config(tmp / "fp16", **{"train.mixed_precision": "fp16", "train.compile": True})).losses)


@check("JiT and MeanFlow (JVP) train in bf16")
def families(tmp: Path):
    from irepa.models.presets import small_model
    from irepa.recipes import recipe_overrides
    from irepa.train.trainer import train

    out = []
    jit = {**recipe_overrides("jit-irepa"), **small_model("jit", depth=4, in_context_len=8),
           "train.extra_ema_decays": [], "train.grad_clip": 1.0}
    mf = recipe_overrides("meanflow-irepa")
    precision = {"train.mixed_precision": "bf16" if DEVICE == "cuda" else "fp32"}
    jit, mf = {**jit, **precision}, {**mf, **precision}
    for name, extra in (("jit", jit), ("meanflow", mf)):
        out.append(f"{name}: " + _falling(train(tiny_config(tmp / name, **extra)).losses))
    return "; ".join(out)


@check("exact resume on CUDA (split run == uninterrupted run)")
def resume(tmp: Path):
    from irepa.train.trainer import train

    extra = {"train.mixed_precision": "bf16" if DEVICE == "cuda" else "fp32", "train.steps": 20, "train.ckpt_every": 10}
    full = train(tiny_config(tmp / "full", **extra)).losses
    first = train(tiny_config(tmp / "split", **extra), stop_after=10).losses
    second = train(tiny_config(tmp / "split", **extra), resume=True).losses
    if first + second != full:
        diff = max(abs(a - b) for a, b in zip(first + second, full))
        raise AssertionError(f"resumed losses differ from the uninterrupted run (max |diff| {diff:.3g})")
    return "20 losses bit-identical"


def _cli(args: list[str], env: dict | None = None, launcher: list[str] | None = None) -> None:
    cmd = [*(launcher or [sys.executable]), "-m", "irepa.cli", *args]
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")


@check("2-process run (torchrun), then resume on one visible GPU")
def multi_gpu(tmp: Path):
    if DEVICE != "cuda" or torch.cuda.device_count() < 2:
        return "skipped: fewer than 2 GPUs"
    run = str(tmp / "ddp")
    common = ["train", "--smoke", "--out", run, "--train.mixed_precision", "bf16", "--train.batch_size", "16"]
    _cli([*common, "--train.steps", "6", "--train.ckpt_every", "3"],
         launcher=["torchrun", "--standalone", "--nproc_per_node", "2"])
    _cli([*common, "--train.steps", "9", "--train.ckpt_every", "3", "--resume"], env={"CUDA_VISIBLE_DEVICES": "0"})
    return "trained on 2 processes, resumed on 1"


@check("bf16 sampling vs fp32 sampling (same seeds)")
def sampling(tmp: Path):
    from irepa.sample.pipeline import load_generator
    from irepa.train.trainer import train

    result = train(tiny_config(tmp / "sample", **{"train.steps": 20}))
    labels = torch.arange(16) % 10
    out = {}
    for precision in ("fp32", "bf16"):
        gen = load_generator(result.checkpoint, device=DEVICE, precision=precision)
        from irepa.diffusion import SamplerConfig

        out[precision] = gen.sample_latents(labels, list(range(16)), SamplerConfig(kind="sde", steps=50)).float()
    diff = (out["bf16"] - out["fp32"]).abs()
    rel = float(diff.norm() / out["fp32"].norm())
    if rel > 5e-2:
        raise AssertionError(f"bf16 samples differ from fp32 by {rel:.3g} (relative L2)")
    return f"relative L2 {rel:.2e}, max |diff| {float(diff.max()):.3g}"


@check("uint8 images converted on the device equal the dataset-side conversion")
def unit_images():
    from irepa.codecs import unit_images

    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    if not torch.equal(unit_images(x, DEVICE).cpu(), x.float().div(255.0)):
        raise AssertionError("device conversion differs from the CPU's x / 255")
    return "all 256 values bit-equal"


@check("evaluation features with TF32 off vs float64")
def eval_tf32():
    from irepa.evaluate.inception import InceptionExtractor

    images = torch.randint(0, 256, (8, 64, 64, 3), dtype=torch.uint8)
    cpu = InceptionExtractor(device="cpu")(images)["pool"].double()
    gpu = InceptionExtractor(device=DEVICE)(images)["pool"].double().cpu()
    rel = float((gpu - cpu).norm() / cpu.norm())
    if rel > 1e-3:
        raise AssertionError(f"GPU pool3 features differ from the CPU's by {rel:.3g}")
    return f"relative difference to CPU {rel:.2e}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="write the results as JSON")
    p.add_argument("--cpu-dry-run", action="store_true", help="run the checks on the CPU (tests this script)")
    args = p.parse_args()
    global DEVICE
    if args.cpu_dry_run:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (the CPU paths are covered by `make test`)")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "CPU (dry run)"
    print(f"device: {name} x {torch.cuda.device_count()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        bf16_compile(tmp)
        fp16_compile(tmp)
        families(tmp)
        resume(tmp)
        multi_gpu(tmp)
        sampling(tmp)
        unit_images()
        eval_tf32()
    width = max(len(r["check"]) for r in RESULTS)
    print("\n" + "\n".join(f"{r['status']:4}  {r['check']:<{width}}  {r['seconds']:>6.1f}s  {r['detail']}"
                           for r in RESULTS))
    if args.out:
        atomic_write_json(args.out, RESULTS, sort_keys=False)
    return int(any(r["status"] == "FAIL" for r in RESULTS))


if __name__ == "__main__":
    sys.exit(main())

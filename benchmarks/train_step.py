"""Training throughput: images/s of one optimiser step — irepa's step beside a reference-style step.

    python benchmarks/train_step.py --out train.json                  # CUDA: the whole grid (long; see README)
    python benchmarks/train_step.py --models SiT-XL/2 --precisions bf16 --modes compile
    python benchmarks/train_step.py --device cpu --quick --out cpu.json   # SiT-S/2, batch 8, fp32, eager

Settings: model (SiT-S/2, SiT-B/2, SiT-XL/2 on 32x32x4 latents; JiT-B/16 on 256 px pixels;
MeanFlow-B/2 = SiT-B/2 with the MeanFlow objective) x recipe (vanilla / REPA / iREPA, each with its
family's defaults from ``irepa.recipes``) x precision (fp32, tf32, bf16 autocast) x mode (eager, or
``torch.compile`` of each block as the trainer does). The encoder is a real-size network with random
weights (``--encoder``, default DINOv2-B at 224 px = 16x16 tokens): same compute as the trained one.
Batches are synthetic host tensors shaped like the loader's (float images in [0, 1], latent posterior
moments, labels; pinned on CUDA) and are moved to the device inside the step, as in training.

**Ours** is the library's step: :meth:`irepa.train.run.Run.step` of a run assembled by
:meth:`irepa.train.run.Run.build`, exactly as the trainer builds it (backbone, encoders at the run's
autocast dtype, alignment head, EMAs, fused AdamW on CUDA, per-block ``compile``,
``accelerator.prepare``); per step: codec.encode -> encoder targets -> ``objective.loss`` under
autocast -> backward -> clip -> optimiser step -> EMA, the scalars collected in a ``StepLog`` on the
device and read back once per timed window (the trainer reads them once per log interval).

**Reference-style** is a step written here to mirror the structure of the published REPA / iREPA
training loops, built on the same model, projector and encoder objects:

* the encoders are held in fp32 and run under autocast every step (no target caching); iREPA's
  spatial z-score is applied inline to their output;
* the projector is applied by reshaping: REPA's token-wise MLP on ``(B*T, C)``, iREPA's conv on the
  hidden state reshaped to ``(B, C, H, W)``;
* the projection loss is a Python loop over the batch: per sample, normalise both sides, take
  ``-(z * z~).sum(-1).mean()``, sum, divide by the batch size;
* the diffusion term is the objective's own loss (the same draws and the same maths as ours; the
  t draw and posterior sample use the global RNG, as those loops do);
* backward, ``accelerator.clip_grad_norm_``, ``AdamW.step`` with torch's default implementation
  choice — the for-loop on CPU, ``foreach`` on CUDA — as those loops construct it (``--reference-adamw
  for-loop`` forces the for-loop everywhere), then ``zero_grad``;
* the EMA (two for JiT, as its loop keeps) as a loop over ``named_parameters`` with ``mul_`` / ``add_``
  per tensor; gradient clipping only where the family clips (not JiT);
* ``.item()`` on the diffusion loss, the projection loss and the gradient norm every step (a host sync).

It always runs eagerly (the REPA loop does not compile); with ``--modes compile`` its ratio compares
our compiled step with the eager reference. Ours and the reference take turns window by window
(A B, B A, ...) and the medians are compared, which keeps the ratio honest on a noisy machine.

**Alignment overhead excluding the encoder**: for an aligned recipe, the same objects also run
(a) the step with precomputed encoder tokens in the batch (``target.<encoder>``, float16 as the token
cache stores them) and (b) the plain vanilla step (no aligner); overhead = time(a) / time(b) - 1.

``--uint8-variant`` adds ours on batches whose images are uint8 instead of the loader's float32 (a
quarter of the bytes to move to the device, converted there).

Reported per row: images/s (median over timed windows, with the range), ms per step, FLOPs per image
counted by ``torch.utils.flop_counter.FlopCounterMode`` over one whole step (denoiser forward and
backward, projector, encoder forward; the encoder's share is listed apart), MFU against the device's
peak (data-sheet dense peak on H200 / H100 / A100, otherwise the best large matmul measured before and
between the settings — on a CPU always measured, and said so; on a shared CPU MFU is only indicative)
and peak memory (see ``harness.PeakMemory``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import itertools
import math
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from harness import (
    PRECISIONS,
    PeakMemory,
    peak_flops,
    print_table,
    save_result,
    say,
    start,
    synchronize,
    time_in_turns,
    use_precision,
)
from torch.utils.flop_counter import FlopCounterMode

from irepa.align.projectors import ConvProjector
from irepa.config import RunConfig, load_config
from irepa.precision import accelerate_mixed_precision
from irepa.recipes import recipe_overrides
from irepa.train.divergence import check_finite
from irepa.train.logger import StepLog
from irepa.train.run import Run

IMAGE_SIZE = 256  # pixels the loader delivers (encoder input before its own resize; JiT's input)


@dataclass(frozen=True)
class ModelSpec:
    family: str  # irepa.recipes family: sit | jit | meanflow
    model: str  # irepa.models name
    input_size: int
    in_channels: int
    align_depth: int  # the block whose output is aligned (the papers' choice for the size)

    @property
    def latent(self) -> bool:
        return self.in_channels == 4


MODELS = {
    "SiT-S/2": ModelSpec("sit", "SiT-S/2", 32, 4, 4),
    "SiT-B/2": ModelSpec("sit", "SiT-B/2", 32, 4, 4),
    "SiT-L/2": ModelSpec("sit", "SiT-L/2", 32, 4, 8),
    "SiT-XL/2": ModelSpec("sit", "SiT-XL/2", 32, 4, 8),
    "JiT-B/16": ModelSpec("jit", "JiT-B/16", IMAGE_SIZE, 3, 4),
    "MeanFlow-B/2": ModelSpec("meanflow", "SiT-B/2", 32, 4, 4),
}
RECIPES = ("vanilla", "repa", "irepa")
MODES = ("eager", "compile")
DEFAULT_MODELS = "SiT-S/2,SiT-B/2,SiT-XL/2,JiT-B/16,MeanFlow-B/2"


def split_list(text: str, valid, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in valid]
    if bad:
        raise SystemExit(f"unknown {what} {bad}; valid: {', '.join(valid)}")
    return items


# ---------------------------------------------------------------------------------------------- ours


def make_config(spec: ModelSpec, recipe: str, mixed_precision: str, compile_blocks: bool, args) -> RunConfig:
    """The run config of a setting: the family's recipe defaults plus the benchmark's shape choices."""
    common = {
        "model.name": spec.model,
        "model.input_size": spec.input_size,
        "model.in_channels": spec.in_channels,
        "model.num_classes": 1000,
        "align.encoders": [{"name": args.encoder, "weights": args.encoder_weights}],
        "align.depth": args.align_depth or spec.align_depth,
        "train.batch_size": args.batch,
        "train.mixed_precision": mixed_precision,
        "train.compile": compile_blocks,
        "train.report_to": ["none"],
        "train.sample_every": 0,  # no sample grid: its decoder is not needed
    }
    return load_config(None, recipe_overrides(f"{spec.family}-{recipe}", common))


def fresh_accelerator(mixed_precision: str, device: torch.device):
    """An Accelerator with this precision; accelerate keeps one process-wide state, so forget the last one."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(mixed_precision=accelerate_mixed_precision(mixed_precision), cpu=device.type == "cpu")


class BatchShapes(torch.utils.data.Dataset):
    """What ``Run.build`` reads of a dataset: its classes and, for latents, the VAE and statistics that
    choose the codec (a cached-latent codec needs no VAE to encode). The batches come from :func:`host_batches`."""

    def __init__(self, cfg: RunConfig):
        self.num_classes = cfg.model.num_classes
        if cfg.model.in_channels == 4:
            self.vae, self.latent_stats = "stabilityai/sd-vae-ft-mse", ([0.0] * 4, [1.0] * 4)

    def __len__(self) -> int:
        return 0

    def __getitem__(self, index: int) -> dict:
        raise IndexError("the benchmark feeds its own host batches")


def build_ours(cfg: RunConfig, device: torch.device) -> Run:
    """The run as the trainer builds it (:meth:`Run.build`), on a fresh accelerator."""
    return Run.build(cfg, fresh_accelerator(cfg.train.mixed_precision, device), BatchShapes(cfg))


def host_batches(cfg: RunConfig, device: torch.device, cached: dict[str, tuple[int, int]] | None = None,
                 uint8: bool = False, count: int = 2) -> list[dict[str, torch.Tensor]]:
    """Loader-shaped batches on the host (pinned on CUDA, as the loader pins them).

    Images are float32 in [0, 1] as the loader delivers them (``uint8``: bytes, converted on the device).
    ``cached``: encoder name -> (tokens, dim) of precomputed targets to include, float16 as cached.
    """
    g = torch.Generator().manual_seed(0)
    b = cfg.train.batch_size
    out = []
    for _ in range(count):
        image = torch.rand(b, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        batch = {"image": image.mul(255).round().to(torch.uint8) if uint8 else image,
                 "label": torch.randint(0, cfg.model.num_classes, (b,), generator=g)}
        if cfg.model.in_channels == 4:  # posterior (mean, logvar) of an f8 VAE
            s = cfg.model.input_size
            batch["moments"] = torch.cat([torch.randn(b, 4, s, s, generator=g), torch.full((b, 4, s, s), -6.0)], 1)
        for name, (tokens, dim) in (cached or {}).items():
            batch[f"target.{name}"] = torch.randn(b, tokens, dim, generator=g).half()
        if device.type == "cuda":
            batch = {k: v.pin_memory() for k, v in batch.items()}
        out.append(batch)
    return out


class OursCandidate:
    """``Run.step``, its scalars kept in a StepLog and read back (and checked) once per window."""

    def __init__(self, run: Run, batches: Iterator[dict]):
        self.run, self.batches = run, batches
        self.log = StepLog()

    def step(self) -> None:
        lr, scalars = self.run.step(self.batches)
        self.log.add(self.run.steps_done, lr, scalars)

    def end_window(self) -> None:
        steps, rows = self.log.flush()
        check_finite(steps, rows, "nothing (benchmark)")


# ---------------------------------------------------------------------------------------------- reference-style


class ReferenceStyleStep:
    """One step shaped like the published REPA / iREPA loops (see the module docstring), on ours' objects."""

    def __init__(self, run: Run, adamw: str):
        cfg, t = run.cfg, run.cfg.train
        self.acc, self.device = run.accelerator, run.accelerator.device
        self.backbone, self.aligner, self.objective, self.codec = run.backbone, run.aligner, run.objective, run.codec
        self.depth, self.coeff = cfg.align.depth, cfg.align.coeff
        self.encoders = {}
        for name, enc in run.encoders.items():  # fp32 weights, autocast at run time
            weight = next(enc.parameters(), None)  # None: a weight-free encoder (HOG)
            fp32 = weight is None or weight.dtype == torch.float32
            self.encoders[name] = enc if fp32 else copy.deepcopy(enc).float()
        self.params = [p for p in run.module.parameters() if p.requires_grad]
        extra = {"foreach": False} if adamw == "for-loop" else {}
        self.optimizer = torch.optim.AdamW(self.params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay,
                                           eps=t.adam_eps, **extra)
        self.emas = [(ema.shadow, ema.decay) for ema in run.emas]  # JiT keeps two, as its loop does
        self.grad_clip = t.grad_clip  # 0: the loop neither clips nor computes the norm (JiT)
        self.logs: list[dict[str, float]] = []

    @torch.no_grad()
    def encoder_targets(self, images01: torch.Tensor) -> dict[str, torch.Tensor]:
        zs = {}
        with self.acc.autocast():
            for name, enc in self.encoders.items():
                z = enc(enc.preprocess(images01))
                if self.aligner.norm == "zscore":
                    z = (z - self.aligner.alpha * z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + 1e-6)
                zs[name] = z
        return zs

    def project(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        b, n, c = hidden.shape
        h, w = self.aligner.grid
        out = {}
        for name, proj in zip(self.aligner.names, self.aligner.projectors.values()):
            if isinstance(proj, ConvProjector):
                z = proj.conv(hidden.permute(0, 2, 1).reshape(b, c, h, w)).reshape(b, -1, n).permute(0, 2, 1)
            else:
                z = proj(hidden.reshape(-1, c)).reshape(b, n, -1)
            out[name] = z.float()  # model outputs leave autocast in fp32
        return out

    @staticmethod
    def projection_loss(zs: dict[str, torch.Tensor], projected: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = 0.0
        batch = next(iter(zs.values())).shape[0]
        for name, z in zs.items():
            for z_j, p_j in zip(z, projected[name]):
                z_j, p_j = F.normalize(z_j, dim=-1), F.normalize(p_j, dim=-1)
                loss = loss + (-(z_j * p_j).sum(dim=-1)).mean()
        return loss / (len(zs) * batch)

    @torch.no_grad()
    def update_ema(self) -> None:
        for shadow, decay in self.emas:
            ema_params = dict(shadow.named_parameters())
            for name, p in self.backbone.named_parameters():
                ema_params[name].mul_(decay).add_(p.data, alpha=1 - decay)

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        device = self.device
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch["label"]
        x0 = self.codec.encode(batch, None, device)  # the posterior sample from the global RNG, on the device
        zs = self.encoder_targets(batch["image"]) if self.aligner is not None else None
        hidden: list[torch.Tensor] = []

        def net(xt, t, y, targets=None, r=None):
            times = {} if r is None else {"r": r}
            if targets is None:  # a plain call (MeanFlow's target)
                return self.backbone(xt, t, y, **times), None
            out, h = self.backbone(xt, t, y, return_hidden_at=self.depth, **times)
            hidden.append(h)
            return out, None

        with self.acc.autocast():
            diffusion = self.objective.loss(net, x0, labels, None, {} if zs is not None else None)["loss"]
            projected = self.project(hidden[-1]) if zs is not None else None
        loss = diffusion
        proj_loss = None
        if zs is not None:
            proj_loss = self.projection_loss(zs, projected)
            loss = diffusion + self.coeff * proj_loss
        self.acc.backward(loss)
        grad_norm = self.acc.clip_grad_norm_(self.params, self.grad_clip) if self.grad_clip > 0 else None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.update_ema()
        logs = {"loss": diffusion.detach().item()}
        if grad_norm is not None:
            logs["grad_norm"] = grad_norm.item()
        if proj_loss is not None:
            logs["proj_loss"] = proj_loss.detach().item()
        self.logs.append(logs)


class ReferenceCandidate:
    def __init__(self, step: ReferenceStyleStep, batches: Iterator[dict]):
        self.reference_step, self.batches = step, batches

    def step(self) -> None:
        with torch.compiler.set_stance("force_eager"):  # the published loop does not compile
            self.reference_step(next(self.batches))

    def end_window(self) -> None:
        last = self.reference_step.logs[-1]
        if not all(math.isfinite(v) for v in last.values()):
            raise RuntimeError(f"the reference-style step diverged: {last}")


# ---------------------------------------------------------------------------------------------- one setting


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` as FlopCounterMode counts them (matmuls, convolutions, attention), run eagerly."""
    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def run_setting(spec_name: str, recipe: str, precision: str, mode: str, args, device, peaks: dict) -> list[dict]:
    spec = MODELS[spec_name]
    mixed = use_precision(precision, device)
    cfg = make_config(spec, recipe, mixed, mode == "compile", args)
    base = {"model": spec_name, "recipe": recipe, "precision": precision, "mode": mode, "batch": args.batch}
    say(f"\n== {spec_name} {recipe} {precision} {mode} batch {args.batch}")
    started = time.perf_counter()
    run = build_ours(cfg, device)
    batches = itertools.cycle(host_batches(cfg, device))
    candidates: dict[str, Any] = {"ours": OursCandidate(run, batches)}

    # one eager step under the FLOP counter (the first warm-up step), the encoders' share apart
    flops_step = count_flops(candidates["ours"].step) / args.batch
    candidates["ours"].end_window()
    flops_encoder = 0.0
    for enc in run.encoders.values():
        one = next(batches)["image"][:1].to(device)
        flops_encoder += count_flops(lambda enc=enc, one=one: enc.encode(one))
    for _ in range(max(0, args.warmup - 1)):
        candidates["ours"].step()
    candidates["ours"].end_window()
    with PeakMemory(device) as memory:  # one more warm-up step, its peak memory recorded
        candidates["ours"].step()
        candidates["ours"].end_window()
        synchronize(device)
    warm = {"ours": 0}

    if recipe in args.reference_recipes:
        ref = ReferenceStyleStep(run, args.reference_adamw)
        candidates["reference"] = ReferenceCandidate(ref, itertools.cycle(host_batches(cfg, device)))
        warm["reference"] = args.warmup
    if recipe in args.overhead_recipes and run.aligner is not None:
        dims = {n: (math.prod(run.backbone.grid), e.embed_dim) for n, e in run.encoders.items()}
        cached = itertools.cycle(host_batches(cfg, device, cached=dims))
        candidates["cached targets"] = OursCandidate(run, cached)
        vanilla = dataclasses.replace(run, aligner=None, encoders={})  # the same objects, no alignment
        candidates["vanilla, same objects"] = OursCandidate(vanilla, batches)
        warm["cached targets"] = warm["vanilla, same objects"] = args.warmup
    if args.uint8_variant:
        candidates["uint8 images"] = OursCandidate(run, itertools.cycle(host_batches(cfg, device, uint8=True)))
        warm["uint8 images"] = args.warmup
    for name, n in warm.items():
        for _ in range(n):
            candidates[name].step()
        candidates[name].end_window()
    timings = time_in_turns(candidates, args.batch, device, warmup=0, window=args.window, reps=args.reps, say=say)

    peak_flops(device, precision, peaks, remeasure=True)  # no-op on known GPUs
    rows = []
    for name, timing in timings.items():
        same_work = {"ours": flops_step, "reference": flops_step, "uint8 images": flops_step}
        flops = {**same_work, "cached targets": flops_step - flops_encoder}.get(name)
        row = {**base, "variant": name, **timing.as_dict(),
               "gflop_per_image": flops / 1e9 if flops is not None else None}
        if name == "ours":
            row.update(encoder_gflop_per_image=flops_encoder / 1e9, peak_mem_mb=memory.peak_mb,
                       step_mem_delta_mb=memory.step_delta_mb, mem_kind=memory.kind)
            if "reference" in timings:
                row["ours_over_reference"] = timing.rate / timings["reference"].rate
            if "cached targets" in timings:
                row["align_overhead_excl_encoder"] = (timings["cached targets"].median
                                                      / timings["vanilla, same objects"].median - 1)
        rows.append(row)
    say(f"  ({time.perf_counter() - started:.0f} s)")
    return rows


def release(device: torch.device) -> None:
    gc.collect()
    torch.compiler.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- main

COLUMNS = [
    ("model", "model", ""), ("recipe", "recipe", ""), ("precision", "prec", ""), ("mode", "mode", ""),
    ("batch", "batch", "d"), ("variant", "variant", ""), ("images_per_s", "img/s", ".2f"),
    ("range", "img/s range", ""), ("ms_per_step", "ms/step", ".0f"), ("gflop_per_image", "GFLOP/img", ".1f"),
    ("mfu", "MFU", ".1%"), ("peak_mem_mb", "peak MB", ".0f"), ("step_mem_delta_mb", "step +MB", ".0f"),
    ("ours_over_reference", "ours/ref", ".3f"),
    ("align_overhead_excl_encoder", "align ovh", "+.1%"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    p.add_argument("--quick", action="store_true",
                   help="a CPU-sized subset: SiT-S/2, batch 8, fp32, eager, one thread, vanilla/REPA/iREPA with "
                        "the reference-style REPA and iREPA steps, 1 warm-up step, 3 timed rounds of 1 step")
    p.add_argument("--models", default=None, help=f"comma list of {', '.join(MODELS)} (default: {DEFAULT_MODELS})")
    p.add_argument("--recipes", default=None, help="comma list of vanilla, repa, irepa (default: all)")
    p.add_argument("--precisions", default=None, help="comma list of fp32, tf32, bf16 (default: bf16,fp32)")
    p.add_argument("--modes", default=None, help="comma list of eager, compile (default: both)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default 64; 8 with --quick)")
    p.add_argument("--encoder", default="dinov2-vit-b", help="alignment encoder (any irepa.encoders name)")
    p.add_argument("--encoder-weights", default="random",
                   help="'random' (same compute, no download) or a weights file; 'local' for the library's lookup")
    p.add_argument("--align-depth", type=int, default=None, help="aligned block (default: 4 for S/B, 8 for L/XL)")
    p.add_argument("--reference-recipes", default=None,
                   help="recipes also timed with the reference-style step (default: all; repa,irepa with --quick)")
    p.add_argument("--overhead-recipes", default=None,
                   help="aligned recipes whose overhead excluding the encoder is measured (default: repa,irepa; "
                        "irepa with --quick)")
    p.add_argument("--reference-adamw", choices=("default", "for-loop"), default="default",
                   help="the reference-style optimiser: torch's default choice (as the published loops build "
                        "it) or the for-loop implementation everywhere")
    p.add_argument("--uint8-variant", action="store_true",
                   help="also time ours on batches whose images are uint8 (a quarter of the bytes to copy)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per candidate (default 5 on CUDA, 1 on CPU)")
    p.add_argument("--window", type=int, default=None, help="steps per timed window (default 10 on CUDA, 1 on CPU)")
    p.add_argument("--reps", type=int, default=None, help="timed windows per candidate (default 5 on CUDA, 3 on CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: all; 1 with --quick, steady on a shared machine)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    quick = args.quick
    args.models = split_list(args.models or ("SiT-S/2" if quick else DEFAULT_MODELS), MODELS, "model")
    args.recipes = split_list(args.recipes or ",".join(RECIPES), RECIPES, "recipe")
    args.precisions = split_list(args.precisions or ("fp32" if quick else "bf16,fp32"), PRECISIONS, "precision")
    args.modes = split_list(args.modes or ("eager" if quick else "eager,compile"), MODES, "mode")
    args.reference_recipes = split_list(args.reference_recipes or ("repa,irepa" if quick else ",".join(RECIPES)),
                                        RECIPES, "recipe")
    args.overhead_recipes = split_list(args.overhead_recipes or ("irepa" if quick else "repa,irepa"), RECIPES, "recipe")
    args.batch = args.batch or (8 if quick else 64)
    if args.encoder_weights == "local":
        args.encoder_weights = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device, info = start(args.device or ("cpu" if args.quick else None), args.threads or (1 if args.quick else None))
    on_gpu = device.type == "cuda"
    args.warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 1)
    args.window = args.window or (10 if on_gpu else 1)
    args.reps = args.reps or (5 if on_gpu else 3)
    if args.warmup < 1:
        raise SystemExit("--warmup must be >= 1 (the first step is also the FLOP-counted one)")
    peaks: dict = {}
    for precision in args.precisions:  # measured (CPU, unknown GPU) before the timings, once per precision
        value, source = peak_flops(device, precision, peaks)
        say(f"peak {precision}: {value / 1e12:.3f} TFLOP/s ({source})")
    rows: list[dict] = []
    errors: list[dict] = []
    for spec_name, precision, mode, recipe in itertools.product(args.models, args.precisions, args.modes, args.recipes):
        try:
            rows += run_setting(spec_name, recipe, precision, mode, args, device, peaks)
        except Exception as err:  # one failing setting (e.g. out of memory) must not lose the others
            traceback.print_exc()
            errors.append({"model": spec_name, "recipe": recipe, "precision": precision, "mode": mode,
                           "error": f"{type(err).__name__}: {err}"})
        finally:
            release(device)
    for r in rows:  # MFU against the final peaks (measured ones are the best seen in the whole run)
        r["range"] = f"{r['images_per_s_min']:.2f}-{r['images_per_s_max']:.2f}"
        if r.get("gflop_per_image") is not None:
            peak, r["peak_source"] = peak_flops(device, r["precision"], peaks)
            r["peak_tflops"] = peak / 1e12
            r["mfu"] = r["gflop_per_image"] * 1e9 * r["images_per_s"] / peak
    say("")
    print_table(rows, COLUMNS)
    sources = sorted({r["peak_source"] for r in rows if r.get("peak_source")})
    say("\nMFU peaks: " + "; ".join(sources) if sources else "")
    say("ours/ref: images/s of ours over the reference-style step's, timed in turns (>1: ours is faster). "
        "align ovh: time(cached targets) / time(vanilla, same objects) - 1.")
    for e in errors:
        say(f"FAILED {e['model']} {e['recipe']} {e['precision']} {e['mode']}: {e['error']}")
    save_result(args, "train_step", info, rows, errors=errors)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

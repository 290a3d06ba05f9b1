"""The training loop: flow matching + representation alignment, on accelerate.

Runs unchanged on a CPU, one GPU or many (``accelerate launch``). The loop, top to bottom:
draw a batch -> move it to model space -> draw (t, noise, label dropout) from a per-step generator
-> compute encoder targets -> forward the backbone to block k and to the output -> velocity loss +
lambda * alignment loss -> step, clip, EMA -> log, sample grid, checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from irepa.align import Aligner, AlignOutput
from irepa.config import RunConfig, config_diff, save_config, to_dict, with_defaults
from irepa.data import build_dataset, make_loader, normalize_latents, sample_posterior
from irepa.diffusion import get_interpolant, make_flow_batch, velocity_loss
from irepa.errors import TrainingDiverged
from irepa.models import create_model
from irepa.sample.pipeline import Generator, LatentDecoder, make_grid, save_png

from .checkpoint import (
    atomic_torch_save,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
    rng_state,
    set_rng_state,
)
from .ema import EMA
from .logger import ScalarLogger

log = logging.getLogger(__name__)

# Fields that must agree between a checkpoint and the config that resumes it.
RESUME_MUST_MATCH = [
    "model",
    "align",
    "diffusion",
    "data.source",
    "data.path",
    "data.resolution",
    "data.flip",
    "data.limit",
    "train.batch_size",
    "train.grad_accum",
    "train.seed",
    "train.lr",
    "train.betas",
    "train.weight_decay",
    "train.adam_eps",
    "train.ema_decay",
    "train.ema_warmup",
    "data.vae",
]


class AlignedModel(nn.Module):
    """Backbone and alignment head as one module, so DDP and the optimizer see every parameter."""

    def __init__(self, backbone: nn.Module, aligner: Aligner | None, depth: int):
        super().__init__()
        self.backbone = backbone
        self.aligner = aligner
        self.depth = depth

    def forward(self, xt, t, y, targets: dict[str, torch.Tensor] | None = None):
        if self.aligner is None or targets is None:
            return self.backbone(xt, t, y), None
        v, hidden = self.backbone(xt, t, y, return_hidden_at=self.depth)
        return v, self.aligner(hidden, targets)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)  # total loss per optimizer step of this call
    checkpoint: Path | None = None


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A generator that depends only on (seed, micro-step, rank): resuming needs no RNG bookkeeping."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def build_backbone(cfg: RunConfig) -> nn.Module:
    return create_model(cfg.model.name, **cfg.model.overrides())


def build_aligner(cfg: RunConfig, backbone: nn.Module, device, dtype) -> tuple[Aligner | None, dict[str, nn.Module]]:
    """Load the frozen encoders at the backbone's token grid and build their projectors."""
    a = cfg.align
    if not a.enabled or not a.encoders:
        return None, {}
    from irepa.encoders import load_encoder

    depth = len(backbone.blocks)
    if not 1 <= a.depth <= depth:
        raise ValueError(f"align.depth={a.depth} but {cfg.model.name} has {depth} blocks; choose 1..{depth}")
    names = [e.name for e in a.encoders]
    if len(set(names)) != len(names):
        raise ValueError(f"align.encoders lists an encoder twice: {names}")
    encoders = {
        e.name: load_encoder(
            e.name, weights=e.weights, resolution=a.encoder_resolution, grid=backbone.grid, device=device, dtype=dtype
        ).freeze()
        for e in a.encoders
    }
    aligner = Aligner(
        hidden_dim=backbone.hidden_size,
        encoder_dims={n: enc.embed_dim for n, enc in encoders.items()},
        grid=backbone.grid,
        coeffs={e.name: a.coeff if e.coeff is None else e.coeff for e in a.encoders},
        projector=a.projector,
        kernel_size=a.kernel_size,
        projector_hidden_dim=a.projector_hidden_dim,
        norm=a.norm,
        alpha=a.zscore_alpha,
    )
    return aligner, encoders


def pixels_to_model_space(images: torch.Tensor, in_channels: int) -> torch.Tensor:
    """``[0, 1]`` RGB images as the pixel-space model sees them: ``[-1, 1]``, grey when ``in_channels`` is 1."""
    x0 = images.float() * 2 - 1
    if in_channels == 1:
        return x0.mean(dim=1, keepdim=True)
    if in_channels != 3:
        raise ValueError(f"pixel-space training needs model.in_channels 1 or 3, got {in_channels}")
    return x0


def to_model_space(batch: dict, cfg: RunConfig, latent_stats, generator: torch.Generator, device) -> torch.Tensor:
    """Latents (sampled from the cached posterior, scaled per channel) or pixels in [-1, 1]."""
    if "moments" in batch:
        x0 = normalize_latents(sample_posterior(batch["moments"].float(), generator), *latent_stats)
    else:
        x0 = pixels_to_model_space(batch["image"], cfg.model.in_channels)
    if tuple(x0.shape[-2:]) != (cfg.model.input_size, cfg.model.input_size):
        raise ValueError(
            f"data gives {tuple(x0.shape[-2:])} inputs but model.input_size is {cfg.model.input_size}; "
            "set data.resolution (pixels) or model.input_size (latents) to match"
        )
    return x0.to(device, non_blocking=True)


def targets_for(batch: dict, aligner: Aligner, encoders: dict, device, encoder_batch: int | None):
    """Encoder targets, from tokens cached in the batch (``target.<name>``) or by running the encoders."""
    out = {}
    images = batch["image"].to(device, non_blocking=True)
    for name in aligner.names:
        cached = batch.get(f"target.{name}")
        if cached is not None:
            out[name] = aligner.prepare_target(cached.to(device).float(), name)
            continue
        enc = encoders[name]
        chunks = images.split(encoder_batch) if encoder_batch else [images]
        tokens = torch.cat([enc.encode(c) for c in chunks])
        out[name] = aligner.prepare_target(tokens, name, tuple(enc.grid))
    return out


def _check_mixed_precision(mode: str, device: torch.device) -> None:
    if mode not in ("no", "fp16", "bf16"):
        raise ValueError(f"train.mixed_precision must be no, fp16 or bf16, got {mode!r}")
    if mode == "fp16" and device.type != "cuda":
        raise ValueError("fp16 mixed precision needs a CUDA GPU; use bf16 or no on this device")


def _grid_labels(cfg: RunConfig) -> torch.Tensor:
    rows = min(cfg.train.grid_classes, cfg.model.num_classes)
    classes = torch.linspace(0, cfg.model.num_classes - 1, rows).round().long()
    return classes.repeat_interleave(cfg.train.grid_per_class)


def train(cfg: RunConfig, resume: bool | str | None = None, stop_after: int | None = None, dataset=None) -> TrainResult:
    """Train per ``cfg``. ``resume``: see :func:`irepa.train.checkpoint.resolve_resume` (True/"latest",
    "auto" for the newest intact checkpoint, or a path).

    ``dataset`` replaces the one ``cfg.data`` describes (items as in :mod:`irepa.data`; an item may
    carry precomputed encoder tokens as ``target.<encoder name>``).

    ``stop_after`` ends this call after that many optimizer steps (a checkpoint is written), which
    is how a job scheduler's time limit or a test's interruption looks to the loop.
    """
    from accelerate import Accelerator

    t_cfg = cfg.train
    if t_cfg.batch_size < 1 or t_cfg.grad_accum < 1:
        raise ValueError("train.batch_size and train.grad_accum must be >= 1")
    accelerator = Accelerator(mixed_precision=t_cfg.mixed_precision if t_cfg.mixed_precision != "no" else "no")
    device = accelerator.device
    _check_mixed_precision(t_cfg.mixed_precision, device)
    world, rank = accelerator.num_processes, accelerator.process_index
    per_micro = t_cfg.batch_size // t_cfg.grad_accum
    if t_cfg.batch_size % (world * t_cfg.grad_accum):
        raise ValueError(
            f"train.batch_size={t_cfg.batch_size} must be divisible by processes x grad_accum = "
            f"{world} x {t_cfg.grad_accum}"
        )

    run_dir = Path(cfg.out)
    ckpt_dir = run_dir / "checkpoints"
    ckpt_path = resolve_resume(ckpt_dir, resume)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
    if ckpt is not None:
        diff = config_diff(with_defaults(ckpt["config"]), to_dict(cfg), RESUME_MUST_MATCH)
        if diff:
            lines = "\n".join(f"  {k}: checkpoint={a!r} now={b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
            raise ValueError(f"cannot resume {ckpt['path']}: the config differs in\n{lines}")

    torch.manual_seed(t_cfg.seed)
    backbone = build_backbone(cfg)
    enc_dtype = torch.bfloat16 if (t_cfg.mixed_precision == "bf16" and device.type == "cuda") else torch.float32
    aligner, encoders = build_aligner(cfg, backbone, device, enc_dtype)
    module = AlignedModel(backbone, aligner, cfg.align.depth).to(device)
    ema = EMA(backbone, t_cfg.ema_decay, t_cfg.ema_warmup).to(device)
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=t_cfg.lr, betas=tuple(t_cfg.betas), weight_decay=t_cfg.weight_decay, eps=t_cfg.adam_eps
    )

    dataset = build_dataset(cfg.data) if dataset is None else dataset
    ds_classes = getattr(dataset, "num_classes", None)
    if ds_classes is not None and ds_classes > cfg.model.num_classes:
        raise ValueError(f"dataset has {ds_classes} classes but model.num_classes is {cfg.model.num_classes}")
    latent_stats = getattr(dataset, "latent_stats", None)
    vae_name = getattr(dataset, "vae", None) or cfg.data.vae
    if latent_stats is not None:
        latent_stats = tuple(torch.as_tensor(s, dtype=torch.float32) for s in latent_stats)

    step = 0
    if ckpt is not None:
        module.backbone.load_state_dict(ckpt["model"])
        if aligner is not None:
            aligner.load_state_dict(ckpt["aligner"])
        ema.shadow.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        step = int(ckpt["step"])
        log.info("resumed from %s at step %d", ckpt["path"], step)
        ckpt = None  # restored: release the loaded (memory-mapped) state

    train_module = torch.compile(module) if t_cfg.compile else module
    train_module, optimizer = accelerator.prepare(train_module, optimizer)
    loader = make_loader(
        dataset,
        batch_size=per_micro,
        seed=t_cfg.seed,
        start_step=step * t_cfg.grad_accum,
        rank=rank,
        world_size=world,
        num_workers=cfg.data.num_workers,
        pin_memory=cfg.data.pin_memory and device.type == "cuda",
    )
    batches = iter(loader)
    interpolant = get_interpolant(cfg.diffusion.path)

    is_main = accelerator.is_main_process
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    logger = ScalarLogger(run_dir, t_cfg.report_to, to_dict(cfg), enabled=is_main)
    logger.truncate_after(step)

    def save_checkpoint() -> Path:
        path = ckpt_dir / f"step_{step:07d}.pt"
        if is_main:
            state = {
                "model": accelerator.unwrap_model(train_module).backbone.state_dict()
                if not t_cfg.compile
                else module.backbone.state_dict(),
                "aligner": aligner.state_dict() if aligner is not None else None,
                "ema": ema.shadow.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "config": to_dict(cfg),
                "rng": rng_state(),
                "latent_stats": latent_stats,
                "vae": vae_name if latent_stats is not None else None,
            }
            atomic_torch_save(state, path)
            prune_checkpoints(ckpt_dir, t_cfg.keep_checkpoints)
        accelerator.wait_for_everyone()
        return path

    def save_grid() -> None:
        if not is_main:
            return
        decoder = None
        if latent_stats is not None:
            from irepa.data.vae import load_vae

            decoder = LatentDecoder(load_vae(vae_name, device=device), *latent_stats)
        gen = Generator(
            ema.shadow,
            (cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size),
            cfg.model.num_classes,
            decoder,
        )
        labels = _grid_labels(cfg)
        images = gen.generate(labels, list(range(len(labels))), cfg.sample)
        save_png(make_grid(images, nrow=t_cfg.grid_per_class), run_dir / "samples" / f"step_{step:07d}.png")

    end_step = t_cfg.steps if stop_after is None else min(t_cfg.steps, step + stop_after)
    losses: list[float] = []
    last_ckpt = None
    bar = tqdm(total=t_cfg.steps, initial=step, desc="train", disable=not is_main, dynamic_ncols=True)
    tic, window = time.perf_counter(), []
    while step < end_step:
        optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "loss_diffusion": 0.0, "loss_align": 0.0}
        parts_sum: dict[str, float] = {}
        for micro in range(t_cfg.grad_accum):
            batch = next(batches)
            gen = step_generator(t_cfg.seed, step * t_cfg.grad_accum + micro, rank)
            x0 = to_model_space(batch, cfg, latent_stats, gen, device)
            labels = batch["label"].to(device)
            flow = make_flow_batch(
                x0,
                labels,
                interpolant,
                cfg.model.num_classes,
                cfg.diffusion.label_dropout,
                cfg.diffusion.time_sampling,
                cfg.diffusion.p_mean,
                cfg.diffusion.p_std,
                gen,
            )
            targets = targets_for(batch, aligner, encoders, device, cfg.align.encoder_batch_size) if aligner else None
            sync = micro == t_cfg.grad_accum - 1
            ctx = accelerator.no_sync(train_module) if not sync and world > 1 else contextlib.nullcontext()
            with ctx, accelerator.autocast():
                v, aligned = train_module(flow.xt, flow.t, flow.labels, targets)
                loss_diff = velocity_loss(v, flow.target)
                loss = loss_diff + (aligned.loss if isinstance(aligned, AlignOutput) else 0.0)
            bad = torch.tensor([0.0 if torch.isfinite(loss.detach()) else 1.0], device=device)
            if world > 1:
                bad = accelerator.reduce(bad, "sum")
            if bad.item() > 0:
                raise TrainingDiverged(
                    f"non-finite loss at step {step + 1} (diffusion={loss_diff.item():.4g}); the run stopped and "
                    f"the last good checkpoint ({latest_checkpoint(ckpt_dir)}) is untouched"
                )
            accelerator.backward(loss / t_cfg.grad_accum)
            sums["loss"] += loss.item() / t_cfg.grad_accum
            sums["loss_diffusion"] += loss_diff.item() / t_cfg.grad_accum
            if isinstance(aligned, AlignOutput):
                sums["loss_align"] += aligned.loss.item() / t_cfg.grad_accum
                for n, p in aligned.parts.items():
                    parts_sum[f"align/{n}"] = parts_sum.get(f"align/{n}", 0.0) + p.item() / t_cfg.grad_accum
        grad_norm = accelerator.clip_grad_norm_(
            train_module.parameters(), t_cfg.grad_clip if t_cfg.grad_clip > 0 else float("inf")
        )
        grad_norm = float(grad_norm)
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(
                f"non-finite gradient norm at step {step + 1}; the last good checkpoint "
                f"({latest_checkpoint(ckpt_dir)}) is untouched"
            )
        optimizer.step()
        step += 1
        ema.update(accelerator.unwrap_model(train_module).backbone if not t_cfg.compile else module.backbone, step)
        losses.append(sums["loss"])
        window.append(sums)
        bar.update(1)
        bar.set_postfix(loss=f"{sums['loss']:.4f}", align=f"{sums['loss_align']:.3f}")

        if step % t_cfg.log_every == 0 or step == end_step:
            elapsed = time.perf_counter() - tic
            scalars = {k: float(np.mean([w[k] for w in window])) for k in sums}
            scalars.update(parts_sum)
            scalars.update(
                grad_norm=grad_norm, lr=optimizer.param_groups[0]["lr"], steps_per_s=len(window) / max(elapsed, 1e-9)
            )
            logger.log(step, scalars)
            tic, window = time.perf_counter(), []
        if t_cfg.sample_every > 0 and (step % t_cfg.sample_every == 0 or step == t_cfg.steps):
            save_grid()
        if step % t_cfg.ckpt_every == 0 or step == end_step:
            last_ckpt = save_checkpoint()
    bar.close()
    logger.close()
    return TrainResult(run_dir=run_dir, step=step, losses=losses, checkpoint=last_ckpt)

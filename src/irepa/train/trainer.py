"""The training loop, on accelerate: CPU, one GPU or many (``accelerate launch``), unchanged.

Top to bottom: build the codec (pixels <-> model space), the objective (the recipe), the backbone
with its alignment head, the EMA and the optimiser; restore a checkpoint if resuming; then for every
step: batch -> model space -> encoder targets -> ``objective.loss`` -> backward, clip, step, EMA ->
log, sample grid, checkpoint. Randomness of a step comes from a generator seeded by (seed, step,
rank), so resuming is exact without RNG bookkeeping; scalars stay on the device between log steps.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from irepa.codecs import codec_for_run
from irepa.config import RunConfig, config_diff, save_config, to_dict, validate_config, with_defaults
from irepa.data import build_dataset, make_loader
from irepa.diffusion.generator import Generator
from irepa.errors import ConfigError, TrainingDiverged
from irepa.objectives import build_objective
from irepa.utils.images import make_grid, save_png

from .checkpoint import (
    atomic_torch_save,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
    rng_state,
)
from .ema import EMA
from .end_to_end import EndToEndStep
from .logger import ScalarLogger
from .parts import (
    AlignedModel,
    OverflowGuard,
    StepLog,
    build_aligner,
    build_backbone,
    build_optimizer,
    check_finite,
    step_generator,
    with_cached_targets,
)
from .step import TrainStep

log = logging.getLogger(__name__)

# Fields that must agree between a checkpoint and the config that resumes it.
# (Not the recipe name: the sections it sets are compared themselves, and its stored spelling changed.)
RESUME_MUST_MATCH = [
    "model",
    "align",
    "objective",
    "data.source",
    "data.path",
    "data.resolution",
    "data.flip",
    "data.limit",
    "data.vae",
    "train.batch_size",
    "train.grad_accum",
    "train.seed",
    "train.lr",
    "train.betas",
    "train.weight_decay",
    "train.decay_1d_params",
    "train.adam_eps",
    "train.lr_schedule",
    "train.warmup_steps",
    "train.min_lr",
    "train.ema_decay",
    "train.extra_ema_decays",
    "train.ema_warmup",
    "end_to_end",
]

__all__ = ["TrainResult", "TrainingDiverged", "train", "step_generator", "build_aligner", "build_backbone"]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)  # total loss per optimizer step of this call
    checkpoint: Path | None = None


def _check_settings(cfg: RunConfig, device: torch.device, world: int) -> None:
    """The config's own checks (as at load, for a config built in code), then what depends on the machine."""
    validate_config(cfg)
    t = cfg.train
    if t.batch_size % (world * t.grad_accum):
        raise ConfigError(
            f"train.batch_size={t.batch_size} must be divisible by processes x grad_accum = {world} x {t.grad_accum}"
        )
    if t.mixed_precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 mixed precision needs a CUDA GPU; use bf16 or no on this device")


def _check_resumable(ckpt: dict, cfg: RunConfig) -> None:
    diff = config_diff(with_defaults(ckpt["config"]), to_dict(cfg), RESUME_MUST_MATCH)
    if diff:
        lines = "\n".join(f"  {k}: checkpoint={a!r} now={b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"cannot resume {ckpt['path']}: the config differs in\n{lines}")


def _check_input(x0: torch.Tensor, cfg: RunConfig) -> None:
    if tuple(x0.shape[-2:]) != (cfg.model.input_size, cfg.model.input_size) or x0.shape[1] != cfg.model.in_channels:
        raise ConfigError(
            f"the data gives model inputs of shape {tuple(x0.shape[1:])} but the model expects "
            f"({cfg.model.in_channels}, {cfg.model.input_size}, {cfg.model.input_size}); set data.resolution "
            "(pixels) or model.input_size / model.in_channels (latents) to match"
        )


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
    accelerator = Accelerator(mixed_precision=t_cfg.mixed_precision)
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    _check_settings(cfg, device, world)
    is_main = accelerator.is_main_process

    # ---- resume point
    run_dir = Path(cfg.out)
    ckpt_dir = run_dir / "checkpoints"
    ckpt_path = resolve_resume(ckpt_dir, resume)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
    if ckpt is not None:
        _check_resumable(ckpt, cfg)

    # ---- data, codec, objective
    if dataset is None:  # latents without encoders need no pixels; pixels travel as uint8 where the source has them
        needs_images = cfg.data.source != "latents" or (cfg.align.enabled and bool(cfg.align.encoders))
        dataset = build_dataset(cfg.data, image_mode="uint8" if needs_images else "none")
    ds_classes = getattr(dataset, "num_classes", None)
    if ds_classes is not None and ds_classes > cfg.model.num_classes:
        raise ConfigError(f"the dataset has {ds_classes} classes but model.num_classes is {cfg.model.num_classes}")
    codec = codec_for_run(cfg, dataset).to(device)
    objective = build_objective(cfg.objective, cfg.model.num_classes)
    objective.check_sampler(cfg.sample.kind)
    if t_cfg.sample_every > 0 and is_main:
        codec.prepare_decoder(device)  # a missing VAE fails now, not at the first sample grid

    # ---- model, alignment head, EMA, optimiser
    torch.manual_seed(t_cfg.seed)
    backbone = build_backbone(cfg)
    # encoders keep fp32 weights and run under autocast at the run's precision (hand-crafted ones stay fp32)
    enc_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t_cfg.mixed_precision, torch.float32)
    if device.type != "cuda":
        enc_dtype = torch.float32  # bf16 autocast on a CPU is slower than fp32
    aligner, encoders = build_aligner(cfg, backbone, device, enc_dtype)
    if aligner is not None and cfg.align.cache_targets:  # the encoders run once, not every step
        dataset = with_cached_targets(dataset, cfg, encoders, accelerator)
    module = AlignedModel(backbone, aligner, cfg.align.depth).to(device)
    emas = [EMA(backbone, d, t_cfg.ema_warmup).to(device) for d in [t_cfg.ema_decay, *t_cfg.extra_ema_decays]]
    optimizer = build_optimizer(t_cfg, module, device)
    # REPA-E: the VAE (in the codec) and a discriminator train too; restored here when resuming
    end_to_end = EndToEndStep(cfg, codec, module, objective, accelerator, dataset, ckpt) if codec.trainable else None

    step = 0
    if ckpt is not None:
        backbone.load_state_dict(ckpt["model"])
        if aligner is not None:
            aligner.load_state_dict(ckpt["aligner"])
        emas[0].shadow.load_state_dict(ckpt["ema"])
        for ema, state in zip(emas[1:], ckpt.get("extra_ema") or []):
            ema.shadow.load_state_dict(state)
        optimizer.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        log.info("resumed from %s at step %d", ckpt["path"], step)
        del ckpt  # the weights now live in the modules; do not hold a second copy for the whole run

    if t_cfg.compile:  # regional: each block compiled in place, so DDP still overlaps its all-reduce
        for block in backbone.blocks:
            block.compile()
    net, optimizer = accelerator.prepare(module, optimizer)
    loader = make_loader(
        dataset,
        batch_size=t_cfg.batch_size // t_cfg.grad_accum,
        seed=t_cfg.seed,
        start_step=step * t_cfg.grad_accum,
        rank=rank,
        world_size=world,
        num_workers=cfg.data.num_workers,
        pin_memory=cfg.data.pin_memory and device.type == "cuda",
    )
    batches = iter(loader)

    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    logger = ScalarLogger(run_dir, t_cfg.report_to, to_dict(cfg), enabled=is_main)
    logger.truncate_after(step)

    def save_checkpoint() -> Path:
        path = ckpt_dir / f"step_{step:07d}.pt"
        if is_main:
            state = {
                "model": backbone.state_dict(),
                "aligner": aligner.state_dict() if aligner is not None else None,
                "ema": emas[0].shadow.state_dict(),
                "extra_ema": [e.shadow.state_dict() for e in emas[1:]],
                "optimizer": optimizer.state_dict(),
                "step": step,
                "config": to_dict(cfg),
                "codec": codec.checkpoint_state(),
                "end_to_end": end_to_end.state_dict() if end_to_end is not None else None,
                "rng": rng_state(),
            }
            atomic_torch_save(state, path)
            prune_checkpoints(ckpt_dir, t_cfg.keep_checkpoints)
        accelerator.wait_for_everyone()
        return path

    def save_grid() -> None:
        if is_main:
            labels = _grid_labels(cfg)
            gen = Generator(emas[0].shadow, objective, codec, cfg.model.input_size)
            images = gen.generate(labels, list(range(len(labels))), cfg.sample)
            save_png(make_grid(images, nrow=t_cfg.grid_per_class), run_dir / "samples" / f"step_{step:07d}.png")

    step_log = StepLog()
    overflow = OverflowGuard(t_cfg.max_skipped_steps, ckpt_dir) if t_cfg.mixed_precision == "fp16" else None
    losses: list[float] = []

    def read_log(where: str) -> None:
        """Bring the window's scalars to the host; stop if anything diverged; write the log row."""
        nonlocal tic
        steps, rows = step_log.flush()
        if not rows:
            return
        if t_cfg.mixed_precision != "fp16":  # under fp16 the loss scaler skips overflowing steps itself
            check_finite(steps, rows, where)
        losses.extend(r["loss"] for r in rows)
        elapsed = time.perf_counter() - tic
        scalars = {k: float(np.nanmean([r.get(k, np.nan) for r in rows])) for k in rows[-1] if k != "lr"}
        scalars.update(lr=rows[-1]["lr"], steps_per_s=len(rows) / max(elapsed, 1e-9))
        logger.log(steps[-1], scalars)
        bar.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)
        tic = time.perf_counter()

    # ---- the loop
    end_step = t_cfg.steps if stop_after is None else min(t_cfg.steps, step + stop_after)
    train_step = TrainStep(cfg, accelerator, net, optimizer, codec, objective, aligner, encoders, backbone, emas,
                           check_input=lambda x0: _check_input(x0, cfg), end_to_end=end_to_end, overflow=overflow)
    last_ckpt = None
    bar = tqdm(total=t_cfg.steps, initial=step, desc="train", disable=not is_main, dynamic_ncols=True)
    tic = time.perf_counter()
    while step < end_step:
        lr, scalars = train_step(step, batches)  # batch -> codec -> targets -> objective.loss -> step, EMA
        step += 1
        step_log.add(step, lr, scalars)
        bar.update(1)

        at_ckpt = step % t_cfg.ckpt_every == 0 or step == end_step
        at_grid = t_cfg.sample_every > 0 and (step % t_cfg.sample_every == 0 or step == t_cfg.steps)
        if step % t_cfg.log_every == 0 or at_ckpt or at_grid:
            read_log(f"the last good checkpoint ({latest_checkpoint(ckpt_dir)})")
        if at_grid:
            save_grid()
        if at_ckpt:
            last_ckpt = save_checkpoint()
    bar.close()
    logger.close()
    return TrainResult(run_dir=run_dir, step=step, losses=losses, checkpoint=last_ckpt)

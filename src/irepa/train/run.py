"""One assembled training run: every object a step touches, built once, stepped, saved and restored.

:meth:`Run.build` assembles a run from its config, in a fixed order: the dataset (unless given),
the codec (pixels <-> model space), the objective, the seeded backbone, the frozen encoders and the
alignment head, the EMAs, the optimiser and, for REPA-E, the end-to-end step (the trainable VAE, a
discriminator and their optimisers). :meth:`Run.step` is one optimiser step; :meth:`Run.state_dict`
and :meth:`Run.load_state_dict` are the checkpoint's schema and the only way a run is restored;
:meth:`Run.generator` samples the EMA weights for the periodic image grid.

The trainer (:func:`irepa.train.trainer.train`), the tests and the benchmarks all build through
:meth:`Run.build`, so there is one build order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from irepa.align.target_cache import with_cached_targets
from irepa.codecs import Codec, codec_for_run, unit_images
from irepa.config import RunConfig, config_diff, to_dict, validate_config, with_defaults
from irepa.data import build_dataset, make_loader
from irepa.diffusion.generator import Generator
from irepa.errors import CheckpointError, ConfigError, ForeignCheckpointError
from irepa.objectives import build_objective
from irepa.precision import AUTOCAST_DTYPES, accelerate_mixed_precision, precision_name
from irepa.utils.io import cache_home

from .aligned_model import AlignedModel, build_aligner, build_backbone
from .checkpoint import rng_state, set_rng_state
from .divergence import OverflowGuard
from .ema import EMA
from .end_to_end import EndToEndStep
from .init_from import init_from_run
from .optim import build_optimizer, learning_rate

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


def step_generator(seed: int, step: int, rank: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator that depends only on (seed, micro-step, rank): resuming needs no RNG bookkeeping.

    It lives on ``device`` so that noise, times and label dropout are drawn where they are used.
    """
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


def make_accelerator(cfg: RunConfig):
    """The ``accelerate.Accelerator`` a run trains on (CPU, one GPU or ``accelerate launch``) at its precision."""
    from accelerate import Accelerator

    return Accelerator(mixed_precision=accelerate_mixed_precision(cfg.train.mixed_precision))


def encoder_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """The dtype the frozen encoders run in: the run's autocast dtype on CUDA, float32 on a CPU
    (bf16 autocast on a CPU is slower than fp32); hand-crafted encoders stay float32 regardless."""
    if device.type != "cuda":
        return torch.float32
    return AUTOCAST_DTYPES.get(precision_name(mixed_precision), torch.float32)


def _check_settings(cfg: RunConfig, device: torch.device, world: int) -> None:
    """The config's own checks (as at load, for a config built in code), then what depends on the machine."""
    validate_config(cfg)
    t = cfg.train
    if t.batch_size % (world * t.grad_accum):
        raise ConfigError(
            f"train.batch_size={t.batch_size} must be divisible by processes x grad_accum = {world} x {t.grad_accum}"
        )
    if t.mixed_precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 mixed precision needs a CUDA GPU; use bf16 or fp32 on this device")


def check_resumable(state: dict[str, Any], cfg: RunConfig) -> None:
    """Refuse a checkpoint whose run differs from ``cfg`` in a field that changes the training itself."""
    diff = config_diff(with_defaults(state["config"]), to_dict(cfg), RESUME_MUST_MATCH)
    if diff:
        listed = ", ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in diff.items())
        raise ForeignCheckpointError(
            f"cannot resume {state.get('path', 'the checkpoint')}: it belongs to a run with other settings ({listed})",
            fix="resume with that run's settings (its config.yaml), or start a new run in another --out",
        )


def _check_input(x0: torch.Tensor, cfg: RunConfig) -> None:
    if tuple(x0.shape[-2:]) != (cfg.model.input_size, cfg.model.input_size) or x0.shape[1] != cfg.model.in_channels:
        raise ConfigError(
            f"the data gives model inputs of shape {tuple(x0.shape[1:])} but the model expects "
            f"({cfg.model.in_channels}, {cfg.model.input_size}, {cfg.model.input_size}); set data.resolution "
            "(pixels) or model.input_size / model.in_channels (latents) to match"
        )


@dataclass
class Run:
    """An assembled training run; see the module docstring. Build it with :meth:`Run.build`.

    ``module`` is the bare :class:`~irepa.train.aligned_model.AlignedModel` (backbone + alignment head) and
    ``net`` / ``optimizer`` what ``accelerator.prepare`` made of it and its optimiser; ``emas[0]`` is
    the EMA that sampling uses. ``steps_done`` counts optimiser steps (the next step's 0-indexed number).
    Without an aligner a step is plain (vanilla) training of the same objects.
    """

    cfg: RunConfig
    accelerator: Any
    dataset: Any
    codec: Codec
    objective: Any
    backbone: nn.Module
    aligner: nn.Module | None
    encoders: dict[str, nn.Module]
    module: AlignedModel
    net: nn.Module
    optimizer: torch.optim.Optimizer
    emas: list[EMA]
    end_to_end: EndToEndStep | None = None  # REPA-E: the VAE and discriminator updates
    overflow: OverflowGuard | None = None  # fp16: stops only a loss scale that never recovers
    steps_done: int = 0

    # ------------------------------------------------------------------ build

    @classmethod
    def build(cls, cfg: RunConfig, accelerator=None, dataset=None, state: dict[str, Any] | None = None,
              init_from: str | Path | None = None) -> Run:
        """Assemble the run ``cfg`` describes on ``accelerator`` (default: :func:`make_accelerator`).

        ``dataset`` replaces the one ``cfg.data`` describes (items as in :mod:`irepa.data`; an item may
        carry precomputed encoder tokens as ``target.<encoder name>``). ``state``: a checkpoint to
        resume, checked against ``cfg`` first and restored with :meth:`load_state_dict` before the
        model is compiled and wrapped (REPA-E then skips estimating its latent statistics).
        ``init_from`` (a run folder or checkpoint; ignored when resuming) starts a new run from that
        run's weights, EMAs and projectors, with a fresh optimiser (fine-tuning).
        """
        accelerator = accelerator if accelerator is not None else make_accelerator(cfg)
        device = accelerator.device
        t_cfg = cfg.train
        _check_settings(cfg, device, accelerator.num_processes)
        if state is not None:
            check_resumable(state, cfg)

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
        if t_cfg.sample_every > 0 and accelerator.is_main_process:
            codec.prepare_decoder(device)  # a missing VAE fails now, not at the first sample grid

        # ---- model, alignment head, EMAs, optimiser
        torch.manual_seed(t_cfg.seed)
        backbone = build_backbone(cfg)
        # encoders keep fp32 weights and run under autocast at the run's precision
        aligner, encoders = build_aligner(cfg, backbone, device, encoder_dtype(t_cfg.mixed_precision, device))
        if aligner is not None and cfg.align.cache_targets:  # the encoders run once, not every step
            dataset = with_cached_targets(dataset, cfg, backbone.grid, encoders, cache_home() / "targets",
                                          cfg.align.encoder_batch_size or 64, once=accelerator.main_process_first)
        module = AlignedModel(backbone, aligner, cfg.align.depth).to(device)
        emas = [EMA(backbone, d, t_cfg.ema_warmup).to(device) for d in [t_cfg.ema_decay, *t_cfg.extra_ema_decays]]
        optimizer = build_optimizer(t_cfg, module, device)
        end_to_end = None
        if codec.trainable:  # REPA-E: the VAE (in the codec) and a discriminator train too
            end_to_end = EndToEndStep(cfg, codec, module, objective, accelerator, dataset,
                                      estimate_statistics=state is None)
        overflow = None
        if t_cfg.mixed_precision == "fp16":
            overflow = OverflowGuard(t_cfg.max_skipped_steps, Path(cfg.out) / "checkpoints")

        run = cls(cfg, accelerator, dataset, codec, objective, backbone, aligner, encoders, module, module,
                  optimizer, emas, end_to_end, overflow)
        if state is not None:
            run.load_state_dict(state)
        elif init_from is not None:
            init_from_run(init_from, backbone, aligner, emas)
        if t_cfg.compile:  # regional: each block compiled in place, so DDP still overlaps its all-reduce
            for block in backbone.blocks:
                block.compile()
        run.net, run.optimizer = accelerator.prepare(module, optimizer)
        return run

    def batches(self, **loader_options: Any) -> Iterator[dict]:
        """This process's batches from the current step on (the data order is a function of the step)."""
        t_cfg, acc = self.cfg.train, self.accelerator
        options = {
            "num_workers": self.cfg.data.num_workers,
            "pin_memory": self.cfg.data.pin_memory and acc.device.type == "cuda",
            **loader_options,
        }
        return iter(make_loader(self.dataset, batch_size=t_cfg.batch_size // t_cfg.grad_accum, seed=t_cfg.seed,
                                start_step=self.steps_done * t_cfg.grad_accum, rank=acc.process_index,
                                world_size=acc.num_processes, **options))

    # ------------------------------------------------------------------ one optimiser step

    def encoder_targets(self, batch: dict) -> dict[str, torch.Tensor]:
        """The alignment targets of a batch: its cached tokens (``target.<name>``) or the encoders run on its images."""
        device, names = self.accelerator.device, self.aligner.names
        cached = {n: batch[f"target.{n}"].to(device, non_blocking=True) for n in names if f"target.{n}" in batch}
        images = unit_images(batch["image"], device) if len(cached) < len(names) else None
        return self.aligner.encode_targets(images, self.encoders, cached, self.cfg.align.encoder_batch_size)

    def step(self, batches: Iterator[dict]) -> tuple[float, dict[str, torch.Tensor]]:
        """One optimiser step on the next ``grad_accum`` batches; returns its lr and device scalars.

        Per micro-batch: batch -> encoder targets -> model space (codec; REPA-E first updates its VAE
        and discriminator with the backbone frozen) -> ``objective.loss`` -> backward; then clip, step
        (fp16: unless the loss scaler skips it) and the EMAs. The scalars stay on the device (float64)
        so a step never waits on the host.
        """
        t_cfg, acc = self.cfg.train, self.accelerator
        device, step = acc.device, self.steps_done
        lr = learning_rate(t_cfg, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for micro in range(t_cfg.grad_accum):
            batch = next(batches)
            gen = step_generator(t_cfg.seed, step * t_cfg.grad_accum + micro, acc.process_index, device)
            labels = batch["label"].to(device, non_blocking=True)
            targets = self.encoder_targets(batch) if self.aligner is not None else None
            draw = None  # the objective draws t, noise and label dropout itself, unless REPA-E's step already did
            if self.end_to_end is None:
                x0 = self.codec.encode(batch, gen, device)
            else:  # VAE and discriminator updates (backbone frozen); x0 is the detached, batch-normalised latent
                x0, draw, vae_parts = self.end_to_end.step(batch, labels, targets, gen, step)
                totals.update(vae_parts)
            if step == 0 and micro == 0:
                _check_input(x0, self.cfg)
            last_micro = micro == t_cfg.grad_accum - 1
            no_sync = acc.num_processes > 1 and not last_micro
            sync = acc.no_sync(self.net) if no_sync else contextlib.nullcontext()
            with sync, acc.autocast():
                parts = self.objective.loss(self.net, x0, labels, gen, targets, draw=draw)
            acc.backward(parts["loss"] / t_cfg.grad_accum)
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v.detach().double() / t_cfg.grad_accum  # as exact as a host sum
        max_norm = t_cfg.grad_clip if t_cfg.grad_clip > 0 else float("inf")
        grad_norm = acc.clip_grad_norm_(self.net.parameters(), max_norm)
        self.optimizer.step()
        self.steps_done = step + 1
        if self.overflow is not None:
            self.overflow.record(acc.optimizer_step_was_skipped, self.steps_done)
        for ema in self.emas:
            ema.update(self.backbone, self.steps_done)
        return lr, {**totals, "grad_norm": grad_norm.detach().double().reshape(())}

    # ------------------------------------------------------------------ checkpoint schema

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds: weights, EMAs, optimiser state(s), step, config, codec, REPA-E state.

        Sampling reads ``model`` / ``ema``, ``config`` and ``codec`` (see :mod:`irepa.sample.pipeline`).
        """
        e2e = self.end_to_end
        return {
            "model": self.backbone.state_dict(),
            "aligner": self.aligner.state_dict() if self.aligner is not None else None,
            "ema": self.emas[0].shadow.state_dict(),
            "extra_ema": [e.shadow.state_dict() for e in self.emas[1:]],
            "optimizer": self.optimizer.state_dict(),
            "step": self.steps_done,
            "config": to_dict(self.cfg),
            "codec": self.codec.checkpoint_state(),
            "end_to_end": e2e.state_dict() if e2e is not None else None,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the run a checkpoint (of this or an earlier release) was written from.

        Refused, naming the fields, when the checkpoint's config differs from this run's in anything
        that changes the training (:data:`RESUME_MUST_MATCH`).
        """
        check_resumable(state, self.cfg)
        if state.get("optimizer") is None:  # an imported release: weights without training state
            raise CheckpointError(f"{state.get('path', 'the checkpoint')} holds no optimizer state (an imported "
                                  "checkpoint), so it cannot be resumed",
                                  fix="fine-tune from it instead: irepa train --init-from RUN --out NEW_FOLDER")
        self.backbone.load_state_dict(state["model"])
        if self.aligner is not None:
            self.aligner.load_state_dict(state["aligner"])
        self.emas[0].shadow.load_state_dict(state["ema"])
        for ema, ema_state in zip(self.emas[1:], state.get("extra_ema") or []):
            ema.shadow.load_state_dict(ema_state)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.end_to_end is not None:
            self.end_to_end.load_state_dict(state)
        if state.get("rng") is not None:
            set_rng_state(state["rng"])
        self.steps_done = int(state["step"])
        log.info("resumed from %s at step %d", state.get("path", "a checkpoint"), self.steps_done)

    # ------------------------------------------------------------------ sampling

    def generator(self) -> Generator:
        """A sampler of the EMA weights (what ``irepa sample`` would load from this run's checkpoint)."""
        return Generator(self.emas[0].shadow, self.objective, self.codec, self.cfg.model.input_size)

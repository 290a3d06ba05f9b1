"""One optimiser step of the training loop, as one callable: what the trainer runs and what benchmarks time.

For each micro-batch: batch -> encoder targets -> model space (codec; REPA-E first updates its VAE and
discriminator with the SiT frozen) -> ``objective.loss`` -> backward; then clip, optimiser step (fp16:
unless the loss scaler skips it) and EMA update. The loss parts and the gradient norm come back as device
tensors (for :class:`~irepa.train.parts.StepLog`), so a step never waits on the host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .ema import EMA
from .parts import OverflowGuard, encoder_targets, learning_rate, step_generator


@dataclass
class TrainStep:
    """Optimizer step ``step`` (0-indexed) of a run: ``lr, scalars = train_step(step, batches)``.

    ``net`` and ``optimizer`` are what ``accelerator.prepare`` returned for the
    :class:`~irepa.train.parts.AlignedModel` and its optimiser; ``backbone`` is the bare model the
    EMAs follow. Without an aligner the step is plain (vanilla) training of the same objects.
    ``check_input(x0)`` runs on the first micro-batch of step 0 (the trainer's shape check).
    """

    cfg: Any  # RunConfig: train (schedule, accumulation, clipping, seed) and align.encoder_batch_size
    accelerator: Any
    net: nn.Module
    optimizer: torch.optim.Optimizer
    codec: nn.Module
    objective: Any
    aligner: nn.Module | None
    encoders: dict[str, nn.Module]
    backbone: nn.Module
    emas: list[EMA] = field(default_factory=list)
    check_input: Callable[[torch.Tensor], None] | None = None
    end_to_end: Any = None  # REPA-E's VAE + discriminator step (irepa.train.end_to_end.EndToEndStep)
    overflow: OverflowGuard | None = None  # fp16: stops only a loss scale that never recovers

    def __call__(self, step: int, batches: Iterator[dict]) -> tuple[float, dict[str, torch.Tensor]]:
        """Run one optimiser step on the next ``grad_accum`` batches; returns its lr and device scalars."""
        t_cfg, acc = self.cfg.train, self.accelerator
        device = acc.device
        lr = learning_rate(t_cfg, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for micro in range(t_cfg.grad_accum):
            batch = next(batches)
            gen = step_generator(t_cfg.seed, step * t_cfg.grad_accum + micro, acc.process_index, device)
            labels = batch["label"].to(device, non_blocking=True)
            targets = None
            if self.aligner is not None:
                targets = encoder_targets(batch, self.aligner, self.encoders, device, self.cfg.align.encoder_batch_size)
            draw = None  # the objective draws t, noise and label dropout itself, unless REPA-E's step already did
            if self.end_to_end is None:
                x0 = self.codec.encode(batch, gen, device)
            else:  # VAE and discriminator updates (SiT frozen); x0 is the detached, batch-normalised latent
                x0, draw, vae_parts = self.end_to_end.step(batch, labels, targets, gen, step)
                totals.update(vae_parts)
            if step == 0 and micro == 0 and self.check_input is not None:
                self.check_input(x0)
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
        if self.overflow is not None:
            self.overflow.record(acc.optimizer_step_was_skipped, step + 1)
        for ema in self.emas:
            ema.update(self.backbone, step + 1)
        return lr, {**totals, "grad_norm": grad_norm.detach().double().reshape(())}

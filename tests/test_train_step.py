"""TrainStep, the trainer's optimiser step as one callable, against the trainer itself: same losses, same weights.

The parts are assembled here in the trainer's order (seeded backbone, aligner and encoders, AlignedModel,
EMA, optimiser, accelerator.prepare, the run's loader); a run of TrainStep must then reproduce the
trainer's losses, final weights and EMA bit for bit on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from tiny import tiny_overrides, with_random_encoders

from irepa.codecs import codec_for_dataset
from irepa.config import load_config
from irepa.data import build_dataset, make_loader
from irepa.objectives import build_objective
from irepa.recipes import recipe_overrides
from irepa.train.checkpoint import load_checkpoint
from irepa.train.ema import EMA
from irepa.train.parts import AlignedModel, StepLog, build_aligner, build_backbone, build_optimizer
from irepa.train.step import TrainStep
from irepa.train.trainer import train

STEPS = 5


def _config(out, recipe: str, **extra):
    common = tiny_overrides(
        out,
        **{
            "data.synthetic_size": 48,
            "align.projector_hidden_dim": 64,
            "train.warmup_steps": 2,
            "train.steps": STEPS,
            "train.log_every": 2,
            "train.ckpt_every": 1000,
            "train.ema_decay": 0.9,
            "train.extra_ema_decays": [0.5],
            "train.ema_warmup": True,
            **extra,
        },
    )
    return with_random_encoders(load_config(None, recipe_overrides(recipe, common)))


def _run_train_step(cfg):
    """STEPS optimiser steps through TrainStep, from parts assembled as the trainer assembles them."""
    accelerator = Accelerator(cpu=True)
    dataset = build_dataset(cfg.data)
    codec = codec_for_dataset(dataset, cfg.model.in_channels)
    objective = build_objective(cfg.objective, cfg.model.num_classes)
    torch.manual_seed(cfg.train.seed)
    backbone = build_backbone(cfg)
    aligner, encoders = build_aligner(cfg, backbone, accelerator.device, torch.float32)
    module = AlignedModel(backbone, aligner, cfg.align.depth)
    emas = [EMA(backbone, d, cfg.train.ema_warmup) for d in [cfg.train.ema_decay, *cfg.train.extra_ema_decays]]
    optimizer = build_optimizer(cfg.train, module, accelerator.device)
    net, optimizer = accelerator.prepare(module, optimizer)
    batches = iter(make_loader(dataset, batch_size=cfg.train.batch_size // cfg.train.grad_accum, seed=cfg.train.seed))
    seen = []
    step_fn = TrainStep(cfg, accelerator, net, optimizer, codec, objective, aligner, encoders, backbone, emas,
                        check_input=lambda x0: seen.append(tuple(x0.shape)))
    log = StepLog()
    for step in range(STEPS):
        lr, scalars = step_fn(step, batches)
        log.add(step + 1, lr, scalars)
    steps, rows = log.flush()
    assert steps == list(range(1, STEPS + 1))
    assert seen == [(cfg.train.batch_size // cfg.train.grad_accum, 3, 8, 8)]  # once, on step 0's first micro-batch
    return [r["loss"] for r in rows], [r["lr"] for r in rows], backbone, emas


@pytest.mark.parametrize(
    "recipe, extra",
    [("sit-vanilla", {}), ("sit-irepa", {"train.grad_accum": 2}), ("meanflow-repa", {})],
    ids=["vanilla", "irepa-accum2", "meanflow-repa"],
)
def test_train_step_reproduces_the_trainer_bit_for_bit(tmp_path, recipe, extra):
    result = train(_config(tmp_path / "run", recipe, **extra))
    losses, lrs, backbone, emas = _run_train_step(_config(tmp_path / "unused", recipe, **extra))
    assert losses == result.losses
    assert lrs == [1e-3 * 0.5, 1e-3, 1e-3, 1e-3, 1e-3]  # warm-up of 2 steps
    ckpt = load_checkpoint(result.checkpoint)
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, ckpt["model"][key], rtol=0, atol=0)
    for ema, stored in zip(emas, [ckpt["ema"], *ckpt["extra_ema"]], strict=True):
        for key, value in ema.shadow.state_dict().items():
            torch.testing.assert_close(value, stored[key], rtol=0, atol=0)

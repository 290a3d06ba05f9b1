"""The trainer against a plain, hand-written flow-matching + alignment loop: the same losses, bit for bit.

The reference loop below is written out in full with nothing but torch and the library's building
blocks (model, encoder, projectors, data order, per-step generator). It draws, per micro-step and
from one generator, t, then the noise, then the label-dropout coin; forms the linear or cosine
interpolant and its velocity; and minimises ``mean (v_theta - v)^2 + (1/n) sum_i coeff_i L_align_i``
with AdamW and gradient-norm clipping. Whatever the trainer's internals become, its first 20 losses
on these seeds must equal this loop's exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_overrides, with_random_encoders

from irepa.align import Aligner
from irepa.config import load_config
from irepa.data import build_dataset, make_loader
from irepa.encoders import load_encoder
from irepa.models import create_model
from irepa.train.trainer import step_generator, train

STEPS = 20


def _config(out, recipe: str, **extra):
    recipes = {
        "vanilla": {"align.enabled": False},
        "repa": {"align.projector": "mlp", "align.norm": "none", "align.coeff": 0.5},
        "irepa": {"align.projector": "conv", "align.norm": "zscore", "align.zscore_alpha": 0.6, "align.coeff": 1.0},
    }
    overrides = {
        "data.synthetic_size": 48,
        "align.projector_hidden_dim": 64,
        "train.steps": STEPS,
        "train.log_every": 5,
        "train.ckpt_every": 1000,
        "train.ema_decay": 0.9,
        **recipes[recipe],
        **extra,
    }
    return with_random_encoders(load_config(None, tiny_overrides(out, **overrides)))


def _path(name: str, t: torch.Tensor):
    """(a_t, s_t, a'_t, s'_t) of the linear or cosine path, written out."""
    if name == "linear":
        return 1 - t, t, -torch.ones_like(t), torch.ones_like(t)
    half_pi = math.pi / 2
    return (
        torch.cos(t * half_pi),
        torch.sin(t * half_pi),
        -half_pi * torch.sin(t * half_pi),
        half_pi * torch.cos(t * half_pi),
    )


def reference_losses(cfg) -> list[float]:
    torch.manual_seed(cfg.train.seed)
    backbone = create_model(cfg.model.name, **cfg.model.overrides())
    aligner, encoder = None, None
    if cfg.align.enabled:
        encoder = load_encoder("dinov2-vit-s", weights="random", grid=backbone.grid).freeze()
        aligner = Aligner(
            hidden_dim=backbone.hidden_size,
            encoder_dims={"dinov2-vit-s": encoder.embed_dim},
            grid=backbone.grid,
            coeffs={"dinov2-vit-s": cfg.align.coeff},
            projector=cfg.align.projector,
            kernel_size=cfg.align.kernel_size,
            projector_hidden_dim=cfg.align.projector_hidden_dim,
            norm=cfg.align.norm,
            alpha=cfg.align.zscore_alpha,
        )
    params = list(backbone.parameters()) + (list(aligner.parameters()) if aligner is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, betas=tuple(cfg.train.betas), weight_decay=0.0, eps=1e-8)
    accum = cfg.train.grad_accum
    loader = iter(make_loader(build_dataset(cfg.data), batch_size=cfg.train.batch_size // accum, seed=cfg.train.seed))
    d = cfg.objective
    losses = []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(accum):
            batch = next(loader)
            gen = step_generator(cfg.train.seed, step * accum + micro, 0)
            x0 = batch["image"].float() * 2 - 1
            b = x0.shape[0]
            if d.time_sampling == "uniform":
                t = torch.rand(b, generator=gen)
            else:  # log-normal noise-to-signal ratio sigma, mapped to the t with s_t / a_t = sigma
                sigma = (torch.randn(b, generator=gen) * d.p_std + d.p_mean).exp()
                t = sigma / (1 + sigma) if d.path == "linear" else torch.atan(sigma) * (2 / math.pi)
            noise = torch.randn(x0.shape, generator=gen)
            drop = torch.rand(b, generator=gen) < d.label_dropout
            labels = torch.where(drop, torch.full_like(batch["label"], cfg.model.num_classes), batch["label"])
            a, s, da, ds = (c.view(-1, 1, 1, 1) for c in _path(d.path, t))
            xt, v_target = a * x0 + s * noise, da * x0 + ds * noise
            if aligner is None:
                v = backbone(xt, t, labels)
                loss = (v - v_target).pow(2).mean()
            else:
                v, hidden = backbone(xt, t, labels, return_hidden_at=cfg.align.depth)
                target = aligner.prepare_target(encoder.encode(batch["image"]), "dinov2-vit-s", tuple(encoder.grid))
                loss = (v - v_target).pow(2).mean() + aligner(hidden, {"dinov2-vit-s": target}).loss
            (loss / accum).backward()
            total += loss.item() / accum
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        opt.step()
        losses.append(total)
    return losses


@pytest.mark.parametrize(
    "recipe, extra",
    [
        ("vanilla", {}),
        ("repa", {}),
        ("irepa", {}),
        ("irepa", {"objective.path": "cosine", "objective.time_sampling": "lognormal", "train.grad_accum": 2}),
    ],
    ids=["vanilla", "repa", "irepa", "irepa-cosine-lognormal-accum2"],
)
def test_trainer_losses_equal_the_reference_loop_bit_for_bit(tmp_path, recipe, extra):
    cfg = _config(tmp_path / "run", recipe, **extra)
    ours = train(cfg).losses
    assert len(ours) == STEPS
    assert ours == reference_losses(_config(tmp_path / "unused", recipe, **extra))

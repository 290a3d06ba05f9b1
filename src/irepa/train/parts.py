"""The pieces the training loop is assembled from: the trainable module, encoders, optimiser, schedule,
per-step randomness, and the device-side bookkeeping that keeps the GPU from waiting on the host."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from irepa.align import Aligner
from irepa.errors import ConfigError, TrainingDiverged
from irepa.models import create_model


class AlignedModel(nn.Module):
    """Backbone and alignment head as one module, so DDP and the optimiser see every trainable parameter.

    ``forward(x_t, t, y, targets, **times)`` returns ``(prediction, AlignOutput | None)``; without
    targets (or without an aligner) it is the plain backbone call.
    """

    def __init__(self, backbone: nn.Module, aligner: Aligner | None, depth: int):
        super().__init__()
        self.backbone = backbone
        self.aligner = aligner
        self.depth = depth

    def forward(self, xt, t, y, targets: dict[str, torch.Tensor] | None = None, r: torch.Tensor | None = None):
        times = {} if r is None else {"r": r}
        if self.aligner is None or targets is None:
            return self.backbone(xt, t, y, **times), None
        out, hidden = self.backbone(xt, t, y, return_hidden_at=self.depth, **times)
        return out, self.aligner(hidden, targets)

    def align_only(self, xt, t, y, targets: dict[str, torch.Tensor], r: torch.Tensor | None = None):
        """The alignment head's output alone: the backbone stops after block ``depth`` when it can
        (``backbone.hidden_at``), else runs whole and its prediction is dropped."""
        times = {} if r is None else {"r": r}
        if hasattr(self.backbone, "hidden_at"):
            hidden = self.backbone.hidden_at(xt, t, y, self.depth, **times)
        else:
            hidden = self.backbone(xt, t, y, return_hidden_at=self.depth, **times)[1]
        return self.aligner(hidden, targets)


def step_generator(seed: int, step: int, rank: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator that depends only on (seed, micro-step, rank): resuming needs no RNG bookkeeping.

    It lives on ``device`` so that noise, times and label dropout are drawn where they are used.
    """
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


def build_backbone(cfg) -> nn.Module:
    """The model named in ``cfg.model`` (with MeanFlow's second time embedding when the objective needs it)."""
    return create_model(cfg.model.name, **cfg.model.overrides(interval_embedding=cfg.objective.kind == "meanflow"))


def build_aligner(cfg, backbone: nn.Module, device, dtype) -> tuple[Aligner | None, dict[str, nn.Module]]:
    """Load the frozen encoders at the backbone's token grid and build their projectors."""
    a = cfg.align
    if not a.enabled or not a.encoders:
        return None, {}
    from irepa.encoders import load_encoder

    depth = len(backbone.blocks)
    if not 1 <= a.depth <= depth:
        raise ConfigError(f"align.depth={a.depth} but {cfg.model.name} has {depth} blocks; choose 1..{depth}")
    encoders = {
        e.name: load_encoder(
            e.name,
            weights=e.weights,
            resolution=a.encoder_resolution,
            grid=backbone.grid,
            device=device,
            dtype=dtype,
            resize=a.encoder_resize,
            pos_embed=a.encoder_pos_embed,
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


def with_cached_targets(dataset, cfg, encoders: dict[str, nn.Module], accelerator):
    """``dataset`` whose items carry every encoder's tokens (``target.<name>``), encoded once and stored.

    The main process encodes (and stores under ``$IREPA_HOME/targets``) while the others wait, then
    every process reads the same file.
    """
    from irepa.align.target_cache import TokenCachedDataset, cached_tokens
    from irepa.config import to_dict
    from irepa.utils.io import cache_home

    if cfg.data.flip:
        raise ConfigError("align.cache_targets stores the tokens of unflipped images",
                          fix="set data.flip false, or align.cache_targets false to encode every step")
    data = to_dict(cfg)["data"]
    fingerprint = dataset.fingerprint() if hasattr(dataset, "fingerprint") else None
    tokens = {}
    for entry in cfg.align.encoders:
        enc = encoders[entry.name]
        key = {"encoder": entry.name, "weights": str(entry.weights), "grid": list(enc.grid),
               "resolution": list(enc.resolution), "resize": cfg.align.encoder_resize,
               "pos_embed": cfg.align.encoder_pos_embed, "items": len(dataset), "fingerprint": fingerprint,
               "data": {k: data[k] for k in ("source", "path", "resolution", "limit", "split", "seed")}}
        with accelerator.main_process_first():
            tokens[entry.name] = cached_tokens(dataset, enc, cache_home() / "targets", key,
                                               cfg.align.encoder_batch_size or 64, dtype=torch.float32)
    return TokenCachedDataset(dataset, tokens)


@torch.no_grad()
def encoder_targets(batch: dict, aligner: Aligner, encoders: dict, device, encoder_batch: int | None):
    """Encoder targets, from tokens cached in the batch (``target.<name>``) or by running the encoders."""
    from irepa.codecs import unit_images

    out = {}
    images = None
    for name in aligner.names:
        cached = batch.get(f"target.{name}")
        if cached is not None:
            out[name] = aligner.prepare_target(cached.to(device, non_blocking=True).float(), name)
            continue
        if images is None:
            images = unit_images(batch["image"], device)
        enc = encoders[name]
        chunks = images.split(encoder_batch) if encoder_batch else [images]
        tokens = torch.cat([enc.encode(c) for c in chunks])
        out[name] = aligner.prepare_target(tokens, name, tuple(enc.grid))
    return out


def build_optimizer(t_cfg, module: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; with ``decay_1d_params: false`` biases, norms and other 1-D parameters get no weight decay.

    On CUDA the fused kernel is used (one launch for all parameters).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not t_cfg.decay_1d_params and t_cfg.weight_decay > 0:
        params = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": t_cfg.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(
        params, lr=t_cfg.lr, betas=tuple(t_cfg.betas), weight_decay=t_cfg.weight_decay, eps=t_cfg.adam_eps, **extra
    )


LR_SCHEDULES = ("constant", "cosine")


def learning_rate(t_cfg, step: int) -> float:
    """The learning rate for optimizer step ``step`` (0-indexed): linear warm-up, then constant or cosine.

    A pure function of the step, so a resumed run needs no scheduler state.
    """
    if t_cfg.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"train.lr_schedule {t_cfg.lr_schedule!r} is unknown; valid: {', '.join(LR_SCHEDULES)}")
    if step < t_cfg.warmup_steps:
        return t_cfg.lr * (step + 1) / t_cfg.warmup_steps
    if t_cfg.lr_schedule == "constant":
        return t_cfg.lr
    span = max(1, t_cfg.steps - t_cfg.warmup_steps)
    progress = min(1.0, (step - t_cfg.warmup_steps) / span)
    return t_cfg.min_lr + (t_cfg.lr - t_cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class StepLog:
    """Per-step scalars kept on the device and read back only at log and checkpoint time.

    The hot loop never waits on the host: loss parts and the gradient norm stay tensors until
    :meth:`flush`, which makes one transfer for the whole window.
    """

    rows: list[dict[str, torch.Tensor]] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)

    def add(self, step: int, lr: float, scalars: dict[str, torch.Tensor]) -> None:
        self.rows.append(scalars)
        self.steps.append(step)
        self.lrs.append(lr)

    def flush(self) -> tuple[list[int], list[dict[str, float]]]:
        """All rows as floats (one host transfer), and clear the window."""
        if not self.rows:
            return [], []
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        nan = self.rows[0]["loss"].new_tensor(math.nan)
        table = torch.stack([torch.stack([r[k].reshape(()) if k in r else nan for k in keys]) for r in self.rows])
        rows = [{**dict(zip(keys, values)), "lr": lr} for values, lr in zip(table.cpu().tolist(), self.lrs)]
        steps = self.steps
        self.rows, self.steps, self.lrs = [], [], []
        return steps, rows


def check_finite(steps: list[int], rows: list[dict[str, float]], where: str) -> None:
    """Raise :class:`TrainingDiverged` naming the first step whose loss or gradient norm is not finite."""
    for step, row in zip(steps, rows):
        for key in ("loss", "grad_norm"):
            if key in row and not math.isfinite(row[key]):
                what = "loss" if key == "loss" else "gradient norm"
                parts = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k.startswith("loss"))
                raise TrainingDiverged(
                    f"non-finite {what} at step {step} ({parts}); the run stopped and {where} is untouched. "
                    "Fix: lower train.lr, keep train.grad_clip on, or use bf16 instead of fp16"
                )


@dataclass
class OverflowGuard:
    """fp16 training: the loss scaler skips a step whose gradients overflowed and lowers its scale.

    That is normal and is let be; only ``limit`` skips in a row (a scale that never recovers) stop the
    run. ``record`` takes whether the step just taken was skipped.
    """

    limit: int
    checkpoints: Path  # named in the message: the newest checkpoint there is the last good one
    in_a_row: int = 0

    def record(self, skipped: bool, step: int) -> None:
        self.in_a_row = self.in_a_row + 1 if skipped else 0
        if self.in_a_row >= self.limit:
            from .checkpoint import latest_checkpoint

            raise TrainingDiverged(
                f"the fp16 loss scaler skipped {self.in_a_row} steps in a row up to step {step}; the last good "
                f"checkpoint ({latest_checkpoint(self.checkpoints)}) is untouched. Fix: use bf16, or lower train.lr"
            )

"""The trainable module of a run: the backbone and its alignment head as one module, and how both are built."""

from __future__ import annotations

import torch
from torch import nn

from irepa.align import Aligner
from irepa.errors import ConfigError
from irepa.models import create_model, model_config


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


def build_backbone(cfg) -> nn.Module:
    """The model named in ``cfg.model`` (with MeanFlow's second time embedding when the objective needs it).

    A backbone whose token grid and width depend on the aligned block (a U-Net: its config has
    ``align_depth``) is built for ``align.depth``.
    """
    overrides = cfg.model.overrides(interval_embedding=cfg.objective.kind == "meanflow")
    if hasattr(model_config(cfg.model.name), "align_depth"):
        overrides["align_depth"] = cfg.align.depth
    return create_model(cfg.model.name, **overrides)


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

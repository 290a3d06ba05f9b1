"""SiT: a DiT-style transformer predicting the flow-matching velocity (Ma et al., 2024).

Reads top to bottom: patchify -> add position -> N adaLN-Zero blocks conditioned on (t, y) ->
final adaLN layer -> unpatchify. ``forward`` can also hand back the hidden state after block k,
which is what representation alignment supervises.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import (
    AdaLNZeroBlock,
    FinalLayer,
    Mlp,
    TimestepEmbedder,
    check_hidden_index,
    init_conditioning,
    sincos_pos_embed_2d,
    unpatchify,
    xavier_init_conv_as_linear,
    xavier_init_linears,
    zero_init_adaln,
)


@dataclass
class SiTConfig:
    depth: int = 12
    hidden_size: int = 768
    num_heads: int = 12
    patch_size: int = 2
    input_size: int | tuple[int, int] = 32  # latent (or pixel) height/width
    in_channels: int = 4
    num_classes: int = 1000  # the null class used for CFG is index num_classes
    mlp_ratio: float = 4.0
    qk_norm: bool = False
    interval_embedding: bool = False  # MeanFlow: also embed the interval t - r and add it to the conditioning

    @property
    def grid(self) -> tuple[int, int]:
        h, w = (self.input_size, self.input_size) if isinstance(self.input_size, int) else self.input_size
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input size {(h, w)} is not divisible by patch size {self.patch_size}")
        return h // self.patch_size, w // self.patch_size


class SiT(nn.Module):
    """LayerNorm + GELU-MLP adaLN-Zero transformer over patches (no RoPE, no dropout)."""

    def __init__(self, config: SiTConfig):
        super().__init__()
        self.config = config
        c = config
        self.grid = c.grid
        self.hidden_size = c.hidden_size
        self.num_classes = c.num_classes
        self.x_embedder = nn.Conv2d(c.in_channels, c.hidden_size, c.patch_size, stride=c.patch_size)
        self.t_embedder = TimestepEmbedder(c.hidden_size)
        self.y_embedder = nn.Embedding(c.num_classes + 1, c.hidden_size)
        self.interval_embedder = TimestepEmbedder(c.hidden_size) if c.interval_embedding else None
        self.register_buffer("pos_embed", sincos_pos_embed_2d(c.hidden_size, self.grid)[None], persistent=False)
        mlp_hidden = int(c.hidden_size * c.mlp_ratio)
        self.blocks = nn.ModuleList(
            AdaLNZeroBlock(c.hidden_size, c.num_heads, Mlp(c.hidden_size, mlp_hidden), norm="layer", qk_norm=c.qk_norm)
            for _ in range(c.depth)
        )
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: Xavier linears, zeroed adaLN and output layers (identity blocks)."""
        xavier_init_linears(self)
        xavier_init_conv_as_linear(self.x_embedder)
        init_conditioning(self.t_embedder, self.y_embedder)
        if self.interval_embedder is not None:
            nn.init.normal_(self.interval_embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(self.interval_embedder.mlp[2].weight, std=0.02)
        zero_init_adaln(self.blocks, self.final_layer)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.grid, self.config.patch_size, self.config.in_channels)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        return_hidden_at: int | None = None,
        r: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Velocity for ``x`` at time ``t`` and class ``y`` (``y == num_classes`` is unconditional).

        With ``return_hidden_at=k`` (1-indexed) also returns the tokens ``(B, T, C)`` after block k.
        A model with ``interval_embedding`` predicts the average velocity over ``[r, t]`` (``r=None``: r = t,
        the instantaneous velocity).
        """
        check_hidden_index(return_hidden_at, len(self.blocks))
        h, c = self.embed(x, t, y, r)
        hidden = None
        for depth, block in enumerate(self.blocks, start=1):
            h = block(h, c)
            if depth == return_hidden_at:
                hidden = h
        out = self.unpatchify(self.final_layer(h, c))
        return out if return_hidden_at is None else (out, hidden)

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, r: torch.Tensor | None = None):
        """Patch tokens with their positions ``(B, T, C)`` and the conditioning vector ``(B, C)``."""
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        c = self.t_embedder(t) + self.y_embedder(y)
        if self.interval_embedder is not None:
            c = c + self.interval_embedder(t - r if r is not None else torch.zeros_like(t))
        elif r is not None:
            raise ValueError("this SiT has no interval embedding; build it with interval_embedding=True for MeanFlow")
        return h, c

    def hidden_at(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, depth: int, r: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The tokens after block ``depth`` alone; later blocks are not run (alignment-only passes)."""
        check_hidden_index(depth, len(self.blocks))
        h, c = self.embed(x, t, y, r)
        for block in self.blocks[:depth]:
            h = block(h, c)
        return h

"""SiT: a DiT-style transformer predicting the flow-matching velocity (Ma et al., 2024).

Reads top to bottom: patchify -> add position -> N adaLN-Zero blocks conditioned on (t, y) ->
final adaLN layer -> unpatchify. ``forward`` can also hand back the hidden state after block k,
which is what representation alignment supervises.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import Attention, Mlp, TimestepEmbedder, modulate, sincos_pos_embed_2d, xavier_linear_init


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

    @property
    def grid(self) -> tuple[int, int]:
        h, w = (self.input_size, self.input_size) if isinstance(self.input_size, int) else self.input_size
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input size {(h, w)} is not divisible by patch size {self.patch_size}")
        return h // self.patch_size, w // self.patch_size


class SiTBlock(nn.Module):
    """Transformer block with adaptive LayerNorm-Zero conditioning."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        x = x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class SiT(nn.Module):
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
        self.register_buffer("pos_embed", sincos_pos_embed_2d(c.hidden_size, self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(
            SiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio, c.qk_norm) for _ in range(c.depth)
        )
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: Xavier linears, zeroed adaLN and output layers (identity blocks)."""
        xavier_linear_init(self)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p, ch = self.config.patch_size, self.config.in_channels
        h, w = self.grid
        x = x.reshape(x.shape[0], h, w, p, p, ch)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], ch, h * p, w * p)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, return_hidden_at: int | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Velocity for ``x`` at time ``t`` and class ``y`` (``y == num_classes`` is unconditional).

        With ``return_hidden_at=k`` (1-indexed) also returns the tokens ``(B, T, C)`` after block k.
        """
        if return_hidden_at is not None and not 1 <= return_hidden_at <= len(self.blocks):
            raise ValueError(f"return_hidden_at must be in 1..{len(self.blocks)}, got {return_hidden_at}")
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        c = self.t_embedder(t) + self.y_embedder(y)
        hidden = None
        for depth, block in enumerate(self.blocks, start=1):
            h = block(h, c)
            if depth == return_hidden_at:
                hidden = h
        out = self.unpatchify(self.final_layer(h, c))
        return out if return_hidden_at is None else (out, hidden)

"""JiT: "Just image Transformers", a pixel-space transformer that predicts the clean image (Li & He, 2025).

"Back to Basics: Let Denoising Generative Models Denoise". Reads top to bottom: large patches through a
low-rank (bottleneck) embedding -> add fixed sin-cos positions -> adaLN-Zero blocks with RMSNorm,
qk-RMSNorm, SwiGLU and 2-D RoPE, conditioned on ``c = embed(t) + embed(y)`` -> at block
``in_context_start``, 32 class tokens (label embedding + learned position) are prepended and stay
until the end -> final adaLN layer on the image tokens -> unpatchify.

The network outputs x̂ (the denoised image) with the input's shape; turning x̂ into a velocity or a
loss is the objective's job. ``forward`` can also hand back the image tokens after block k (the
in-context tokens removed), which is what representation alignment supervises.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from irepa.errors import ConfigError

from .layers import (
    AdaLNZeroBlock,
    FinalLayer,
    Rope2d,
    SwiGLU,
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
class JiTConfig:
    depth: int = 12
    hidden_size: int = 768
    num_heads: int = 12
    patch_size: int = 16
    bottleneck_dim: int = 128  # rank of the patch embedding
    in_context_start: int = 4  # 0-indexed block before which the class tokens are prepended (>= depth: never)
    in_context_len: int = 32  # number of in-context class tokens (0: none)
    input_size: int | tuple[int, int] = 256  # pixel height/width
    in_channels: int = 3
    num_classes: int = 1000  # the null class used for CFG is index num_classes
    mlp_ratio: float = 4.0  # SwiGLU hidden = int(int(hidden * mlp_ratio) * 2 / 3): a GELU MLP's parameters
    attn_dropout: float = 0.0  # on attention weights, middle half of the blocks only
    proj_dropout: float = 0.0  # on the attention output and the SwiGLU hidden, middle half only
    # under autocast: attention logits / softmax and every RMSNorm in float32, as JiT (False: all in the
    # autocast dtype, with the fused attention kernel)
    fp32_ops: bool = True

    @property
    def grid(self) -> tuple[int, int]:
        h, w = (self.input_size, self.input_size) if isinstance(self.input_size, int) else self.input_size
        if h % self.patch_size or w % self.patch_size:
            raise ConfigError(
                f"input size {(h, w)} is not divisible by patch size {self.patch_size}; "
                "choose an input size that is a multiple of the patch size"
            )
        return h // self.patch_size, w // self.patch_size

    def has_dropout(self, block_index: int) -> bool:
        """Dropout lives only in the middle half of the blocks: ``depth//4 <= i < 3*(depth//4)`` (0-indexed)."""
        quarter = self.depth // 4
        return quarter <= block_index < 3 * quarter

    def validate(self) -> None:
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise ConfigError(
                f"JiT needs hidden_size / num_heads divisible by 4 for 2-D RoPE, got {self.hidden_size} / "
                f"{self.num_heads}; pick a width that is a multiple of 4 * num_heads"
            )
        if self.in_context_start < 0 or self.in_context_len < 0:
            raise ConfigError(
                f"in_context_start ({self.in_context_start}) and in_context_len ({self.in_context_len}) "
                "must be >= 0; use in_context_len=0 to disable the class tokens"
            )


class BottleneckPatchEmbed(nn.Module):
    """p x p patches -> ``bottleneck_dim`` (linear, no bias) -> ``hidden`` (linear): a low-rank patch embedding."""

    def __init__(self, in_channels: int, patch_size: int, bottleneck_dim: int, hidden_size: int):
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, bottleneck_dim, patch_size, stride=patch_size, bias=False)
        self.expand = nn.Conv2d(bottleneck_dim, hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x)).flatten(2).transpose(1, 2)  # (B, H*W, hidden), row-major


class JiT(nn.Module):
    """RMSNorm + SwiGLU adaLN-Zero transformer over pixel patches, with 2-D RoPE and in-context class tokens."""

    def __init__(self, config: JiTConfig):
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.grid = c.grid
        self.hidden_size = c.hidden_size
        self.num_classes = c.num_classes
        self.x_embedder = BottleneckPatchEmbed(c.in_channels, c.patch_size, c.bottleneck_dim, c.hidden_size)
        self.t_embedder = TimestepEmbedder(c.hidden_size)
        self.y_embedder = nn.Embedding(c.num_classes + 1, c.hidden_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(c.hidden_size, self.grid)[None], persistent=False)
        self.in_context_pos = nn.Parameter(torch.zeros(1, c.in_context_len, c.hidden_size))
        self.rope = Rope2d(c.hidden_size // c.num_heads, self.grid)
        swiglu_hidden = int(int(c.hidden_size * c.mlp_ratio) * 2 / 3)
        self.blocks = nn.ModuleList(
            AdaLNZeroBlock(
                c.hidden_size,
                c.num_heads,
                SwiGLU(c.hidden_size, swiglu_hidden, dropout=c.proj_dropout if c.has_dropout(i) else 0.0),
                norm="rms",
                qk_norm=True,
                attn_dropout=c.attn_dropout if c.has_dropout(i) else 0.0,
                proj_dropout=c.proj_dropout if c.has_dropout(i) else 0.0,
                fp32=c.fp32_ops,
            )
            for i in range(c.depth)
        )
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.in_channels, norm="rms", fp32=c.fp32_ops)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation (Xavier linears and patch maps, zeroed adaLN and output); N(0, 0.02) token positions."""
        xavier_init_linears(self)
        xavier_init_conv_as_linear(self.x_embedder.reduce)
        xavier_init_conv_as_linear(self.x_embedder.expand)
        init_conditioning(self.t_embedder, self.y_embedder)
        zero_init_adaln(self.blocks, self.final_layer)
        nn.init.normal_(self.in_context_pos, std=0.02)

    def in_context_tokens(self, y_emb: torch.Tensor) -> torch.Tensor:
        """``in_context_len`` copies of each label embedding, told apart by a learned position: (B, L, C)."""
        return y_emb.unsqueeze(1) + self.in_context_pos

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.grid, self.config.patch_size, self.config.in_channels)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, return_hidden_at: int | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Denoised image x̂ for noisy ``x`` at time ``t`` and class ``y`` (``y == num_classes``: unconditional).

        With ``return_hidden_at=k`` (1-indexed) also returns the image tokens ``(B, H*W, C)`` after block k.
        """
        check_hidden_index(return_hidden_at, len(self.blocks))
        y_emb = self.y_embedder(y)
        c = self.t_embedder(t) + y_emb
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        num_prefix = 0  # in-context tokens currently in front of the image tokens
        rope = self.rope()
        hidden = None
        for index, block in enumerate(self.blocks):
            if index == self.config.in_context_start and self.config.in_context_len:
                h = torch.cat([self.in_context_tokens(y_emb).to(h.dtype), h], dim=1)
                num_prefix = self.config.in_context_len
                rope = self.rope(num_prefix)  # the class tokens are not rotated
            h = block(h, c, rope)
            if index + 1 == return_hidden_at:
                hidden = h[:, num_prefix:]
        out = self.unpatchify(self.final_layer(h[:, num_prefix:], c))
        return out if return_hidden_at is None else (out, hidden)

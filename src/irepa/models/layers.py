"""Building blocks shared by the transformer backbones (SiT, JiT).

Both backbones are stacks of :class:`AdaLNZeroBlock` conditioned on ``c = embed(t) + embed(y)`` and
closed by a :class:`FinalLayer`; they differ only in the norm (LayerNorm / RMSNorm), the MLP
(GELU :class:`Mlp` / :class:`SwiGLU`), qk-norm, dropout and whether attention gets 2-D RoPE.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

NormKind = Literal["layer", "rms"]
RopeTables = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (tokens, head_dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _at_least_float32(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


class Float32RMSNorm(nn.RMSNorm):
    """RMSNorm computed in float32 (autocast off) whatever the input dtype, as JiT's; same parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _at_least_float32(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.rms_norm(x.to(dtype), self.normalized_shape, self.weight.to(dtype), self.eps)


def make_norm(kind: NormKind, dim: int, fp32: bool = False) -> nn.Module:
    """``"layer"``: LayerNorm without affine (DiT / SiT); ``"rms"``: RMSNorm with a learned gain (JiT).

    ``fp32``: an RMSNorm that runs in float32 under autocast (:class:`Float32RMSNorm`).
    """
    if kind == "layer":
        return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
    if kind == "rms":
        return Float32RMSNorm(dim, eps=1e-6) if fp32 else nn.RMSNorm(dim, eps=1e-6)
    raise ValueError(f"unknown norm kind {kind!r}; valid: 'layer', 'rms'")


# --- positions ---------------------------------------------------------------------------------


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding ``(H*W, dim)``, as in MAE / DiT (height half first)."""
    if dim % 4 != 0:
        raise ValueError(f"position embedding dim must be divisible by 4, got {dim}")
    h, w = grid
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))

    def embed(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([out.sin(), out.cos()], dim=1)

    # DiT's grid puts the width coordinate first in its meshgrid; keep the same convention.
    return torch.cat([embed(gx), embed(gy)], dim=1).float()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """Map each channel pair ``(x[2i], x[2i+1])`` to ``(-x[2i+1], x[2i])`` (a quarter turn)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
    """Rotate every channel pair of ``x`` (..., tokens, head_dim) by its angle; computed in the tables' dtype."""
    cos, sin = rope
    return (x * cos + rotate_pairs(x) * sin).to(x.dtype)


class Rope2d(nn.Module):
    """2-D rotary position embedding of a token grid, EVA-style (as in JiT / LightningDiT).

    The first half of each head's channels rotates with the token's row, the second half with its
    column. Within a half, channel pair ``(2j, 2j+1)`` turns by ``position * theta^(-4j / head_dim)``.
    ``forward(num_prefix_tokens)`` returns the (cos, sin) tables for that many extra tokens placed
    before the grid (e.g. in-context class tokens); those get the identity rotation (cos 1, sin 0).
    """

    def __init__(self, head_dim: int, grid: tuple[int, int], theta: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs a head dim divisible by 4 (two axes, pairs of channels), got {head_dim}")
        quarter = head_dim // 4
        freqs = theta ** (-torch.arange(quarter, dtype=torch.float64) / quarter)  # theta^(-4j/head_dim)
        rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
        angles = torch.cat([rows.reshape(-1, 1) * freqs, cols.reshape(-1, 1) * freqs], dim=1)  # (H*W, head_dim/2)
        angles = angles.repeat_interleave(2, dim=1)  # both channels of a pair share the angle
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, num_prefix_tokens: int = 0) -> RopeTables:
        if not num_prefix_tokens:
            return self.cos, self.sin
        pad = (0, 0, num_prefix_tokens, 0)  # prepend rows
        return F.pad(self.cos, pad, value=1.0), F.pad(self.sin, pad, value=0.0)


# --- conditioning ------------------------------------------------------------------------------


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t (raw t in [0, 1], max period 1e4) followed by a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def frequencies(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = self.frequencies(t, self.frequency_dim)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


# --- transformer parts -------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (flash / memory-efficient).

    Optional per-head RMSNorm of q and k (applied before RoPE), RoPE tables passed per call, dropout
    on the attention weights (training only) and on the output projection.

    ``fp32``: as JiT's hand-written attention, ``q k^T`` and the softmax in float32 with autocast off (the
    weights then meet ``v`` in the autocast dtype) and the qk-norms in float32; no fused kernel.
    """

    def __init__(
        self, dim: int, num_heads: int, qk_norm: bool = False, attn_dropout: float = 0.0, proj_dropout: float = 0.0,
        fp32: bool = False,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dropout = attn_dropout
        self.fp32 = fp32
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = make_norm("rms", self.head_dim, fp32) if qk_norm else nn.Identity()
        self.k_norm = make_norm("rms", self.head_dim, fp32) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, x: torch.Tensor, rope: RopeTables | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        dropout = self.attn_dropout if self.training else 0.0
        if self.fp32:
            x = float32_logits_attention(q, k, v, dropout)
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, t, c)))


def float32_logits_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` with the logits and the softmax in float32 (autocast off), unfused."""
    dtype = _at_least_float32(q)
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits = (q.to(dtype) @ k.to(dtype).transpose(-2, -1)) * q.shape[-1] ** -0.5
        weights = logits.softmax(dim=-1)
    weights = F.dropout(weights, p=dropout) if dropout > 0 else weights
    return weights.to(v.dtype) @ v  # under autocast the autocast dtype, as JiT's product with the values


class Mlp(nn.Sequential):
    """GELU (tanh) MLP, as in DiT / SiT."""

    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class SwiGLU(nn.Module):
    """Gated MLP ``w3(silu(x W1) * (x W2))``; ``w12`` holds W1 and W2 side by side. Dropout on the gated hidden."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.drop = nn.Dropout(dropout)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.drop(F.silu(gate) * value))


class AdaLNZeroBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated (shift, scale) and residuals gated by ``c``.

    The modulation is zero-initialised by the models, so each block starts as the identity (adaLN-Zero).
    ``fp32``: float32 RMSNorms and attention logits under autocast (JiT); SiT keeps the default.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp: nn.Module,
        norm: NormKind = "layer",
        qk_norm: bool = False,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        fp32: bool = False,
    ):
        super().__init__()
        self.norm1 = make_norm(norm, dim, fp32)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, attn_dropout=attn_dropout, proj_dropout=proj_dropout,
                              fp32=fp32)
        self.norm2 = make_norm(norm, dim, fp32)
        self.mlp = mlp
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: RopeTables | None = None) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a), rope)
        x = x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    """Modulated norm and a linear map from each token to its patch of pixels (or latents)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int, norm: NormKind = "layer", fp32: bool = False):
        super().__init__()
        self.norm = make_norm(norm, dim, fp32)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def unpatchify(x: torch.Tensor, grid: tuple[int, int], patch_size: int, channels: int) -> torch.Tensor:
    """``(B, H*W, p*p*C)`` tokens in row-major grid order -> ``(B, C, H*p, W*p)`` image."""
    h, w = grid
    x = x.reshape(x.shape[0], h, w, patch_size, patch_size, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], channels, h * patch_size, w * patch_size)


def check_hidden_index(return_hidden_at: int | None, depth: int) -> None:
    if return_hidden_at is not None and not 1 <= return_hidden_at <= depth:
        raise ValueError(f"return_hidden_at must be in 1..{depth}, got {return_hidden_at}")


# --- initialisation (DiT's) --------------------------------------------------------------------


def xavier_init_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` inside ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def xavier_init_conv_as_linear(conv: nn.Conv2d) -> None:
    """Initialise a patchifying conv like the linear map it is (Xavier over the flattened kernel)."""
    nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def init_conditioning(t_embedder: TimestepEmbedder, y_embedder: nn.Embedding) -> None:
    """N(0, 0.02) for the label table and the two timestep-MLP weights."""
    nn.init.normal_(y_embedder.weight, std=0.02)
    nn.init.normal_(t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(t_embedder.mlp[2].weight, std=0.02)


def zero_init_adaln(blocks: Iterable[AdaLNZeroBlock], final_layer: FinalLayer) -> None:
    """Zero every modulation and the output map: blocks start as identities and the output as zero."""
    for block in blocks:
        nn.init.zeros_(block.adaLN_modulation[-1].weight)
        nn.init.zeros_(block.adaLN_modulation[-1].bias)
    for layer in (final_layer.adaLN_modulation[-1], final_layer.linear):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)

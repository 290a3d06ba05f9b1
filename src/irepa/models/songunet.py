"""Song et al.'s DDPM++ U-Net (as EDM re-implemented it), with MeanFlow's two time inputs, behind the backbone contract.

This is the convolutional network of the MeanFlow CIFAR-10 results (the MeanFlow authors' PyTorch
port trains it; ``irepa import --from meanflow`` reads their checkpoints). It reads top to bottom:

- **Embedding.** Each time input (``t``, and ``h = t - r`` for MeanFlow) becomes ``N`` sinusoidal
  features ``[sin(s w_i), cos(s w_i)]`` with ``w_i = 10000^(-i / (N/2 - 1))``, ``i = 0..N/2-1``
  (the endpoint-inclusive frequency ladder), ``s = time_scale * time``; the features of both are
  concatenated, a class embedding is added (zero at initialisation; a model imported from an
  unconditional release keeps it at zero) and an MLP ``Linear-SiLU-Linear-SiLU`` gives the vector
  ``emb`` every residual block reads.
- **Residual block.** ``h = conv(SiLU(GN(x)))`` (resampled first when the block moves between
  levels), ``h = SiLU(GN(h + A emb))``, ``h = conv(dropout(h))``, ``x' = (h + skip(x)) / sqrt 2`` where
  ``skip`` is the identity, or a resampled 1x1 convolution when the width or the resolution changes.
  With attention: ``x'' = (x' + proj(attn(GN(x')))) / sqrt 2``, one head over all positions.
- **Resampling.** A fixed separable FIR filter (``resample_filter``, normalised to unit gain): a
  depthwise stride-2 convolution down, a depthwise stride-2 transposed convolution (gain 4) up.
- **Levels.** ``len(channel_mult)`` levels of ``base_channels * mult`` channels; each but the first
  opens with a downsampling block, then ``layers_per_block`` blocks (attention at ``attention_levels``).
  Two middle blocks (the first with attention) at the lowest level. Going up, each level but the lowest
  opens with an upsampling block, then ``layers_per_block + 1`` blocks, each fed the concatenation
  with one skip (the stem's and every down block's outputs, last in first out); the last of a level
  has attention at ``attention_levels``. Output ``conv(SiLU(GN(x)))``.

Stages (for alignment): stage ``k <= L`` is the output of down level ``k - 1`` (its own resolution),
stage ``L + 1`` the output of the middle blocks; the stage's feature map ``(B, C, H, W)`` becomes
``(B, H*W, C)`` tokens, as for :mod:`irepa.models.unet`.

Time: irepa's ``t`` (0 data, 1 noise) enters as it is; the MeanFlow port uses the same convention and
scale (``time_scale = 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from irepa.errors import ConfigError

from .layers import check_hidden_index
from .stages import LevelStages, StagedBackbone, as_tokens


@dataclass
class SongUNetConfig(LevelStages):
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (2, 2, 2)
    layers_per_block: int = 4
    attention_levels: tuple[int, ...] = (1,)  # 0-indexed levels with self-attention (16 px at a 32 px input)
    noise_mult: int = 2  # sinusoidal features per time input: base_channels * noise_mult
    emb_mult: int = 4  # width of the embedding vector: base_channels * emb_mult
    resample_filter: tuple[int, ...] = (1, 3, 3, 1)
    dropout: float = 0.0
    input_size: int | tuple[int, int] = 32
    in_channels: int = 3
    num_classes: int = 1000  # the null class used for CFG is index num_classes
    interval_embedding: bool = False  # MeanFlow: a second time input h = t - r
    time_scale: float = 1.0
    align_depth: int = 2  # the stage whose tokens are aligned: 1..levels = down levels, levels + 1 = middle

    def validate(self) -> None:
        self.check_levels()
        if self.layers_per_block < 1:
            raise ConfigError(f"a SongUNet needs one block per level or more, got layers_per_block "
                              f"{self.layers_per_block}")
        if self.base_channels * self.noise_mult % 4:
            raise ConfigError("base_channels * noise_mult must be a multiple of 4 (sin and cos of >= 2 frequencies)")

def _groups(channels: int) -> int:
    """EDM's group count: 32 groups, fewer when a group would hold under 4 channels."""
    return min(32, channels // 4)


class Resample(nn.Module):
    """Stride-2 up- or downsampling of every channel with a fixed, unit-gain FIR filter."""

    def __init__(self, taps: tuple[int, ...], up: bool):
        super().__init__()
        f = torch.as_tensor(taps, dtype=torch.float32)
        self.register_buffer("kernel", (torch.outer(f, f) / f.sum() ** 2)[None, None], persistent=False)
        self.up = up
        self.pad = (len(taps) - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel.to(x.dtype).expand(x.shape[1], 1, -1, -1)
        if self.up:
            return F.conv_transpose2d(x, k * 4, stride=2, padding=self.pad, groups=x.shape[1])
        return F.conv2d(x, k, stride=2, padding=self.pad, groups=x.shape[1])


class ResBlock(nn.Module):
    """A residual block conditioned on ``emb`` (added before the second norm), optionally resampling and attending."""

    def __init__(self, cin: int, cout: int, emb_dim: int, resample: str | None = None, attention: bool = False,
                 taps: tuple[int, ...] = (1, 3, 3, 1), dropout: float = 0.0):
        super().__init__()
        self.resample = Resample(taps, up=resample == "up") if resample else None
        self.norm_in = nn.GroupNorm(_groups(cin), cin, eps=1e-6)
        self.conv_in = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, cout)
        self.norm_mid = nn.GroupNorm(_groups(cout), cout, eps=1e-6)
        self.dropout = dropout
        self.conv_out = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout or resample else None
        self.attention = attention
        if attention:
            self.attn_norm = nn.GroupNorm(_groups(cout), cout, eps=1e-6)
            self.attn_qkv = nn.Conv2d(cout, 3 * cout, 1)
            self.attn_out = nn.Conv2d(cout, cout, 1)

    def _resampled(self, x: torch.Tensor) -> torch.Tensor:
        return self.resample(x) if self.resample is not None else x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self._resampled(F.silu(self.norm_in(x))))
        h = F.silu(self.norm_mid(h + self.emb_proj(emb)[:, :, None, None].to(h.dtype)))
        h = self.conv_out(F.dropout(h, p=self.dropout, training=self.training))
        skip = self.skip(self._resampled(x)) if self.skip is not None else x
        x = (h + skip) * math.sqrt(0.5)
        if self.attention:
            b, c, hh, ww = x.shape
            q, k, v = self.attn_qkv(self.attn_norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # (B, T, C) each
            a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # one head
            x = (self.attn_out(a.transpose(1, 2).reshape(b, c, hh, ww)) + x) * math.sqrt(0.5)
        return x


class SongUNet(StagedBackbone, nn.Module):
    """DDPM++ U-Net: ``forward(x, t, y, return_hidden_at=None, r=None)`` like every irepa backbone."""

    display_name = "SongUNet"

    def __init__(self, config: SongUNetConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.num_classes = c.num_classes
        self.noise_channels = c.base_channels * c.noise_mult
        emb_in = self.noise_channels * (2 if c.interval_embedding else 1)
        emb_dim = c.base_channels * c.emb_mult
        self.class_embed = nn.Embedding(c.num_classes + 1, emb_in)
        self.embed_mlp = nn.Sequential(nn.Linear(emb_in, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU())

        block = dict(emb_dim=emb_dim, taps=c.resample_filter, dropout=c.dropout)
        widths = [c.base_channels * m for m in c.channel_mult]
        attention = set(c.attention_levels)
        self.stem = nn.Conv2d(c.in_channels, c.base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, width = [c.base_channels], c.base_channels
        for level, out in enumerate(widths):
            blocks = nn.ModuleList()
            if level > 0:
                blocks.append(ResBlock(width, width, resample="down", **block))
                skips.append(width)
            for _ in range(c.layers_per_block):
                blocks.append(ResBlock(width, out, attention=level in attention, **block))
                width = out
                skips.append(width)
            self.down.append(blocks)
        self.mid = nn.ModuleList([ResBlock(width, width, attention=True, **block), ResBlock(width, width, **block)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            if level < len(widths) - 1:
                blocks.append(ResBlock(width, width, resample="up", **block))
            for i in range(c.layers_per_block + 1):
                last = i == c.layers_per_block
                blocks.append(ResBlock(width + skips.pop(), widths[level], attention=last and level in attention,
                                       **block))
                width = widths[level]
            self.up.append(blocks)
        self.out_norm = nn.GroupNorm(_groups(width), width, eps=1e-6)
        self.out_conv = nn.Conv2d(width, c.in_channels, 3, padding=1)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """EDM's DDPM++ initialisation: Xavier-uniform weights, zero biases; the last convolution of every
        residual branch, attention output and network output scaled by 1e-5, the attention input by sqrt(0.2);
        the class embedding zero (the model starts as an unconditional one)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, ResBlock):
                    m.conv_out.weight.mul_(1e-5)
                    if m.attention:
                        m.attn_out.weight.mul_(1e-5)
                        m.attn_qkv.weight.mul_(math.sqrt(0.2))
            self.out_conv.weight.mul_(1e-5)
        nn.init.zeros_(self.class_embed.weight)

    # --- the contract -------------------------------------------------------------------------

    @property
    def blocks(self) -> nn.ModuleList:
        """The alignable stages in forward order (down levels, then the middle); not a registered child."""
        return nn.ModuleList([*self.down, self.mid])

    # --- forward --------------------------------------------------------------------------------

    def time_features(self, s: torch.Tensor) -> torch.Tensor:
        """``[sin(s w), cos(s w)]`` with the endpoint-inclusive ladder ``w_i = 10000^(-i / (N/2 - 1))``."""
        half = self.noise_channels // 2
        w = (1.0 / 10000.0) ** (torch.arange(half, dtype=torch.float32, device=s.device) / (half - 1))
        arg = (s.float() * self.config.time_scale)[:, None] * w[None]
        return torch.cat([arg.sin(), arg.cos()], dim=1)

    def embed(self, t: torch.Tensor, y: torch.Tensor, r: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.time_features(t)
        if self.config.interval_embedding:
            feats = torch.cat([feats, self.time_features(t - r if r is not None else torch.zeros_like(t))], dim=1)
        elif r is not None:
            raise ValueError("this SongUNet has no interval embedding; build it with interval_embedding=True "
                             "for MeanFlow")
        feats = feats + self.class_embed(y).to(feats.dtype)
        return self.embed_mlp(feats.to(self.embed_mlp[0].weight.dtype))

    def _down(self, x: torch.Tensor, emb: torch.Tensor, capture: int | None, stop: bool):
        """Stem, down levels and middle; returns (h, skips, captured stage features)."""
        h = self.stem(x)
        skips, captured = [h], None
        for stage, blocks in enumerate(self.down, start=1):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if stage == capture:
                captured = h
                if stop:
                    return h, skips, captured
        for block in self.mid:
            h = block(h, emb)
        if capture == self.config.depth:
            captured = h
        return h, skips, captured

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, return_hidden_at: int | None = None,
                r: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Network output for ``x`` at time ``t`` (and ``r`` for MeanFlow) and class ``y``; with
        ``return_hidden_at=k`` also stage ``k``'s tokens ``(B, H*W, C)``."""
        check_hidden_index(return_hidden_at, self.config.depth)
        emb = self.embed(t, y, r)
        h, skips, captured = self._down(x, emb, return_hidden_at, stop=False)
        for blocks in self.up:
            for block in blocks:
                if block.resample is None:
                    h = torch.cat([h, skips.pop()], dim=1)
                h = block(h, emb)
        out = self.out_conv(F.silu(self.out_norm(h)))
        return out if return_hidden_at is None else (out, as_tokens(captured))

    def hidden_at(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, depth: int,
                  r: torch.Tensor | None = None) -> torch.Tensor:
        """Stage ``depth``'s tokens alone; later blocks are not run."""
        check_hidden_index(depth, self.config.depth)
        return as_tokens(self._down(x, self.embed(t, y, r), depth, stop=True)[2])

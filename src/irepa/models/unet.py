"""A convolutional U-Net backbone: a diffusers ``UNet2DModel`` behind irepa's backbone contract.

The network is diffusers' own (ResNet levels with optional self-attention, a mid block, skip
connections, GroupNorm, SiLU); this module builds it, feeds it irepa's time and labels, and walks its
blocks so that the hidden state of a down or mid block can be handed to the alignment head.

- **Stages.** The alignable stages are the down blocks then the mid block, 1-indexed in the order the
  forward pass meets them: with ``L`` levels, stage ``k <= L`` is ``down.{k-1}`` and stage ``L + 1`` is
  ``mid``. A down block's hidden state is its features at its own resolution (before its downsampler),
  so level ``i`` gives an ``input / 2^i`` token grid; the mid block works at the lowest level's grid.
- **Tokens.** The hidden state ``(B, C, H, W)`` becomes ``(B, H*W, C)`` tokens, row-major: channels
  are the token width and the spatial grid is the token grid. Unlike a transformer's, grid and width
  depend on the stage, so the model is built for one stage (``align_depth``, filled in from
  ``align.depth`` by the trainer); ``grid`` and ``hidden_size`` describe that stage.
- **Time.** irepa's ``t`` (0 data, 1 noise) goes in as diffusers' timestep ``time_scale * t`` (its
  DDPM scale of 1000 steps, 0 = clean, the same direction), where its sinusoidal embedding is meant
  to work.
- **Labels.** The U-Net's own class embedding, with ``num_classes + 1`` rows: the last one is the
  null class that classifier-free guidance uses, as in SiT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from irepa.errors import ConfigError

from .layers import check_hidden_index
from .stages import LevelStages, StagedBackbone, as_tokens


@dataclass
class UNetConfig(LevelStages):
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)  # one level per entry: channels base * mult
    layers_per_block: int = 2  # ResNet blocks per down level (the up levels have one more)
    attention_levels: tuple[int, ...] = (2, 3)  # 0-indexed levels with self-attention (the mid block always has it)
    head_dim: int = 64
    norm_groups: int = 32
    dropout: float = 0.0
    input_size: int | tuple[int, int] = 32  # latent (or pixel) height/width
    in_channels: int = 4
    num_classes: int = 1000  # the null class used for CFG is index num_classes
    align_depth: int = 2  # the stage whose tokens are aligned: 1..levels = down.0.., levels + 1 = mid
    time_scale: float = 1000.0  # network timestep = time_scale * t

    def validate(self) -> None:
        self.check_levels()
        bad = [c for c in self.block_channels if c % self.norm_groups or c % self.head_dim]
        if bad:
            raise ConfigError(f"U-Net widths {bad} are not multiples of norm_groups ({self.norm_groups}) and "
                              f"head_dim ({self.head_dim})", fix="pick base_channels as a multiple of both")

class UNet(StagedBackbone, nn.Module):
    """diffusers ``UNet2DModel`` (class-conditional, positional time embedding) with the backbone contract.

    ``forward(x, t, y)`` returns a tensor with ``x``'s shape; ``forward(..., return_hidden_at=k)`` also
    returns stage ``k``'s tokens ``(B, H*W, C)``. ``self.unet`` is the diffusers module itself.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        from diffusers import UNet2DModel  # imported here: building the registry must not load diffusers

        config.validate()
        self.config = config
        self.num_classes = config.num_classes
        levels = len(config.channel_mult)
        attention = set(config.attention_levels)
        self.unet = UNet2DModel(
            sample_size=config.size,
            in_channels=config.in_channels,
            out_channels=config.in_channels,
            down_block_types=tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in range(levels)),
            up_block_types=tuple(
                "AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(range(levels))
            ),
            block_out_channels=config.block_channels,
            layers_per_block=config.layers_per_block,
            attention_head_dim=config.head_dim,
            norm_num_groups=config.norm_groups,
            dropout=config.dropout,
            time_embedding_type="positional",
            flip_sin_to_cos=True,
            freq_shift=0,
            num_class_embeds=config.num_classes + 1,
        )

    # --- the contract -------------------------------------------------------------------------

    @property
    def blocks(self) -> nn.ModuleList:
        """The alignable stages in forward order (down blocks, then the mid block); not a registered child."""
        return nn.ModuleList([*self.unet.down_blocks, self.unet.mid_block])

    # --- forward --------------------------------------------------------------------------------

    def embed(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Time plus class embedding ``(B, E)``: t is mapped to diffusers' timestep scale first."""
        unet = self.unet
        timesteps = t.float() * self.config.time_scale
        t_emb = unet.time_proj(timesteps).to(unet.time_embedding.linear_1.weight.dtype)
        emb = unet.time_embedding(t_emb)
        return emb + unet.class_embedding(y).to(emb.dtype)

    def _down(
        self, x: torch.Tensor, emb: torch.Tensor, capture: int | None, stop: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor | None]:
        """conv_in, the down blocks and the mid block; ``capture``: the stage whose features to keep
        (as ``(B, C, H, W)``); ``stop``: return right after it. Returns (h, skips, captured)."""
        unet = self.unet
        h = unet.conv_in(x)
        skips: tuple[torch.Tensor, ...] = (h,)
        captured = None
        for stage, block in enumerate(unet.down_blocks, start=1):
            h, res = block(hidden_states=h, temb=emb)
            skips += res
            if stage == capture:
                captured = res[-2] if block.downsamplers is not None else h  # the level's own resolution
                if stop:
                    return h, skips, captured
        h = unet.mid_block(h, emb)
        if capture == self.config.depth:
            captured = h
        return h, skips, captured

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, return_hidden_at: int | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Network output for ``x`` at time ``t`` and class ``y`` (``y == num_classes``: unconditional).

        With ``return_hidden_at=k`` (1-indexed stage) also returns that stage's tokens ``(B, H*W, C)``.
        """
        check_hidden_index(return_hidden_at, self.config.depth)
        unet = self.unet
        emb = self.embed(t, y)
        h, skips, captured = self._down(x, emb, return_hidden_at, stop=False)
        for block in unet.up_blocks:
            n = len(block.resnets)
            h = block(h, skips[-n:], emb)
            skips = skips[:-n]
        out = unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))
        return out if return_hidden_at is None else (out, as_tokens(captured))

    def hidden_at(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, depth: int) -> torch.Tensor:
        """Stage ``depth``'s tokens alone; the later blocks are not run (alignment-only passes)."""
        check_hidden_index(depth, self.config.depth)
        return as_tokens(self._down(x, self.embed(t, y), depth, stop=True)[2])


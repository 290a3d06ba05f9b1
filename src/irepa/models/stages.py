"""What every convolutional U-Net backbone shares: stages at levels of halving resolution, and their tokens.

A U-Net's alignable stages are its down levels, then its middle, counted from 1 in forward order. Level
``i`` works at ``input / 2^i`` with ``base_channels * channel_mult[i]`` channels; the middle at the
lowest level. A stage's feature map ``(B, C, H, W)`` is handed to the alignment head as ``(B, H*W, C)``
tokens, row-major. Unlike a transformer's, the grid and width depend on the stage, so a model is built
for one (``align_depth``).
"""

from __future__ import annotations

import torch

from irepa.errors import ConfigError

from .layers import check_hidden_index


class LevelStages:
    """Stage geometry for a dataclass config with ``input_size``, ``base_channels`` and ``channel_mult``."""

    input_size: int | tuple[int, int]
    base_channels: int
    channel_mult: tuple[int, ...]
    attention_levels: tuple[int, ...]

    def check_levels(self) -> None:
        """Refuse level settings no U-Net can have: no level, a non-positive width, an input size the
        levels cannot halve, attention at a level that does not exist."""
        levels = len(self.channel_mult)
        if levels < 1 or self.base_channels < 1 or min(self.channel_mult) < 1:
            raise ConfigError(f"a U-Net needs at least one level of positive width, got base_channels "
                              f"{self.base_channels} and channel_mult {self.channel_mult}")
        step = 2 ** (levels - 1)
        if any(s % step for s in self.size):
            raise ConfigError(f"input size {self.size} is not divisible by {step}, which {levels} U-Net levels need",
                              fix=f"use an input size that is a multiple of {step}, or fewer levels")
        if any(not 0 <= i < levels for i in self.attention_levels):
            raise ConfigError(f"attention_levels {self.attention_levels} name levels outside 0..{levels - 1}")

    @property
    def size(self) -> tuple[int, int]:
        return (self.input_size, self.input_size) if isinstance(self.input_size, int) else tuple(self.input_size)

    @property
    def block_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def depth(self) -> int:
        """Number of alignable stages: the down levels and the middle."""
        return len(self.channel_mult) + 1

    def stage_names(self) -> list[str]:
        return [f"down.{i}" for i in range(len(self.channel_mult))] + ["mid"]

    def token_grid(self, stage: int) -> tuple[int, int]:
        """``(H, W)`` of the tokens of ``stage`` (1-indexed)."""
        check_hidden_index(stage, self.depth)
        level = min(stage - 1, len(self.channel_mult) - 1)
        return self.size[0] >> level, self.size[1] >> level

    def token_width(self, stage: int) -> int:
        check_hidden_index(stage, self.depth)
        return self.block_channels[min(stage - 1, len(self.channel_mult) - 1)]


class StagedBackbone:
    """The backbone contract's geometry for a module whose ``config`` is a :class:`LevelStages` with ``align_depth``."""

    config: LevelStages
    display_name = "U-Net"  # how errors name the model

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid of the aligned stage (``config.align_depth``)."""
        return self.config.token_grid(self._aligned_stage())

    @property
    def hidden_size(self) -> int:
        """Token width (channels) of the aligned stage."""
        return self.config.token_width(self._aligned_stage())

    @property
    def stage_names(self) -> list[str]:
        return self.config.stage_names()

    def _aligned_stage(self) -> int:
        k, depth = self.config.align_depth, self.config.depth
        if not 1 <= k <= depth:
            raise ConfigError(f"align.depth={k} but this {self.display_name} has {depth} stages "
                              f"({', '.join(self.stage_names)})", fix=f"choose 1..{depth}")
        return k


def as_tokens(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` feature map -> ``(B, H*W, C)`` tokens in row-major grid order."""
    return features.flatten(2).transpose(1, 2)

"""The ``model`` section of a run config: which backbone, at what size."""

from __future__ import annotations

from dataclasses import dataclass

from irepa.errors import ConfigError


@dataclass
class ModelSection:
    name: str = "SiT-B/2"
    input_size: int = 32  # latent (or pixel) side length
    in_channels: int = 4
    num_classes: int = 1000
    qk_norm: bool = False  # SiT: RMSNorm on queries and keys (JiT always has it)
    # None: the named model's own value; set to build a custom-size model
    depth: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None
    bottleneck_dim: int | None = None  # JiT: width of the bottleneck patch embedding
    in_context_start: int | None = None  # JiT: block before which the class tokens are prepended
    in_context_len: int | None = None  # JiT: how many class tokens
    fp32_ops: bool | None = None  # JiT: float32 attention logits and RMSNorms under autocast (None: true, as JiT)
    # convolutional U-Nets (UNet-*, SongUNet-*)
    base_channels: int | None = None  # channels of the first level
    channel_mult: list[int] | None = None  # per level: channels = base_channels * mult
    layers_per_block: int | None = None  # residual blocks per down level
    attention_levels: list[int] | None = None  # 0-indexed levels with self-attention
    dropout: float | None = None

    def validate(self) -> None:
        """Refuse sizes no model can have, naming the ``model.`` field."""
        at_least = {"input_size": 1, "in_channels": 1, "num_classes": 1, "depth": 1, "hidden_size": 1,
                    "num_heads": 1, "patch_size": 1, "bottleneck_dim": 1, "in_context_start": 0, "in_context_len": 1,
                    "base_channels": 1, "layers_per_block": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigError(f"model.{name} must be >= {low}, got {value}",
                                  fix=f"set --model.{name} {low} or more")
        if self.channel_mult is not None and (not self.channel_mult or min(self.channel_mult) < 1):
            raise ConfigError(f"model.channel_mult needs one positive multiplier per level, got {self.channel_mult}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")

    def overrides(self, interval_embedding: bool = False) -> dict:
        """Keyword overrides for ``irepa.models.create_model`` (only what was set, and what the model has)."""
        out = {"input_size": self.input_size, "in_channels": self.in_channels, "num_classes": self.num_classes}
        if self.qk_norm:
            out["qk_norm"] = True
        if interval_embedding:
            out["interval_embedding"] = True
        optional = ("depth", "hidden_size", "num_heads", "patch_size", "bottleneck_dim", "in_context_start",
                    "in_context_len", "fp32_ops", "base_channels", "layers_per_block", "dropout")
        out.update({k: v for k in optional if (v := getattr(self, k)) is not None})
        out.update({k: tuple(v) for k in ("channel_mult", "attention_levels") if (v := getattr(self, k)) is not None})
        return out

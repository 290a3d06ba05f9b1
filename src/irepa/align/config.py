"""The ``align`` section of a run config: which encoders, which block, which projector and target norm."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from irepa.encoders.spec import POS_EMBED_MODES, RESIZE_MODES
from irepa.errors import ConfigError

from .normalize import NORMS
from .projectors import PROJECTORS


@dataclass
class EncoderEntry:
    name: str = "dinov2-vit-b"
    coeff: float | None = None  # None: the alignment section's coeff
    weights: str | None = None  # None: local cache / hub; a path; or "random" (tests)

    @classmethod
    def from_shorthand(cls, value: Any, where: str) -> Any:
        """``name`` or ``name:coeff`` (as on the command line) as a mapping of fields."""
        if not isinstance(value, str):
            return value
        name, _, coeff = value.partition(":")
        if ":" in value and not coeff.strip():
            raise ConfigError(f"{where} {value!r} has no coefficient after ':'", fix="write name or name:coefficient")
        return {"name": name, "coeff": coeff if coeff else None}


def _choice(key: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{key} must be one of {', '.join(valid)}, got {value!r}", fix=f"e.g. --{key} {valid[0]}")


@dataclass
class AlignSection:
    enabled: bool = True
    encoders: list[EncoderEntry] = field(default_factory=lambda: [EncoderEntry()])
    coeff: float = 0.5  # lambda in L = L_diffusion + lambda * L_align
    depth: int = 8  # hidden state after this block (1-indexed)
    projector: str = "mlp"
    kernel_size: int = 3
    projector_hidden_dim: int = 2048
    norm: str = "none"  # "none" (REPA) or "zscore" (iREPA)
    zscore_alpha: float = 0.6
    encoder_batch_size: int | None = None  # micro-batch the encoders to bound memory
    # Pixels fed to every encoder. None: the model's token grid times the encoder's patch size, so
    # the encoder's tokens match the grid exactly; otherwise its tokens are resampled to the grid.
    encoder_resolution: int | None = None
    # How images reach the encoder's input size: "reference" as the paper's code (bicubic / bilinear
    # without antialias; DINOv3 antialiased), or "antialias" (low-pass when shrinking, like PIL).
    encoder_resize: str = "reference"
    # Position embeddings resampled to the encoder grid: "reference" as the paper's code (timm's bicubic
    # with antialias; bilinear for PE), or "upstream" as the encoder's release (DINOv2 without antialias,
    # MoCo v3 sin-cos regenerated).
    encoder_pos_embed: str = "reference"
    # Encode the training set once and train on the stored tokens (needs data.flip false: the targets
    # of an un-augmented dataset never change). Stored under $IREPA_HOME/targets.
    cache_targets: bool = False

    def validate(self) -> None:
        """Refuse settings no alignment can use, naming the ``align.`` field."""
        for name, low in {"depth": 1, "kernel_size": 1, "projector_hidden_dim": 1, "encoder_batch_size": 1,
                          "encoder_resolution": 8}.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigError(f"align.{name} must be >= {low}, got {value}",
                                  fix=f"set --align.{name} {low} or more")
        if self.coeff < 0:
            raise ConfigError(f"align.coeff must be >= 0, got {self.coeff}", fix="e.g. --align.coeff 0.5")
        _choice("align.norm", self.norm, NORMS)
        _choice("align.projector", self.projector, PROJECTORS)
        _choice("align.encoder_resize", self.encoder_resize, RESIZE_MODES)
        _choice("align.encoder_pos_embed", self.encoder_pos_embed, POS_EMBED_MODES)
        names = [e.name for e in self.encoders]
        if len(set(names)) != len(names):
            raise ConfigError(f"align.encoders lists an encoder twice: {names}", fix="name each encoder once")
        for i, entry in enumerate(self.encoders):
            if entry.coeff is not None and entry.coeff < 0:
                raise ConfigError(f"align.encoders[{i}].coeff must be >= 0, got {entry.coeff}",
                                  fix="e.g. --align.encoders dinov2-vit-b:0.5")

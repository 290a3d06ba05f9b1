"""What the zoo knows about one encoder, as plain data.

An :class:`EncoderSpec` says which library builds the network, where its weights live, how images
are prepared for it and which tokens it returns. The loaders in this package read specs; they hold
no per-model code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from irepa.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)  # SigLIP, SigLIP2 and Perception Encoder map [0, 1] to [-1, 1]

SOURCES = ("timm", "transformers", "mocov3", "hog", "sift", "custom")
RESIZE_MODES = ("reference", "antialias")  # how images are brought to the encoder's input size
POS_EMBED_MODES = ("reference", "upstream")  # how absolute position embeddings are brought to a new grid


@dataclass(frozen=True)
class PosResample:
    """How an absolute position embedding is resampled to another token grid.

    The default is what REPA and iREPA call for every ViT they load:
    ``timm.layers.resample_abs_pos_embed(pos, new_size)``, i.e. bicubic with antialias.
    ``sincos=True`` regenerates a fixed sin-cos embedding for the grid instead (MoCo v3's own code).
    ``rope_rescale=False`` puts 2-D RoPE on integer grid positions (Meta's Perception Encoder code)
    instead of timm's EVA-style rescaling of the positions to the pretraining grid.
    """

    interpolation: str = "bicubic"
    antialias: bool = True
    sincos: bool = False
    rope_rescale: bool = True

    def __post_init__(self) -> None:
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"position embeddings are resampled bicubic or bilinear, not {self.interpolation!r}")


REPA_POS = PosResample()  # the reference code's rule (timm's defaults)


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry.

    Attributes:
        name: registry key, e.g. ``"dinov2-vit-b"``.
        family: group shown in listings (``"DINOv2"``, ``"SigLIP2"`` ...).
        source: builder: ``"timm"``, ``"transformers"``, ``"mocov3"`` (a timm ViT with fixed
            sin-cos positions), ``"hog"`` / ``"sift"`` (weight-free) or ``"custom"``.
        arch: the library's model name (timm architecture, transformers model type).
        embed_dim: token width ``D``.
        patch_size: pixels per output token (the network stride).
        native_resolution: ``(H, W)`` input size used when no grid or resolution is requested.
        num_prefix_tokens: CLS + register tokens that precede the patch tokens (stripped).
        mean, std: input normalisation after scaling to ``[0, 1]``.
        interpolation: resize mode used by ``preprocess`` (``"bicubic"`` or ``"bilinear"``).
        resize_antialias: the paper's code antialiases when it resizes images for this encoder (only
            DINOv3's torchvision ``Resize`` does; everything else calls ``F.interpolate`` without it).
        final_norm: apply the network's last norm to the patch tokens (see ``docs/encoders.md``
            for the entries that read the last block without it, as the paper's code did).
        pos_reference: how the paper's code resamples the absolute position embedding to a new grid.
        pos_upstream: how the encoder's own release does it, where that differs (``None``: the same).
        checkpoint_key: entry of a training checkpoint that holds the network to load (I-JEPA:
            ``"encoder"``, the context encoder the paper's code reads; ``"target_encoder"`` for the EMA one).
        hub_id, hub_file: Hugging Face repository and file of the weights.
        url: direct download address, for weights outside the hub.
        converter: name of a state-dict converter (``irepa.encoders.convert``) for original layouts.
        arch_kwargs: extra constructor arguments (timm kwargs, or the transformers config).
        options: builder options for weight-free encoders (HOG cells, bins ...).
        factory: for ``source="custom"``: ``factory(weights) -> nn.Module``.
        notes: one line shown by ``irepa encoders info``.
    """

    name: str
    family: str
    source: str
    arch: str = ""
    embed_dim: int = 0
    patch_size: int = 16
    native_resolution: tuple[int, int] = (224, 224)
    num_prefix_tokens: int = 0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    resize_antialias: bool = False
    final_norm: bool = True
    pos_reference: PosResample = REPA_POS
    pos_upstream: PosResample | None = None
    checkpoint_key: str | None = None
    hub_id: str | None = None
    hub_file: str | None = None
    url: str | None = None
    converter: str | None = None
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    factory: Callable[..., Any] | None = field(default=None, compare=False)
    notes: str = ""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"encoder {self.name!r}: source must be one of {SOURCES}, got {self.source!r}")
        if self.embed_dim <= 0 or self.patch_size <= 0:
            raise ValueError(f"encoder {self.name!r}: embed_dim and patch_size must be positive")
        if self.interpolation not in ("bicubic", "bilinear", "nearest", "area"):
            raise ValueError(f"encoder {self.name!r}: unknown interpolation {self.interpolation!r}")
        res = self.native_resolution
        if isinstance(res, int):
            object.__setattr__(self, "native_resolution", (res, res))
        if self.source == "custom" and self.factory is None:
            raise ValueError(f"encoder {self.name!r}: a custom encoder needs a factory")

    def position_rule(self, mode: str = "reference") -> PosResample:
        """The position-embedding rule for ``mode`` (``"reference"`` or ``"upstream"``)."""
        if mode not in POS_EMBED_MODES:
            raise ConfigError(f"encoder position-embedding mode must be one of {', '.join(POS_EMBED_MODES)}, "
                              f"got {mode!r}")
        return self.pos_upstream if mode == "upstream" and self.pos_upstream is not None else self.pos_reference

    def resize_antialias_for(self, mode: str = "reference") -> bool:
        """Whether ``preprocess`` antialiases under resize ``mode`` (``"reference"`` or ``"antialias"``)."""
        if mode not in RESIZE_MODES:
            raise ConfigError(f"encoder resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
        return True if mode == "antialias" else self.resize_antialias

    @property
    def needs_weights(self) -> bool:
        """False for weight-free targets (HOG, SIFT)."""
        return self.source not in ("hog", "sift")

    @property
    def weights_source(self) -> str:
        """Human-readable origin of the default weights."""
        if self.hub_id:
            return f"hf://{self.hub_id}/{self.hub_file or 'model.safetensors'}"
        if self.url:
            return self.url
        return "-"

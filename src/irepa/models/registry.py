"""Model registry, in the spirit of timm: ``create_model("SiT-XL/2", **overrides)``, ``create_model("JiT-B/16")``,
``create_model("UNet-B")``, ``create_model("SongUNet-B")``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, replace

from torch import nn

from .jit import JiT, JiTConfig
from .sit import SiT, SiTConfig
from .songunet import SongUNet, SongUNetConfig
from .unet import UNet, UNetConfig

_SIZES = {  # (depth, width, heads), as DiT / SiT
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}

_JIT_SIZES = {  # (depth, width, heads, bottleneck, in-context start), as JiT
    "B": (12, 768, 12, 128, 4),
    "L": (24, 1024, 16, 128, 8),
    "H": (32, 1280, 16, 256, 10),
}

_UNET_SIZES = {"S": 64, "B": 128, "L": 192}  # base channels; levels x1, x2, x3, x4 with attention on the last two

# DDPM++ (EDM's SongUNet) as MeanFlow's CIFAR-10 model: 3 levels of base x (2, 2, 2), 4 blocks each, attention at 16 px
_SONG_UNET_SIZES = {"S": 64, "B": 128}

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], object]] = {}


def register_model(name: str, builder: Callable[..., nn.Module], config: object) -> None:
    """Register ``builder(config)`` under ``name``; ``config`` is a dataclass of defaults."""
    _REGISTRY[name] = (builder, config)


for _size, (_depth, _width, _heads) in _SIZES.items():
    for _patch in (1, 2, 4, 8):
        register_model(f"SiT-{_size}/{_patch}", SiT, SiTConfig(_depth, _width, _heads, _patch))

for _size, (_depth, _width, _heads, _bottleneck, _start) in _JIT_SIZES.items():
    for _patch in (16, 32):
        register_model(
            f"JiT-{_size}/{_patch}",
            JiT,
            JiTConfig(_depth, _width, _heads, _patch, bottleneck_dim=_bottleneck, in_context_start=_start),
        )

for _size, _base in _UNET_SIZES.items():
    register_model(f"UNet-{_size}", UNet, UNetConfig(base_channels=_base))

for _size, _base in _SONG_UNET_SIZES.items():
    register_model(f"SongUNet-{_size}", SongUNet, SongUNetConfig(base_channels=_base))


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_config(name: str, **overrides) -> object:
    """The default config of ``name`` with ``overrides`` applied (unknown fields are an error)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
    config = _REGISTRY[name][1]
    valid = {f.name for f in fields(config)}
    unknown = set(overrides) - valid
    if unknown:
        raise ValueError(f"unknown {name} option(s) {sorted(unknown)}; valid: {sorted(valid)}")
    return replace(config, **overrides)


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model, e.g. ``create_model("SiT-B/2", input_size=32, num_classes=1000)``."""
    config = model_config(name, **overrides)
    return _REGISTRY[name][0](config)

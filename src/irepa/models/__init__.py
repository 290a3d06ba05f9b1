"""Backbones: SiT (latent or pixel, velocity) and JiT (pixel, clean image) behind a timm-style registry."""

from .jit import JiT, JiTConfig
from .registry import create_model, list_models, model_config, register_model
from .sit import SiT, SiTConfig

__all__ = ["create_model", "list_models", "model_config", "register_model", "JiT", "JiTConfig", "SiT", "SiTConfig"]

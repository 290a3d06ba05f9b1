"""Backbones: SiT (latent or pixel) behind a timm-style registry."""

from .registry import create_model, list_models, model_config, register_model
from .sit import SiT, SiTConfig

__all__ = ["create_model", "list_models", "model_config", "register_model", "SiT", "SiTConfig"]

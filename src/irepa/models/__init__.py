"""Backbones: SiT (latent or pixel, velocity), JiT (pixel, clean image) and a diffusers U-Net behind a timm-style
registry."""

from .jit import JiT, JiTConfig
from .registry import create_model, list_models, model_config, register_model
from .sit import SiT, SiTConfig
from .unet import UNet, UNetConfig

__all__ = ["create_model", "list_models", "model_config", "register_model", "JiT", "JiTConfig", "SiT", "SiTConfig",
           "UNet", "UNetConfig"]

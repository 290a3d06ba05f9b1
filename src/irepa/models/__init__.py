"""Backbones: SiT (latent or pixel, velocity), JiT (pixel, clean image), a diffusers U-Net and the DDPM++
U-Net of MeanFlow's CIFAR-10 model, behind a timm-style registry."""

from .jit import JiT, JiTConfig
from .registry import create_model, list_models, model_config, register_model
from .sit import SiT, SiTConfig
from .songunet import SongUNet, SongUNetConfig
from .unet import UNet, UNetConfig

__all__ = ["create_model", "list_models", "model_config", "register_model", "JiT", "JiTConfig", "SiT", "SiTConfig",
           "SongUNet", "SongUNetConfig", "UNet", "UNetConfig"]

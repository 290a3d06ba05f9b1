"""The ``end_to_end`` section of a run config (REPA-E): how the trainable VAE codec is tuned with the model."""

from __future__ import annotations

from dataclasses import dataclass

from irepa.errors import ConfigError


@dataclass
class EndToEndConfig:
    """The ``end_to_end`` section of a run config (REPA-E); the defaults are the reference's."""

    enabled: bool = False
    vae: str = "stabilityai/sd-vae-ft-mse"  # AutoencoderKL folder or hub id to start from; "random": small, untrained
    lr: float = 1e-4  # VAE AdamW; betas, eps, weight decay and gradient clipping are train.*
    disc_lr: float = 1e-4  # discriminator AdamW
    align_coeff: float = 1.5  # weight of the (unweighted, encoder-averaged) alignment loss in the VAE loss
    l1_weight: float = 1.0
    perceptual_weight: float = 1.0  # LPIPS; 0 skips it
    kl_weight: float = 1e-6
    gan_weight: float = 0.1  # hinge-GAN generator term
    disc_start: int = 0  # optimizer step from which the GAN terms and the discriminator update run
    lecam_weight: float = 0.0
    lecam_decay: float = 0.999
    disc_layers: int = 3
    disc_channels: int = 64
    disc_weights: str | None = None  # initial discriminator: a file or owner/repo:file; None = random init
    perceptual_weights: str | None = None  # LPIPS's VGG16: None = torchvision cache / hub; a file; "random"
    bn_momentum: float = 0.1  # latent batch-norm
    bn_eps: float = 1e-4
    stats_images: int = 2048  # images that estimate the initial latent statistics (when the VAE carries none)

    def validate(self) -> None:
        if self.lr <= 0 or self.disc_lr <= 0:
            raise ConfigError("end_to_end.lr and end_to_end.disc_lr must be > 0", fix="e.g. --end_to_end.lr 1e-4")
        weights = ("align_coeff", "l1_weight", "perceptual_weight", "kl_weight", "gan_weight", "lecam_weight")
        for name in weights:
            if getattr(self, name) < 0:
                raise ConfigError(f"end_to_end.{name} must be >= 0, got {getattr(self, name)}",
                                  fix=f"set --end_to_end.{name} 0 or more")
        if not 0.0 <= self.bn_momentum <= 1.0 or self.bn_eps <= 0:
            raise ConfigError("end_to_end.bn_momentum must be in [0, 1] and end_to_end.bn_eps > 0",
                              fix="e.g. --end_to_end.bn_momentum 0.1 --end_to_end.bn_eps 1e-4")
        for name, low in {"disc_start": 0, "disc_layers": 1, "disc_channels": 1, "stats_images": 1}.items():
            if getattr(self, name) < low:
                raise ConfigError(f"end_to_end.{name} must be >= {low}, got {getattr(self, name)}",
                                  fix=f"set --end_to_end.{name} {low} or more")
        if not 0.0 <= self.lecam_decay <= 1.0:
            raise ConfigError(f"end_to_end.lecam_decay must be in [0, 1], got {self.lecam_decay}",
                              fix="e.g. --end_to_end.lecam_decay 0.999")

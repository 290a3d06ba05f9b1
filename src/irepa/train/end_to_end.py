"""REPA-E: the VAE trained end to end with the diffusion model, through the alignment loss.

One training step of an end-to-end run (Leng et al., 2025), as the trainer runs it:

1. the encoder targets of the batch (the trainer, as for REPA);
2. :meth:`EndToEndStep.step`: the VAE autoencodes the images (posterior, a sample ``z``, its
   reconstruction) and the step's t, noise and labels are drawn; then

   * **VAE update**, with the SiT frozen and in eval mode: ``l1 + LPIPS + kl_weight * KL +
     gan_weight * (-D(recon)) + align_coeff * alignment loss``, the last one computed on the SiT's
     hidden state for ``z`` normalised with the *running* batch-norm statistics, noised with the
     step's t and noise, and back-propagated through the frozen SiT into the VAE;
   * **discriminator update**: hinge loss on the images and the detached reconstructions
     (+ optional LeCam);
   * **the SiT's input**: ``z`` detached and normalised with its own batch statistics, which moves
     the running statistics (and their EMA, kept with the model EMA's decay);

3. the SiT update on that input with the same t and noise (the trainer: ``objective.loss(..., draw=)``):
   diffusion loss + lambda * alignment loss. ``z`` is detached, so the diffusion loss never reaches
   the VAE.

The VAE and the latent statistics live in the codec (:class:`irepa.codecs.TrainableVAECodec`);
this module holds what only training needs: the losses, the discriminator and two optimizers.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from irepa.codecs import TrainableVAECodec, unit_images
from irepa.codecs.config import EndToEndConfig
from irepa.codecs.trainable import Autoencoded
from irepa.errors import CheckpointError, ConfigError

from .autoencoder_losses import LeCam, PatchDiscriminator, PerceptualLoss, generator_loss, hinge_discriminator_loss
from .ema import ema_decay, update_average

log = logging.getLogger(__name__)


def check_run(cfg, codec: TrainableVAECodec) -> None:
    """Refuse run settings an end-to-end step cannot honour with this codec, naming the fix (the settings
    alone are checked when the config is loaded)."""
    e = cfg.end_to_end
    smallest = 3 * 2**e.disc_layers  # 2^layers halvings, then two 4x4 stride-1 convs each lose a pixel
    if cfg.data.resolution < smallest:
        raise ConfigError(f"a PatchGAN of end_to_end.disc_layers {e.disc_layers} needs images of at least "
                          f"{smallest} px (data.resolution is {cfg.data.resolution}); lower end_to_end.disc_layers")
    side = cfg.data.resolution // codec.factor
    if cfg.model.in_channels != codec.channels or cfg.model.input_size != side or cfg.data.resolution % codec.factor:
        latent = f"{cfg.data.resolution / codec.factor:g}"
        raise ConfigError(
            f"the VAE gives {codec.channels} x {latent} x {latent} latents for data.resolution "
            f"{cfg.data.resolution} (f{codec.factor}), but the model expects {cfg.model.in_channels} x "
            f"{cfg.model.input_size} x {cfg.model.input_size}; set model.in_channels {codec.channels} and "
            f"model.input_size {side}"
        )


@contextlib.contextmanager
def frozen(module: nn.Module, eval_mode: bool) -> Iterator[None]:
    """No gradients into ``module``'s parameters (and eval mode if asked) inside the block; restored after."""
    flags = [p.requires_grad for p in module.parameters()]
    was_training = module.training
    module.requires_grad_(False)
    if eval_mode:
        module.eval()
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
        module.train(was_training)


class _Autoencode(nn.Module):
    """The codec's autoencoding as a module's forward, so DDP all-reduces the VAE's gradients."""

    def __init__(self, codec: TrainableVAECodec):
        super().__init__()
        self.codec = codec

    def forward(self, images: torch.Tensor, generator: torch.Generator | None):
        out = self.codec.autoencode(images, generator)
        return out.mean, out.logvar, out.z, out.recon


class _Discriminate(nn.Module):
    """Real and fake images through the discriminator as two calls (batch-norm sees each batch alone)."""

    def __init__(self, discriminator: PatchDiscriminator):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, real: torch.Tensor, fake: torch.Tensor):
        return self.discriminator(real), self.discriminator(fake)


class EndToEndStep:
    """The VAE and discriminator updates of a REPA-E step, and the SiT's input; see the module docstring.

    ``model`` is the unwrapped :class:`irepa.train.aligned_model.AlignedModel` (the alignment pass needs no
    gradient synchronisation: the SiT is frozen in it). The latent statistics come from the VAE's
    folder or are estimated on ``dataset``, unless ``estimate_statistics`` is false (a run about to
    be restored from a checkpoint, which carries them).
    """

    def __init__(self, cfg, codec: TrainableVAECodec, model: nn.Module, objective, accelerator,
                 dataset=None, estimate_statistics: bool = True):
        e: EndToEndConfig = cfg.end_to_end
        e.validate()
        check_run(cfg, codec)
        self.cfg, self.codec, self.model, self.objective, self.accelerator = e, codec, model, objective, accelerator
        self.device = accelerator.device
        t = cfg.train
        self.grad_clip = t.grad_clip if t.grad_clip > 0 else math.inf
        self.ema_decay, self.ema_warmup = t.ema_decay, t.ema_warmup

        self.perceptual = PerceptualLoss(e.perceptual_weights).to(self.device) if e.perceptual_weight > 0 else None
        self.discriminator = PatchDiscriminator(width=e.disc_channels, layers=e.disc_layers)
        if e.disc_weights:
            self.discriminator.load_weights(e.disc_weights)
        self.discriminator.to(self.device)
        self.lecam = LeCam(e.lecam_decay).to(self.device)
        adam = {"betas": tuple(t.betas), "weight_decay": t.weight_decay, "eps": t.adam_eps}
        self.vae_optimizer = torch.optim.AdamW(codec.vae.parameters(), lr=e.lr, **adam)
        self.disc_optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=e.disc_lr, **adam)

        if estimate_statistics and not codec.statistics_set:
            if dataset is None:
                raise ConfigError("the VAE carries no latent statistics and no dataset was given to estimate them")
            from irepa.codecs.trainable import estimate_latent_statistics

            mean, std = estimate_latent_statistics(codec, dataset, e.stats_images, device=self.device)
            codec.set_statistics(mean, std)
            log.info("latent statistics from %d images: mean %s, std %s", min(e.stats_images, len(dataset)),
                     [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()])

        self.autoencoder: nn.Module = _Autoencode(codec)
        self.discriminate: nn.Module = _Discriminate(self.discriminator)
        if accelerator.num_processes > 1:  # batch statistics over all processes, gradients all-reduced
            codec.latent_norm = nn.SyncBatchNorm.convert_sync_batchnorm(codec.latent_norm)
            self.autoencoder, self.discriminate = accelerator.prepare(self.autoencoder, self.discriminate)

    # ------------------------------------------------------------------ one step

    def step(self, batch: dict, labels: torch.Tensor, targets: dict[str, torch.Tensor], generator, step: int):
        """VAE update, discriminator update, then ``(x0, draw, scalars)`` for the SiT update of optimizer step ``step``.

        ``x0`` is the SiT's input (detached, batch-normalised latents) and ``draw`` the t, noise and
        labels to train it with; ``scalars`` are float64 device tensors for the log.
        """
        images = unit_images(batch["image"], self.device) * 2 - 1
        with self.accelerator.autocast():
            mean, logvar, z, recon = self.autoencoder(images, generator)
        out = Autoencoded(mean, logvar, z, recon)
        draw = self.objective.draw(z.detach().float(), labels, generator)
        gan_on = step >= self.cfg.disc_start and self.cfg.gan_weight > 0
        scalars = self.update_vae(images, out, labels, targets, draw, gan_on)
        if step >= self.cfg.disc_start:
            scalars.update(self.update_discriminator(images, out.recon))
        x0 = self.sit_input(out.z, step)
        return x0, draw, {k: v.detach().double().reshape(()) for k, v in scalars.items()}

    def vae_losses(self, images, out, labels, targets, draw, gan_on: bool = True) -> dict[str, torch.Tensor]:
        """The VAE's loss terms (``vae/loss`` is their weighted sum); the SiT must be frozen by the caller."""
        e = self.cfg
        with self.accelerator.autocast():
            latents = self.codec.normalize(out.z.float())  # running statistics: the VAE cannot move them
            xt = self.objective.path.sample_xt(latents, draw.noise, draw.t)
            align = self.model.align_only(xt, draw.t, labels, targets)  # labels without dropout (eval mode)
        terms = {"vae/align": sum(align.parts.values()) / len(align.parts)}
        recon = out.recon.float()
        terms["vae/l1"] = (images.float() - recon).abs().mean()
        if self.perceptual is not None:
            terms["vae/lpips"] = self.perceptual((images + 1) / 2, (recon + 1) / 2).mean()
        terms["vae/kl"] = out.kl()
        if gan_on:
            terms["vae/gan"] = generator_loss(self.discriminator(recon))
        weights = {"vae/align": e.align_coeff, "vae/l1": e.l1_weight, "vae/lpips": e.perceptual_weight,
                   "vae/kl": e.kl_weight, "vae/gan": e.gan_weight}
        terms["vae/loss"] = sum(weights[k] * v for k, v in terms.items())
        return terms

    def update_vae(self, images, out, labels, targets, draw, gan_on: bool = True) -> dict[str, torch.Tensor]:
        """One VAE optimizer step, the SiT frozen and in eval mode, the discriminator frozen."""
        with frozen(self.model, eval_mode=True), frozen(self.discriminator, eval_mode=False):
            terms = self.vae_losses(images, out, labels, targets, draw, gan_on)
            self.vae_optimizer.zero_grad(set_to_none=True)
            terms["vae/loss"].backward()
        terms["vae/grad_norm"] = torch.nn.utils.clip_grad_norm_(self.codec.vae.parameters(), self.grad_clip)
        self.vae_optimizer.step()
        self.vae_optimizer.zero_grad(set_to_none=True)
        return terms

    def update_discriminator(self, images: torch.Tensor, recon: torch.Tensor) -> dict[str, torch.Tensor]:
        """One discriminator optimizer step: hinge loss (+ LeCam) on images and detached reconstructions."""
        logits_real, logits_fake = self.discriminate(images.float(), recon.detach().float())
        terms = {"disc/hinge": hinge_discriminator_loss(logits_real, logits_fake)}
        loss = terms["disc/hinge"]
        if self.cfg.lecam_weight > 0:
            terms["disc/lecam"] = self.lecam(logits_real, logits_fake)
            loss = loss + self.cfg.lecam_weight * terms["disc/lecam"]
        self.disc_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        terms["disc/grad_norm"] = torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), self.grad_clip)
        self.disc_optimizer.step()
        self.disc_optimizer.zero_grad(set_to_none=True)
        terms.update({"disc/loss": loss, "disc/logits_real": logits_real.float().mean(),
                      "disc/logits_fake": logits_fake.float().mean()})
        return terms

    @torch.no_grad()
    def sit_input(self, z: torch.Tensor, step: int) -> torch.Tensor:
        """``z`` detached and batch-normalised; the running statistics and their EMA move (after step ``step + 1``)."""
        x0 = self.codec.normalize_batch(z.detach().float())
        update_average(self.codec.latent_norm_ema, self.codec.latent_norm,
                       ema_decay(self.ema_decay, self.ema_warmup, step + 1))
        return x0

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Training-only state: the discriminator, LeCam's averages and both optimizers (the VAE is the codec's)."""
        return {
            "discriminator": self.discriminator.state_dict(),
            "lecam": self.lecam.state_dict(),
            "vae_optimizer": self.vae_optimizer.state_dict(),
            "disc_optimizer": self.disc_optimizer.state_dict(),
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Resume from a whole checkpoint: the codec's VAE and statistics, then :meth:`state_dict`'s entries."""
        state = ckpt.get("end_to_end")
        codec_state = ckpt.get("codec") or {}
        if state is None or codec_state.get("kind") != TrainableVAECodec.kind:
            raise CheckpointError(f"{ckpt.get('path', 'the checkpoint')} holds no end-to-end state (VAE, "
                                  "discriminator, optimizers); it was not written by an end-to-end run")
        self.codec.load_checkpoint_state(codec_state)
        self.discriminator.load_state_dict(state["discriminator"])
        self.lecam.load_state_dict(state["lecam"])
        self.vae_optimizer.load_state_dict(state["vae_optimizer"])
        self.disc_optimizer.load_state_dict(state["disc_optimizer"])

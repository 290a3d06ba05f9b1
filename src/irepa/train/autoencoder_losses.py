"""What a VAE is trained with end to end: LPIPS, a PatchGAN discriminator, its hinge loss and LeCam.

* :class:`PerceptualLoss` wraps the ``lpips`` package (the metric's reference implementation; its
  calibrated linear heads ship inside the package) and takes **[0, 1]** images. The VGG16 trunk
  comes from a local file, torchvision's cache or the hub (``timm/vgg16.tv_in1k``, the same
  ImageNet weights), see :func:`vgg16_weights`.
* :class:`PatchDiscriminator` is the pix2pix / taming PatchGAN (its ``main.*`` keys load the
  discriminator checkpoints published with REPA-E), fed ``[-1, 1]`` images.
* :func:`hinge_discriminator_loss` and :class:`LeCam` are the discriminator's objective.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from irepa.errors import WeightsError

log = logging.getLogger(__name__)

VGG_HUB_ID = "timm/vgg16.tv_in1k"
VGG_HUB_FILE = "model.safetensors"
VGG_TORCHVISION_FILE = "vgg16-397923af.pth"
RANDOM = "random"


# --------------------------------------------------------------------------------------- weights


def hub_file(repo: str, filename: str, what: str, fix: str) -> Path:
    """``filename`` of hub repository ``repo``: from the local hub cache, else downloaded when online.

    Offline (or with the hub unreachable) and nothing cached, raises :class:`WeightsError` naming
    what to download, and ``fix`` (the local alternative).
    """
    from huggingface_hub import try_to_load_from_cache

    from irepa.utils.io import hub_reachable, offline_reason

    cached = try_to_load_from_cache(repo, filename)
    if isinstance(cached, str):
        return Path(cached)
    why = offline_reason() or (None if hub_reachable() else "the hub is unreachable")
    if why:
        raise WeightsError(
            f"{what}: `{filename}` of the hub repository `{repo}` is not in the local hub cache and {why}. "
            f"Fix: on a connected machine run `huggingface-cli download {repo} {filename}` and copy the hub "
            f"cache here, or {fix}"
        )
    from huggingface_hub import hf_hub_download

    log.info("downloading %s from %s", filename, repo)
    return Path(hf_hub_download(repo, filename))


def resolve_weights_file(spec: str, what: str, fix: str) -> Path:
    """A weights file named by ``spec``: a local path, or ``hub-repo:file`` on the hub."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    repo, sep, filename = spec.partition(":")
    if sep and "/" in repo and filename:
        return hub_file(repo, filename, what, fix)
    raise WeightsError(f"{what}: {spec} is neither a file nor `owner/repo:file` on the hub. Fix: {fix}")


def vgg16_weights(spec: str | None) -> Path:
    """The ImageNet VGG16 weights LPIPS's trunk needs, as a local file.

    ``spec``: a file (torchvision's or timm's VGG16 state dict), ``owner/repo:file`` on the hub, or
    ``None``: torchvision's download cache if it holds ``vgg16-397923af.pth``, else ``timm/vgg16.tv_in1k``
    from the hub (local cache first).
    """
    fix = ("set end_to_end.perceptual_weights to a local VGG16 state dict (torchvision's "
           f"{VGG_TORCHVISION_FILE} or timm's {VGG_HUB_FILE}), or to 'random' for an untrained trunk (tests only)")
    if spec is not None:
        return resolve_weights_file(spec, "LPIPS VGG16 trunk", fix)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG_TORCHVISION_FILE
    if cached.is_file():
        return cached
    return hub_file(VGG_HUB_ID, VGG_HUB_FILE, "LPIPS VGG16 trunk", fix)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from irepa.encoders.weights import read_state_dict

    return read_state_dict(path)


# --------------------------------------------------------------------------------------- LPIPS


class PerceptualLoss(nn.Module):
    """LPIPS (VGG16 trunk, calibrated linear heads) between two batches of **[0, 1]** images.

    ``forward(a, b)`` returns the per-image distance ``(B,)``. The module is frozen and stays in
    eval mode (its heads have dropout), whatever ``.train()`` is called on a parent.
    """

    def __init__(self, vgg_weights: str | None = None):
        super().__init__()
        try:
            import lpips
        except ImportError as err:  # a declared dependency; a broken environment gets a clear line
            raise ImportError("the perceptual loss needs the `lpips` package: pip install lpips") from err
        trunk = None if vgg_weights == RANDOM else read_weights(vgg16_weights(vgg_weights))
        # lpips builds a whole torchvision VGG16 (classifier included) to keep its conv stack: build the
        # structure on the meta device, then give the trunk and the heads real tensors.
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore", UserWarning)  # lpips passes torchvision the pre-0.13 `pretrained=`
            self.lpips = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
        self.lpips.net.to_empty(device="cpu")
        self.lpips.lins.to_empty(device="cpu")
        heads = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"  # the calibrated heads ship inside
        result = self.lpips.load_state_dict(torch.load(heads, map_location="cpu", weights_only=True), strict=False)
        lacking = [k for k in result.missing_keys if k.startswith("lin") and not k.startswith("lins.")]  # lins: aliases
        if lacking:
            raise WeightsError(f"{heads} lacks the LPIPS heads {lacking}; reinstall the lpips package")
        if trunk is None:
            self._random_trunk()
        else:
            self._load_trunk(trunk)
        self.requires_grad_(False)
        self.eval()

    def _random_trunk(self) -> None:
        """An untrained trunk from a fixed seed, so that a resumed run sees the same network."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for module in self.lpips.net.modules():
                if isinstance(module, nn.Conv2d):
                    module.reset_parameters()

    def _load_trunk(self, state: dict[str, torch.Tensor]) -> None:
        """Copy ``features.<i>.*`` of a VGG16 state dict into lpips's slices (which keep torchvision's indices)."""
        target = {}
        for slice_name, block in self.lpips.net.named_children():
            for index, _ in block.named_children():
                target[index] = slice_name
        loaded = 0
        own = self.lpips.net.state_dict()
        for key, value in state.items():
            parts = key.split(".")
            if len(parts) != 3 or parts[0] != "features" or parts[1] not in target:
                continue
            name = f"{target[parts[1]]}.{parts[1]}.{parts[2]}"
            if name in own:
                own[name] = value.float()
                loaded += 1
        expected = sum(1 for k in own if k.split(".")[-1] in ("weight", "bias"))
        if loaded != expected:
            raise WeightsError(f"the VGG16 weights fit {loaded} of LPIPS's {expected} trunk tensors; expected a "
                               "torchvision or timm VGG16 state dict (keys features.<i>.weight / .bias)")
        self.lpips.net.load_state_dict(own)

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=a.device.type, enabled=False):
            return self.lpips(a.float(), b.float(), normalize=True).flatten()


# --------------------------------------------------------------------------------------- discriminator


class PatchDiscriminator(nn.Module):
    """PatchGAN: strided 4x4 convs with batch-norm and LeakyReLU(0.2), one logit per patch.

    ``layers`` strided stages (channels ``width * min(2^i, 8)``), one stride-1 stage, a 1-channel
    head. Initialised as pix2pix (conv weights N(0, 0.02), batch-norm scales N(1, 0.02)).
    """

    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1
            seq += [
                nn.Conv2d(width * prev, width * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width * mult),
                nn.LeakyReLU(0.2, True),
            ]
        seq.append(nn.Conv2d(width * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*seq)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` images -> patch logits ``(B, 1, h, w)``."""
        return self.main(images)

    def load_weights(self, spec: str) -> None:
        """Initial weights from a file or ``owner/repo:file`` (e.g. REPA-E's ``sdvae-f8d4-discriminator-ckpt.pt``)."""
        fix = "set end_to_end.disc_weights to a local file, or to null for a randomly initialised discriminator"
        state = read_weights(resolve_weights_file(spec, "discriminator", fix))
        state = {k.removeprefix("discriminator."): v for k, v in state.items()}
        try:
            self.load_state_dict(state)
        except RuntimeError as err:
            raise WeightsError(f"the discriminator weights in {spec} do not fit end_to_end.disc_layers / "
                               f"disc_channels: {str(err).splitlines()[0]}") from err


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``(mean relu(1 - D(x)) + mean relu(1 + D(x_hat))) / 2``."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The hinge GAN's generator term: ``-mean D(x_hat)``."""
    return -logits_fake.float().mean()


class LeCam(nn.Module):
    """LeCam regularisation (Tseng et al., 2021): keeps D's mean logits near EMAs of the other side's.

    ``forward(real, fake)`` returns ``mean relu(r - ema_f)^2 + mean relu(ema_r - f)^2`` on the batch
    means and then moves the EMAs (buffers, so they are checkpointed).
    """

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def forward(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        real, fake = logits_real.float().mean(), logits_fake.float().mean()
        loss = F.relu(real - self.ema_fake).pow(2) + F.relu(self.ema_real - fake).pow(2)
        with torch.no_grad():
            self.ema_real.lerp_(real.detach(), 1.0 - self.decay)
            self.ema_fake.lerp_(fake.detach(), 1.0 - self.decay)
        return loss


__all__ = [
    "PerceptualLoss",
    "PatchDiscriminator",
    "LeCam",
    "hinge_discriminator_loss",
    "generator_loss",
    "vgg16_weights",
    "resolve_weights_file",
]

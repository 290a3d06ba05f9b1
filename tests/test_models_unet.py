"""The U-Net backbone: diffusers' forward, the aligned tokens against a hook on the diffusers module,
classifier-free guidance through its class embedding, and training (learning, exact resume) on a CPU."""

from __future__ import annotations

import pytest
import torch
from tiny import TINY_U_NET_RUN, tiny_overrides, with_random_encoders

from irepa.align import Aligner
from irepa.config import load_config
from irepa.diffusion.samplers import SamplerConfig, guided_velocity
from irepa.errors import ConfigError
from irepa.models import UNet, UNetConfig, create_model, registry
from irepa.train.aligned_model import build_aligner, build_backbone
from irepa.train.checkpoint import load_checkpoint
from irepa.train.cli import smoke_overrides
from irepa.train.trainer import train

# Two levels (widths 16, 32; attention on the second) on a non-square 8 x 16 input: a transposed grid shows.
TINY = UNetConfig(base_channels=16, channel_mult=(1, 2), layers_per_block=1, attention_levels=(1,), head_dim=8,
                  norm_groups=8, input_size=(8, 16), in_channels=3, num_classes=4)
# stage -> (H, W, channels), worked out by hand: down.0 at full size, down.1 at half size, mid as down.1
EXPECTED = {1: (8, 16, 16), 2: (4, 8, 32), 3: (4, 8, 32)}


def tiny_unet(**overrides) -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(**{**TINY.__dict__, **overrides})).eval()


def inputs(batch: int = 3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 8, 16, generator=g)
    t = torch.rand(batch, generator=g)
    y = torch.tensor([0, 3, 4][:batch])  # 4 = the null class
    return x, t, y


def hooked_features(model: UNet, stage: int, x, t, y) -> torch.Tensor:
    """The stage's feature map, caught by a forward hook on the diffusers module during its own forward."""
    unet, caught = model.unet, {}
    if stage <= len(unet.down_blocks):
        block = unet.down_blocks[stage - 1]

        def hook(module, args, out):  # (h, res_samples): before the downsampler = the last res sample but one
            caught["h"] = out[1][-2] if module.downsamplers is not None else out[0]
    else:
        block = unet.mid_block

        def hook(module, args, out):
            caught["h"] = out

    handle = block.register_forward_hook(hook)
    try:
        unet(x, t * 1000, class_labels=y)
    finally:
        handle.remove()
    return caught["h"]


@torch.no_grad()
def test_forward_is_the_diffusers_forward_at_the_diffusers_timestep():
    model = tiny_unet()
    x, t, y = inputs()
    expected = model.unet(x, t * 1000, class_labels=y).sample
    torch.testing.assert_close(model(x, t, y), expected, rtol=0, atol=0)
    out, _ = model(x, t, y, return_hidden_at=2)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert not torch.allclose(model(x, t.flip(0), y), expected)  # time reaches the network


@torch.no_grad()
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_aligned_tokens_are_the_hooked_block_on_the_grid_the_projectors_expect(stage):
    model = tiny_unet(align_depth=stage)
    x, t, y = inputs()
    h, w, c = EXPECTED[stage]
    assert model.grid == (h, w) and model.hidden_size == c
    assert model.stage_names == ["down.0", "down.1", "mid"] and len(model.blocks) == 3
    features = hooked_features(model, stage, x, t, y)
    assert features.shape == (3, c, h, w)
    _, tokens = model(x, t, y, return_hidden_at=stage)
    assert tokens.shape == (3, h * w, c)
    torch.testing.assert_close(tokens, features.flatten(2).transpose(1, 2), rtol=0, atol=0)  # row-major
    torch.testing.assert_close(model.hidden_at(x, t, y, stage), tokens, rtol=0, atol=0)

    conv = Aligner(model.hidden_size, {"dino": 6}, model.grid, projector="conv")
    mlp = Aligner(model.hidden_size, {"dino": 6}, model.grid, projector="mlp")
    # the conv projector on the tokens is the same 3x3 conv on the diffusers feature map
    conv_map = conv.projectors["dino"].conv(features).flatten(2).transpose(1, 2)
    torch.testing.assert_close(conv.projectors["dino"](tokens, model.grid), conv_map)
    # the MLP projector maps each token's channels: the same map on the feature map's pixel vectors
    mlp_map = mlp.projectors["dino"](features.permute(0, 2, 3, 1)).flatten(1, 2)
    torch.testing.assert_close(mlp.projectors["dino"](tokens), mlp_map)
    target = {"dino": torch.randn(3, h * w, 6)}
    assert torch.isfinite(conv(tokens, target).loss) and torch.isfinite(mlp(tokens, target).loss)


@torch.no_grad()
def test_classifier_free_guidance_uses_the_null_row_of_the_class_embedding():
    model = tiny_unet()
    assert model.unet.class_embedding.num_embeddings == TINY.num_classes + 1
    x, _, y = inputs()
    y = y.clamp(max=3)
    cfg = SamplerConfig(cfg_scale=3.0)
    guided = guided_velocity(lambda xx, tt, yy: model(xx, tt, yy), x, 0.4, y, TINY.num_classes, cfg, guide=True)
    t = torch.full((3,), 0.4) * 1000
    cond = model.unet(x, t, class_labels=y).sample
    uncond = model.unet(x, t, class_labels=torch.full_like(y, TINY.num_classes)).sample
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cond, uncond)
    with pytest.raises(IndexError):  # no class beyond the null one
        model(x, torch.rand(3), torch.full_like(y, TINY.num_classes + 1))


def test_registered_sizes_and_bad_settings():
    config = registry.model_config("UNet-B", input_size=32)
    assert config.block_channels == (128, 256, 384, 512)
    assert [config.token_grid(k) for k in range(1, 6)] == [(32, 32), (16, 16), (8, 8), (4, 4), (4, 4)]
    with pytest.raises(ConfigError, match="not divisible by 8"):
        registry.model_config("UNet-S", input_size=12).validate()
    with pytest.raises(ValueError, match="unknown UNet-S option"):
        create_model("UNet-S", patch_size=2)
    with pytest.raises(ConfigError, match="align.depth=9 but this U-Net has 3 stages"):
        assert tiny_unet(align_depth=9).grid


def test_smoke_keeps_the_u_net_and_builds_it_at_the_aligned_stage():
    overrides = smoke_overrides("sit", "UNet-B")
    assert overrides["model.name"] == "UNet-S" and "model.patch_size" not in overrides
    assert smoke_overrides("jit", "JiT-B/16")["model.name"] == "JiT-B/16"
    cfg = load_config("unet-irepa", {**overrides, "align.encoders": "dinov2-vit-s"})
    backbone = build_backbone(with_random_encoders(cfg))
    assert isinstance(backbone, UNet) and backbone.grid == (8, 8) and backbone.hidden_size == 128
    aligner, encoders = build_aligner(cfg, backbone, "cpu", torch.float32)
    assert aligner.grid == (8, 8) and tuple(encoders["dinov2-vit-s"].grid) == (8, 8)


# --- training through the library's loop ------------------------------------------------------------

RUN = {**TINY_U_NET_RUN, "model.name": "UNet-tiny"}  # registered by the fixture below


@pytest.fixture
def tiny_registered(monkeypatch):
    config = UNetConfig(base_channels=16, channel_mult=(1, 2), layers_per_block=1, attention_levels=(1,),
                        head_dim=8, norm_groups=8)
    monkeypatch.setitem(registry._REGISTRY, "UNet-tiny", (UNet, config))


def run_config(out, **extra):
    return with_random_encoders(load_config(None, tiny_overrides(out, **{**RUN, **extra})))


def test_tiny_u_net_learns(tmp_path, tiny_registered):
    steps, window = 16, 4
    result = train(run_config(tmp_path / "learn", **{"train.steps": steps, "train.ckpt_every": steps,
                                                       "train.lr": 2e-3}))
    assert len(result.losses) == steps
    early, late = sum(result.losses[:window]) / window, sum(result.losses[-window:]) / window
    assert late < 0.6 * early, (early, late)


def test_resume_is_exact(tmp_path, tiny_registered):
    extra = {"train.steps": 6, "train.ckpt_every": 3}
    full = train(run_config(tmp_path / "full", **extra))
    first = train(run_config(tmp_path / "split", **extra), stop_after=3)
    second = train(run_config(tmp_path / "split", **extra), resume=True)
    assert (first.step, second.step) == (3, 6)
    assert first.losses + second.losses == full.losses  # bit-exact on a CPU
    a, b = load_checkpoint(tmp_path / "full" / "checkpoints"), load_checkpoint(tmp_path / "split" / "checkpoints")
    for part in ("model", "ema", "aligner"):
        assert a[part].keys() == b[part].keys() and any(k.startswith("unet.down_blocks") for k in a["model"])
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=f"{part}.{key}")

"""The DDPM++ U-Net (MeanFlow's CIFAR-10 network): its resampling against analytic cases, the aligned tokens
against a forward hook, the MeanFlow time inputs, and training through the library's loop (learning, exact
resume of a MeanFlow run whose JVP runs through it). Exactness against the MeanFlow port's own network is
tests/test_interop.py's golden fixture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import TINY_U_NET_RUN, tiny_overrides, with_random_encoders

from irepa.config import load_config
from irepa.errors import ConfigError
from irepa.models import SongUNet, SongUNetConfig, create_model
from irepa.models.songunet import Resample
from irepa.train.checkpoint import load_checkpoint
from irepa.train.trainer import train

# two levels (widths 16, 32, attention on the second) on a non-square 8 x 16 input: a transposed grid shows
TINY = SongUNetConfig(base_channels=16, channel_mult=(1, 2), layers_per_block=1, attention_levels=(1,),
                      input_size=(8, 16), in_channels=3, num_classes=4, interval_embedding=True)
EXPECTED = {1: (8, 16, 16), 2: (4, 8, 32), 3: (4, 8, 32)}  # stage -> (H, W, channels), by hand


def tiny(**overrides) -> SongUNet:
    torch.manual_seed(0)
    model = SongUNet(SongUNetConfig(**{**TINY.__dict__, **overrides})).eval()
    with torch.no_grad():  # give the near-zero output layers and the class embedding real values
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def inputs(batch: int = 3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, 8, 16, generator=g), torch.rand(batch, generator=g), torch.tensor([0, 3, 4][:batch])


def test_resampling_with_a_box_filter_is_average_pooling_and_nearest_upsampling():
    x = torch.randn(2, 5, 8, 6)
    torch.testing.assert_close(Resample((1, 1), up=False)(x), F.avg_pool2d(x, 2))
    torch.testing.assert_close(Resample((1, 1), up=True)(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3))
    ones = torch.ones(1, 2, 8, 8)  # [1, 3, 3, 1] has unit gain: a constant stays constant away from the border
    torch.testing.assert_close(Resample((1, 3, 3, 1), up=False)(ones)[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2))
    torch.testing.assert_close(Resample((1, 3, 3, 1), up=True)(ones)[..., 2:-2, 2:-2], torch.ones(1, 2, 12, 12))


@pytest.mark.parametrize("stage", [1, 2, 3])
@torch.no_grad()
def test_aligned_tokens_are_the_hooked_stage_output_on_the_grid_the_projectors_expect(stage):
    model = tiny(align_depth=stage)
    x, t, y = inputs()
    block = model.down[stage - 1][-1] if stage <= 2 else model.mid[-1]
    caught = {}
    handle = block.register_forward_hook(lambda m, a, out: caught.setdefault("h", out))
    out, tokens = model(x, t, y, return_hidden_at=stage, r=t / 2)
    handle.remove()
    h, w, c = EXPECTED[stage]
    assert (model.grid, model.hidden_size) == ((h, w), c) and out.shape == x.shape
    torch.testing.assert_close(tokens, caught["h"].permute(0, 2, 3, 1).reshape(3, h * w, c), rtol=0, atol=0)
    torch.testing.assert_close(model.hidden_at(x, t, y, stage, r=t / 2), tokens, rtol=0, atol=0)


@torch.no_grad()
def test_meanflow_time_inputs_and_labels_change_the_output_as_they_should():
    model = tiny()
    x, t, y = inputs()
    plain = model(x, t, y)
    torch.testing.assert_close(model(x, t, y, r=t), plain, rtol=0, atol=0)  # r = t: h = 0, the instantaneous form
    assert (model(x, t, y, r=t / 2) - plain).abs().max() > 1e-3
    assert (model(x, t, torch.tensor([1, 2, 4])) - plain)[:2].abs().max() > 1e-3
    torch.testing.assert_close(model(x, t, torch.tensor([1, 2, 4]))[2], plain[2], rtol=0, atol=0)
    with pytest.raises(ValueError, match="no interval embedding"):
        tiny(interval_embedding=False)(x, t, y, r=t)


def test_registered_sizes_and_bad_settings():
    model = create_model("SongUNet-B", input_size=32, in_channels=3, num_classes=1, interval_embedding=True)
    params = sum(p.numel() for p in model.parameters())
    assert 55.5e6 < params < 56.5e6  # the port's CIFAR-10 configuration, 55.9 M
    with pytest.raises(ConfigError, match="not divisible by 4"):
        create_model("SongUNet-S", input_size=10)
    with pytest.raises(ConfigError, match="align.depth=7 but this SongUNet has 3 stages"):
        assert tiny(align_depth=7).grid


# --- training through the library's loop ------------------------------------------------------------

RUN = {  # the tiny U-Net run with a two-level SongUNet
    **TINY_U_NET_RUN,
    "model.name": "SongUNet-S",
    "model.base_channels": 16,
    "model.channel_mult": [1, 2],
    "model.layers_per_block": 1,
    "model.attention_levels": [1],
}


def run_config(out, **extra):
    return with_random_encoders(load_config(None, tiny_overrides(out, **{**RUN, **extra})))


def test_tiny_song_unet_learns(tmp_path):  # the flow loss alone: the aligned MeanFlow run is below
    steps, window = 16, 4
    result = train(run_config(tmp_path / "learn", **{"train.steps": steps, "train.ckpt_every": steps,
                                                       "train.lr": 5e-3, "align.enabled": False}))
    early, late = sum(result.losses[:window]) / window, sum(result.losses[-window:]) / window
    assert len(result.losses) == steps and late < 0.75 * early, (early, late)  # measured: 0.63


def test_a_meanflow_run_on_it_resumes_exactly(tmp_path):
    extra = {"recipe": "meanflow-irepa", "train.steps": 4, "train.ckpt_every": 2}
    full = train(run_config(tmp_path / "full", **extra))
    first = train(run_config(tmp_path / "split", **extra), stop_after=2)
    second = train(run_config(tmp_path / "split", **extra), resume=True)
    assert first.losses + second.losses == full.losses  # bit-exact on a CPU
    a, b = load_checkpoint(tmp_path / "full" / "checkpoints"), load_checkpoint(tmp_path / "split" / "checkpoints")
    assert any(k.startswith("down.1.") for k in a["model"]) and a["config"]["objective"]["kind"] == "meanflow"
    for part in ("model", "ema", "aligner"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=f"{part}.{key}")

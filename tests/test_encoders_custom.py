"""User-registered encoders and the ``irepa encoders`` command line."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from irepa.encoders import get_spec, list_encoders, load_encoder, register_encoder, unregister_encoder


class PatchConv(nn.Module):
    """A toy encoder: a stride-8 convolution, optionally as tokens with a leading CLS-like token."""

    def __init__(self, tokens: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, kernel_size=8, stride=8)
        self.tokens = tokens

    def forward(self, x):
        fmap = self.conv(x)
        if not self.tokens:
            return fmap
        seq = fmap.flatten(2).transpose(1, 2)
        return torch.cat([seq.mean(1, keepdim=True), seq], dim=1)


@pytest.fixture
def toy_names():
    names = []
    yield names
    for n in names:
        unregister_encoder(n)


@pytest.mark.parametrize("as_tokens", [False, True])
def test_decorated_factory_follows_the_encoder_contract(as_tokens, toy_names, tmp_path):
    name = f"toy-conv-{int(as_tokens)}"
    seen = []

    @register_encoder(name, embed_dim=12, patch_size=8, native_resolution=(32, 32), mean=(0.5, 0.5, 0.5),
                      std=(0.25, 0.25, 0.25), num_prefix_tokens=1 if as_tokens else 0)
    def build(weights):
        seen.append(weights)
        torch.manual_seed(0)
        return PatchConv(tokens=as_tokens)

    toy_names.append(name)
    assert name in list_encoders() and get_spec(name).family == "custom"
    enc = load_encoder(name, weights="random", grid=(3, 5))
    assert seen == ["random"] and enc.resolution == (24, 40)
    images = torch.rand(2, 3, 50, 60)
    out = enc.encode(images)
    assert out.shape == (2, 15, 12)
    # independent computation: resize (as the paper's code: bicubic, no antialias) + normalise + the raw
    # convolution, flattened row-major; resize="antialias" low-pass filters instead
    fmap = PatchConv(tokens=False)
    fmap.load_state_dict(enc.model.state_dict())
    smooth = load_encoder(name, weights="random", grid=(3, 5), resize="antialias")
    for encoder, antialias in ((enc, False), (smooth, True)):
        x = F.interpolate(images, size=(24, 40), mode="bicubic", align_corners=False, antialias=antialias)
        with torch.no_grad():
            ref = fmap((x - 0.5) / 0.25).flatten(2).transpose(1, 2)
        torch.testing.assert_close(encoder.encode(images), ref, rtol=1e-5, atol=1e-5)


def test_spec_variant_and_duplicate_names(toy_names):
    base = get_spec("mae-vit-l")
    variant = replace(base, name="mae-vit-l-norm", final_norm=True)
    register_encoder(variant)
    toy_names.append(variant.name)
    assert get_spec("mae-vit-l-norm").final_norm and not get_spec("mae-vit-l").final_norm
    with pytest.raises(ValueError, match="already registered"):
        register_encoder(variant)
    register_encoder(replace(variant, notes="replaced"), overwrite=True)
    assert get_spec("mae-vit-l-norm").notes == "replaced"


def test_factory_returning_wrong_width_is_reported(toy_names):
    @register_encoder("toy-wrong", embed_dim=7, patch_size=8, native_resolution=32)
    def build(weights):
        return PatchConv(tokens=False)

    toy_names.append("toy-wrong")
    enc = load_encoder("toy-wrong", weights="random")
    with pytest.raises(ValueError, match="12 channels, the spec says 7"):
        enc.encode(torch.rand(1, 3, 32, 32))


def test_cli_list_and_info(capsys, tmp_path, monkeypatch):
    from irepa.cli import main
    from irepa.encoders.weights import default_weights_path, save_state_dict

    monkeypatch.setenv("IREPA_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_state_dict({"x": torch.zeros(1)}, default_weights_path("siglip-vit-b"))  # counts as present
    assert main(["encoders", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "family", "dim", "patch", "resolution", "source", "local"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == set(list_encoders())
    assert rows["siglip-vit-b"][1:] == ["SigLIP", "768", "16", "256", "timm", "yes"]
    assert rows["dinov3-vit-b16"][-1] == "no" and rows["hog"][-1] == "n/a"
    assert rows["webssl-vit-dino1b_full2b_224"][5] == "transformers"

    assert main(["encoders", "info", "dinov3-vit-l16"]) == 0
    info = capsys.readouterr().out
    assert "timm/vit_large_patch16_dinov3.lvd1689m" in info and str(tmp_path / "encoders" / "dinov3-vit-l16") in info
    assert main(["encoders", "info", "nope"]) == 2
    assert "unknown encoder" in capsys.readouterr().err

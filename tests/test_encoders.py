"""Encoder zoo: registry metadata against the libraries, the token contract, weights, offline behaviour."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from irepa.encoders import (
    WeightsMismatchError,
    WeightsNotFoundError,
    get_spec,
    list_encoders,
    load_encoder,
    register_encoder,
    save_state_dict,
    unregister_encoder,
)
from irepa.encoders import weights as weights_mod

# The "Supported Encoders" list of the official iREPA README, plus our offline default.
README_NAMES = [
    "dino-vit-b", "dinov2-vit-b", "dinov2-vit-l", "dinov2-vit-g",
    "dinov3-vit-b16", "dinov3-vit-l16", "dinov3-vit-h16plus", "dinov3-vit-7b16",
    "webssl-vit-dino300m_full2b_224", "webssl-vit-dino1b_full2b_224", "webssl-vit-dino2b_full2b_224",
    "webssl-vit-dino3b_full2b_224", "webssl-vit-dino5b_full2b_224", "webssl-vit-dino7b_full8b_224",
    "mocov3-vit-b", "mocov3-vit-l", "clip-vit-L", "jepa-vit-h", "mae-vit-l",
    "siglip-vit-b", "siglip-vit-l", "siglip-vit-so400m",
    "siglip2-vit-b", "siglip2-vit-l", "siglip2-vit-so400m", "siglip2-vit-g",
    "pe-vit-b", "pe-vit-l", "pe-vit-g", "langpe-vit-l", "langpe-vit-g",
    "spatialpe-vit-b", "spatialpe-vit-l", "spatialpe-vit-g",
    "sam2-vit-s", "sam2-vit-b", "sam2-vit-l",
]  # fmt: skip
LEARNED = [n for n in list_encoders() if get_spec(n).needs_weights]
# smallest member of each family that is cheap to build for real on this CPU (<= ~100M parameters);
# siglip2-vit-b is the same timm architecture as siglip-vit-b (only the weights differ), so it is checked on meta.
CPU_SMALLEST = ["dino-vit-b", "dinov2-vit-s", "dinov3-vit-b16", "mocov3-vit-b", "siglip-vit-b", "pe-vit-b",
                "spatialpe-vit-b", "sam2-vit-s", "hog", "sift"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test sees an empty weight cache unless it fills one."""
    monkeypatch.setenv("IREPA_HOME", str(tmp_path / "irepa-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def random_encoders():
    """Randomly initialised CPU encoders at a non-square 3x4 grid, built once."""
    torch.manual_seed(0)
    return {name: load_encoder(name, weights="random", grid=(3, 4)) for name in CPU_SMALLEST}


def test_every_readme_encoder_and_the_offline_default_are_registered():
    names = set(list_encoders())
    missing = [n for n in README_NAMES + ["dinov2-vit-s", "hog", "sift"] if n not in names]
    assert not missing


def _library_facts(enc) -> tuple[int, int, int]:
    """(width, stride, prefix tokens) read from the library model itself, not from our spec."""
    model = enc.model
    if hasattr(model, "config"):  # transformers
        cfg = model.config
        return cfg.hidden_size, cfg.patch_size, 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
    if hasattr(model, "patch_embed") and hasattr(model.patch_embed, "patch_size") and hasattr(model, "embed_dim"):
        ps = model.patch_embed.patch_size
        assert ps[0] == ps[1]
        return model.embed_dim, ps[0], model.num_prefix_tokens
    return model.num_features, model.feature_info[-1]["reduction"], 0  # hierarchical trunk (SAM2)


@pytest.mark.parametrize("name", LEARNED)
def test_metadata_matches_library_model_on_meta(name):
    spec = get_spec(name)
    enc = load_encoder(name, weights="random", device="meta", grid=(3, 5))
    assert _library_facts(enc) == (spec.embed_dim, spec.patch_size, spec.num_prefix_tokens)
    assert enc.resolution == (3 * spec.patch_size, 5 * spec.patch_size)
    out = enc(torch.empty(2, 3, *enc.resolution, device="meta"))
    assert tuple(out.shape) == (2, 15, spec.embed_dim)
    assert enc.grid == (3, 5)


@pytest.mark.parametrize("name", [n for n in LEARNED if (get_spec(n).hub_id or "").startswith("timm/")])
def test_preprocessing_constants_match_timm_pretrained_config(name):
    import timm

    spec = get_spec(name)
    cfg = timm.models.get_pretrained_cfg(spec.hub_id.split("/", 1)[1])
    assert tuple(spec.mean) == pytest.approx(tuple(cfg.mean))
    assert tuple(spec.std) == pytest.approx(tuple(cfg.std))
    if spec.family != "DINOv2":  # DINOv2 is published at 518 px; we run it at 224 (16x16 tokens)
        assert spec.native_resolution == tuple(cfg.input_size[1:])
    if spec.family in ("SigLIP", "SigLIP2", "PE", "LangPE", "SpatialPE"):
        assert spec.mean == spec.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("name", CPU_SMALLEST)
def test_smallest_member_gives_tokens_on_requested_nonsquare_grid(name, random_encoders):
    spec = get_spec(name)
    enc = random_encoders[name]
    assert enc.grid == (3, 4) and enc.resolution == (3 * spec.patch_size, 4 * spec.patch_size)
    images = torch.rand(2, 3, 50, 70)  # any size: preprocess resizes
    out = enc.encode(images)
    assert out.shape == (2, 12, spec.embed_dim)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])  # depends on the image


# one CLS token, CLS + 4 registers, no prefix at all, and an entry read without the final norm
@pytest.mark.parametrize("name", ["dinov2-vit-s", "dinov3-vit-b16", "siglip-vit-b", "pe-vit-b"])
def test_prefix_tokens_are_stripped_from_the_library_output(name, random_encoders):
    enc = random_encoders[name]
    spec = get_spec(name)
    x = enc.preprocess(torch.rand(1, 3, 40, 40))
    with torch.no_grad():
        full = enc.model.forward_features(x)  # prefix tokens + patch tokens, final norm applied
        ours = enc(x)
    assert full.shape[1] == spec.num_prefix_tokens + 12
    if not spec.final_norm:  # the per-token LayerNorm commutes with dropping tokens
        with torch.no_grad():
            ours = enc.model.norm(ours)
    torch.testing.assert_close(ours, full[:, spec.num_prefix_tokens:], rtol=1e-5, atol=1e-5)


def test_feature_map_encoder_flattens_row_major(random_encoders):
    enc = random_encoders["sam2-vit-s"]
    x = enc.preprocess(torch.rand(1, 3, 64, 64))
    with torch.no_grad():
        fmap = enc.model.forward_features(x)  # (B, h, w, C)
        ours = enc(x)
    assert fmap.shape[1:3] == (3, 4)
    torch.testing.assert_close(ours.reshape(1, 3, 4, -1), fmap)


def test_resolution_planning():
    assert load_encoder("dinov2-vit-s", weights="random", device="meta").resolution == (224, 224)
    assert load_encoder("dinov2-vit-s", weights="random", device="meta", grid=(16, 16)).resolution == (224, 224)
    assert load_encoder("siglip-vit-b", weights="random", device="meta", grid=16).resolution == (256, 256)
    assert load_encoder("sam2-vit-s", weights="random", device="meta", grid=(16, 16)).resolution == (512, 512)
    enc = load_encoder("pe-vit-l", weights="random", device="meta", resolution=(224, 280))
    assert enc.grid == (16, 20)
    with pytest.raises(ValueError, match="not divisible by its patch size 14"):
        load_encoder("dinov2-vit-s", weights="random", device="meta", resolution=225)
    with pytest.raises(ValueError, match="weights='random'"):
        load_encoder("dinov2-vit-s", device="meta")


def test_inexact_grid_is_resampled_bilinearly_with_a_warning(tmp_path, caplog, random_encoders):
    natural = random_encoders["sam2-vit-s"]  # 96x128 input -> 3x4 tokens (stride 32)
    path = save_state_dict(natural.model.state_dict(), tmp_path / "sam2.safetensors")
    with caplog.at_level(logging.WARNING, logger="irepa.encoders"):
        resampled = load_encoder("sam2-vit-s", weights=str(path), resolution=(96, 128), grid=(2, 5))
    assert any("resampling tokens bilinearly" in r.getMessage() for r in caplog.records)
    assert natural.grid == (3, 4) and resampled.grid == (2, 5)
    images = torch.rand(1, 3, 100, 100)
    base = natural.encode(images)  # (1, 12, D)
    expected = F.interpolate(base.transpose(1, 2).reshape(1, -1, 3, 4), size=(2, 5), mode="bilinear",
                             align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(resampled.encode(images), expected, rtol=1e-5, atol=1e-5)


def test_local_file_round_trips_in_several_layouts(tmp_path, random_encoders):
    src = random_encoders["dinov2-vit-s"]
    state = src.model.state_dict()
    images = torch.rand(2, 3, 42, 56)
    expected = src.encode(images)
    plain = save_state_dict(state, tmp_path / "plain.safetensors")
    wrapped = tmp_path / "ckpt.pth"  # a training checkpoint: {"model": {"module.<key>": ...}, "epoch": ...}
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        enc = load_encoder("dinov2-vit-s", weights=str(path), grid=(3, 4))
        torch.testing.assert_close(enc.encode(images), expected)
        assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    as64 = load_encoder("dinov2-vit-s", weights=str(plain), grid=(3, 4), dtype=torch.float64)
    out64 = as64.encode(images)
    assert out64.dtype == torch.float64 and next(as64.parameters()).dtype == torch.float64
    torch.testing.assert_close(out64.float(), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(WeightsMismatchError, match="not a square grid"):  # 3x4 positions cannot be inferred
        load_encoder("dinov2-vit-s", weights=str(plain))


def test_file_that_does_not_fit_names_missing_and_unexpected_keys(tmp_path, random_encoders):
    state = dict(random_encoders["dinov2-vit-s"].model.state_dict())
    state.pop("blocks.3.attn.proj.weight")
    state["blocks.3.attn.extra"] = torch.zeros(2)
    path = save_state_dict(state, tmp_path / "bad.safetensors")
    with pytest.raises(WeightsMismatchError) as err:
        load_encoder("dinov2-vit-s", weights=str(path), grid=(3, 4))
    assert "missing 1: blocks.3.attn.proj.weight" in str(err.value)
    assert "unexpected 1: blocks.3.attn.extra" in str(err.value)


def test_mocov3_training_checkpoint_loads_and_keeps_sincos_positions(tmp_path, random_encoders):
    src = random_encoders["mocov3-vit-b"]
    state = src.model.state_dict()
    ckpt = {f"module.base_encoder.{k}": v for k, v in state.items()}
    ckpt["module.momentum_encoder.cls_token"] = torch.zeros(1, 1, 768)  # momentum branch and heads: not used
    ckpt["module.predictor.0.weight"] = torch.zeros(4, 256)
    ckpt["module.base_encoder.head.0.weight"] = torch.zeros(4, 768)
    path = tmp_path / "vit-b-300ep.pth.tar"
    torch.save({"epoch": 300, "arch": "vit_base", "state_dict": ckpt}, path)
    enc = load_encoder("mocov3-vit-b", weights=str(path), grid=(3, 4))
    images = torch.rand(1, 3, 48, 64)
    torch.testing.assert_close(enc.encode(images), src.encode(images))
    pos = enc.model.pos_embed[0, 1:].reshape(3, 4, -1)  # first quarter: sin(row * omega_0) = sin(row)
    torch.testing.assert_close(pos[:, :, 0], torch.sin(torch.arange(3.0)).view(3, 1).expand(3, 4))
    torch.testing.assert_close(pos[:, :, 384], torch.sin(torch.arange(4.0)).view(1, 4).expand(3, 4))


@pytest.mark.parametrize("name", ["dinov2-vit-b", "mocov3-vit-l", "jepa-vit-h", "webssl-vit-dino300m_full2b_224"])
def test_offline_without_weights_fails_fast_and_names_the_file(name, tmp_path):
    spec = get_spec(name)
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        load_encoder(name)
    assert time.perf_counter() - start < 2.0
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg
    if spec.hub_id:
        assert spec.hub_id in msg and spec.hub_file in msg
    else:
        assert spec.url in msg
    assert str(tmp_path / "irepa-home" / "encoders" / name) in msg


def test_unreachable_hub_fails_fast_too(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(weights_mod, "reachable", lambda *a, **k: False)
    with pytest.raises(WeightsNotFoundError, match="unreachable.*timm/vit_base_patch16_224.dino"):
        load_encoder("dino-vit-b")


def test_cached_file_is_used_by_default(random_encoders):
    src = random_encoders["dinov2-vit-s"]
    save_state_dict(src.model.state_dict(), weights_mod.default_weights_path("dinov2-vit-s"))
    enc = load_encoder("dinov2-vit-s", grid=(3, 4))
    images = torch.rand(1, 3, 30, 30)
    torch.testing.assert_close(enc.encode(images), src.encode(images))


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError) as err:
        load_encoder("dinov2-vit-bb")
    msg = err.value.args[0]
    assert "Did you mean dinov2-vit-b" in msg
    assert all(n in msg for n in ("dinov2-vit-s", "sam2-vit-l", "hog"))


def test_weight_free_encoders_refuse_a_weights_file():
    with pytest.raises(ValueError, match="weight-free"):
        load_encoder("hog", weights="some.pth")


def test_transformers_dinov2_checkpoint_loads_into_timm_dinov2_s(tmp_path):
    """A transformers ``Dinov2Model`` release (37x37 positions) gives the same tokens through our timm model,
    with positions resampled as transformers does (``pos_embed="upstream"``)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)  # DINOv2-S, 3 blocks deep to keep the test fast
    hf = Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=3, num_attention_heads=6, image_size=518,
                                  patch_size=14, layerscale_value=0.1)).eval()
    hf.save_pretrained(tmp_path / "repo")
    register_encoder(replace(get_spec("dinov2-vit-s"), name="dinov2-vit-s-3", arch_kwargs={"depth": 3}))
    try:
        enc = load_encoder("dinov2-vit-s-3", weights=str(tmp_path / "repo" / "model.safetensors"),
                           pos_embed="upstream")
    finally:
        unregister_encoder("dinov2-vit-s-3")
    x = enc.preprocess(torch.rand(2, 3, 230, 230))
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state[:, 1:]
        ours = enc(x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_transformers_encoder_strips_cls_and_reads_config_json(tmp_path):
    base = get_spec("webssl-vit-dino300m_full2b_224")
    tiny = replace(base, name="webssl-tiny", embed_dim=64,
                   arch_kwargs=dict(base.arch_kwargs, hidden_size=64, num_hidden_layers=2, num_attention_heads=2))
    register_encoder(tiny)
    try:
        enc = load_encoder("webssl-tiny", weights="random", grid=(3, 4))
        x = enc.preprocess(torch.rand(2, 3, 60, 60))
        with torch.no_grad():
            hidden = enc.model(pixel_values=x).last_hidden_state
            ours = enc(x)
        assert hidden.shape == (2, 13, 64) and ours.shape == (2, 12, 64)
        torch.testing.assert_close(ours, hidden[:, 1:])
        enc.model.save_pretrained(tmp_path / "repo")  # model.safetensors + config.json
        again = load_encoder("webssl-tiny", weights=str(tmp_path / "repo" / "model.safetensors"), grid=(3, 4))
        torch.testing.assert_close(again.encode(torch.ones(1, 3, 9, 9)), enc.encode(torch.ones(1, 3, 9, 9)))
        state = enc.model.state_dict()  # the library's in-memory key names, as a plain .pt
        torch.save(state, tmp_path / "plain.pt")
        plain = load_encoder("webssl-tiny", weights=str(tmp_path / "plain.pt"), grid=(3, 4))
        torch.testing.assert_close(plain.encode(torch.ones(1, 3, 9, 9)), enc.encode(torch.ones(1, 3, 9, 9)))
        torch.save({k: v for k, v in state.items() if "layer.1." not in k}, tmp_path / "short.pt")
        with pytest.raises(WeightsMismatchError, match="missing"):
            load_encoder("webssl-tiny", weights=str(tmp_path / "short.pt"))
        cfg = (tmp_path / "repo" / "config.json").read_text().replace('"hidden_size": 64', '"hidden_size": 96')
        (tmp_path / "repo" / "config.json").write_text(cfg)
        with pytest.raises(ValueError, match="width 96"):
            load_encoder("webssl-tiny", weights=str(tmp_path / "repo" / "model.safetensors"))
    finally:
        unregister_encoder("webssl-tiny")

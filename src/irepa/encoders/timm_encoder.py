"""Encoders built with timm: ViT / EVA-style transformers (DINO, DINOv2/3, CLIP, SigLIP, PE, MAE, I-JEPA,
MoCo v3) and the SAM2 Hiera trunk.

The network is built directly at the requested input size, so absolute position embeddings are
resampled once, at load time, by the spec's rule for the chosen mode (:class:`PosResample`: by default
the paper's code, timm's bicubic-with-antialias ``resample_abs_pos_embed``; bilinear for the
Perception Encoders), and RoPE grids are made for that size. ``dynamic_img_size`` stays on, so
``forward`` also accepts other sizes divisible by the stride.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
from pathlib import Path

import torch
from torch import nn

from irepa.encoders.base import SpecEncoder
from irepa.encoders.convert import convert
from irepa.encoders.spec import REPA_POS, EncoderSpec, PosResample
from irepa.encoders.weights import WeightsMismatchError, load_strict, read_state_dict, resolve_weights

log = logging.getLogger(__name__)


def _is_feature_map(arch: str) -> bool:
    """Hierarchical trunks that return an NHWC map instead of a token sequence."""
    return arch.startswith(("sam2_hiera", "hiera"))


def sincos_pos_embed(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """MoCo v3's fixed 2-D sin-cos position embedding ``(1, 1 + h*w, dim)`` (zero for the CLS token).

    Token ``(y, x)`` gets ``[sin(y w), cos(y w), sin(x w), cos(x w)]`` with ``w = T^(-k / (dim/4))``;
    for square grids this equals the original construction.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    oy = ys.reshape(-1, 1) * omega
    ox = xs.reshape(-1, 1) * omega
    emb = torch.cat([oy.sin(), oy.cos(), ox.sin(), ox.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim), emb], dim=0).unsqueeze(0)


def build_model(spec: EncoderSpec, resolution: tuple[int, int]) -> nn.Module:
    """The library network for ``spec`` at ``resolution`` (random weights, current default device)."""
    import timm

    if spec.source == "mocov3":
        from timm.models.vision_transformer import VisionTransformer

        a = dict(spec.arch_kwargs)
        model = VisionTransformer(img_size=resolution, patch_size=spec.patch_size, embed_dim=a["embed_dim"],
                                  depth=a["depth"], num_heads=a["num_heads"], mlp_ratio=a.get("mlp_ratio", 4.0),
                                  qkv_bias=True, num_classes=0, dynamic_img_size=True)
        with torch.no_grad():
            if model.pos_embed.device.type != "meta":
                model.pos_embed.copy_(sincos_pos_embed(model.patch_embed.grid_size, model.embed_dim))
        return model
    kwargs = dict(num_classes=0, **spec.arch_kwargs)
    if not _is_feature_map(spec.arch):
        kwargs.update(img_size=tuple(resolution), dynamic_img_size=True)
    return timm.create_model(spec.arch, pretrained=False, **kwargs)


def _stored_grid(model: nn.Module, pos: torch.Tensor) -> tuple[int, int]:
    """The square grid of a stored ``pos_embed`` (after the model's prefix positions)."""
    prefix = model.pos_embed.shape[1] - math.prod(model.patch_embed.grid_size)
    side = math.isqrt(max(pos.shape[1] - prefix, 0))
    if side * side != pos.shape[1] - prefix:
        raise WeightsMismatchError(
            f"pos_embed in the file holds {pos.shape[1] - prefix} positions, not a square grid, and this model "
            f"needs {tuple(model.patch_embed.grid_size)}; load it at the grid it was saved with"
        )
    return side, side


def _mocov3_positions(model: nn.Module, state: dict, rule: PosResample) -> dict:
    """MoCo v3's fixed sin-cos positions on the model's grid: resampled from the file, or regenerated."""
    grid = tuple(model.patch_embed.grid_size)
    pos = state.get("pos_embed")
    if rule.sincos or pos is None:
        return {**state, "pos_embed": sincos_pos_embed(grid, model.embed_dim)}
    if pos.shape == model.pos_embed.shape:
        return state
    from timm.layers import resample_abs_pos_embed

    resampled = resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(_stored_grid(model, pos)),
                                       num_prefix_tokens=1, interpolation=rule.interpolation, antialias=rule.antialias)
    return {**state, "pos_embed": resampled}


def _timm_filter(model: nn.Module, state: dict, rule: PosResample) -> dict:
    """timm's own checkpoint filter for the model's module (original layouts, position resampling by ``rule``)."""
    pos, own = state.get("pos_embed"), getattr(model, "pos_embed", None)
    if pos is not None and own is not None and pos.ndim == 3 and pos.shape[1] != own.shape[1]:
        _stored_grid(model, pos)
    module = importlib.import_module(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    if fn is None:
        return state
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in (("interpolation", rule.interpolation), ("antialias", rule.antialias)) if k in params}
    return fn(state, model, **kwargs)


def load_weights(model: nn.Module, spec: EncoderSpec, path: str | Path, assign: bool = False,
                 pos: PosResample = REPA_POS) -> None:
    """Read, convert and strictly load weights from ``path`` into ``model`` (``assign``: see ``load_strict``).

    ``pos`` is the position-embedding rule used when the file's grid differs from the model's.
    """
    state = convert(spec.converter, read_state_dict(path, key=spec.checkpoint_key), model)
    if spec.source == "mocov3":
        state = _mocov3_positions(model, state, pos)
    state = _timm_filter(model, state, pos)
    if isinstance(getattr(model, "head", None), nn.Identity):  # classifier / projection heads are not used
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    load_strict(model, state, origin=f"{spec.name} weights {path}", assign=assign)


class TimmEncoder(SpecEncoder):
    """A timm network read at its last block; prefix tokens stripped, final norm per spec."""

    def __init__(self, spec: EncoderSpec, model: nn.Module, resolution: tuple[int, int],
                 output_grid: tuple[int, int] | None = None) -> None:
        super().__init__(spec, model, resolution, output_grid)
        self.feature_map = _is_feature_map(spec.arch) if spec.source == "timm" else False
        prefix = 0 if self.feature_map else int(getattr(model, "num_prefix_tokens", 0))
        if prefix != spec.num_prefix_tokens:
            raise ValueError(f"{spec.name}: the spec says {spec.num_prefix_tokens} prefix tokens but "
                             f"{type(model).__name__} has {prefix}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        if self.feature_map:
            tokens = self.model.forward_features(x).flatten(1, 2)  # (B, h, w, C) -> (B, h*w, C)
        else:
            tokens = self.model.forward_intermediates(
                x, indices=1, norm=self.spec.final_norm, output_fmt="NLC", intermediates_only=True
            )[-1]
        if tokens.shape[1] != h * w:
            raise RuntimeError(f"{self.name}: expected {h}x{w} tokens, got {tokens.shape[1]}")
        return self.finish(tokens, (h, w))


def _rope_on_integer_positions(model: nn.Module) -> None:
    """Drop timm's rescaling of RoPE positions to the pretraining grid (``ref_feat_shape``).

    With ``dynamic_img_size`` the rotary tables are rebuilt from this attribute on every call.
    """
    rope = getattr(model, "rope", None)
    if rope is None or not hasattr(rope, "ref_feat_shape"):
        raise ValueError(f"{type(model).__name__} has no timm RoPE module whose positions could be set")
    if getattr(rope, "feat_shape", None) is not None:  # pragma: no cover - tables cached at build time
        raise ValueError("RoPE tables are cached for a fixed grid; build the model with dynamic_img_size=True")
    rope.ref_feat_shape = None


def create(spec: EncoderSpec, resolution: tuple[int, int], output_grid: tuple[int, int] | None,
           weights: str | None, meta: bool = False, pos: PosResample = REPA_POS) -> TimmEncoder:
    """Build the encoder; ``weights`` is ``None`` (cache / hub), ``"random"`` or a file path; ``pos``: see
    :func:`load_weights`."""
    if meta:
        with torch.device("meta"):
            model = build_model(spec, resolution)
    else:
        path = None if weights == "random" else (weights if weights is not None else resolve_weights(spec))
        if path is None:
            model = build_model(spec, resolution)
        else:  # parameters stay empty until the file's tensors are put in place: no wasted random init
            from accelerate import init_empty_weights

            with init_empty_weights(include_buffers=False):
                model = build_model(spec, resolution)
            load_weights(model, spec, path, assign=True, pos=pos)
    if not pos.rope_rescale:
        _rope_on_integer_positions(model)
    if not meta and spec.source == "timm" and not _is_feature_map(spec.arch):
        grid = tuple(model.patch_embed.grid_size)
        want = (resolution[0] // spec.patch_size, resolution[1] // spec.patch_size)
        if grid != want:  # pragma: no cover - guards against a wrong patch size in the spec
            raise ValueError(f"{spec.name}: built a {grid} grid, expected {want} (patch {spec.patch_size})")
    return TimmEncoder(spec, model, resolution, output_grid)


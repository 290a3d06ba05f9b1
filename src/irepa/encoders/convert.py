"""State-dict converters from the layouts weights are published in to the layouts the zoo builds.

Each converter maps ``{key: tensor}`` to ``{key: tensor}`` and never drops a key it does not know:
what remains unmatched is reported by the strict loader.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

StateDict = dict[str, torch.Tensor]

_HF_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_BLOCK_RENAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "mlp.weights_in.weight": "mlp.fc1.weight",  # SwiGLU (ViT-g): packed gate + value
    "mlp.weights_in.bias": "mlp.fc1.bias",
    "mlp.weights_out.weight": "mlp.fc2.weight",
    "mlp.weights_out.bias": "mlp.fc2.bias",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def is_hf_dinov2(state: StateDict) -> bool:
    """A transformers ``Dinov2Model`` layout (optionally under a ``dinov2.`` prefix)."""
    return any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in state)


def hf_dinov2_to_timm(state: StateDict) -> StateDict:
    """transformers ``Dinov2Model`` keys -> timm ``VisionTransformer`` keys (q, k, v fused into qkv)."""
    prefix = next(k for k in state if k.endswith("embeddings.patch_embeddings.projection.weight"))
    prefix = prefix[: -len("embeddings.patch_embeddings.projection.weight")]
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    out: StateDict = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "embeddings.mask_token":
            continue  # masked-image pre-training only
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        m = _HF_BLOCK.match(key)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            part = re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
            if part:
                qkv.setdefault(i, {})[f"{part.group(1)}.{part.group(2)}"] = value
                continue
            if rest in _HF_BLOCK_RENAMES:
                out[f"blocks.{i}.{_HF_BLOCK_RENAMES[rest]}"] = value
                continue
        out[key] = value  # unknown: left for the strict loader to report
    for i, parts in qkv.items():
        for kind in ("weight", "bias"):
            pieces = [parts.get(f"{n}.{kind}") for n in ("query", "key", "value")]
            if all(p is not None for p in pieces):
                out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(pieces, dim=0)
            else:
                out.update({f"encoder.layer.{i}.attention.attention.{n}.{kind}": p
                            for n, p in zip(("query", "key", "value"), pieces) if p is not None})
    return out


def dinov2(state: StateDict, model: torch.nn.Module | None = None) -> StateDict:
    """DINOv2 in timm, from timm / original / transformers layouts."""
    return hf_dinov2_to_timm(state) if is_hf_dinov2(state) else state


def mocov3(state: StateDict, model: torch.nn.Module | None = None) -> StateDict:
    """MoCo v3 training checkpoint -> the backbone: keep ``base_encoder``, drop its projection head."""
    if any(k.startswith("base_encoder.") for k in state):
        state = {k[len("base_encoder."):]: v for k, v in state.items() if k.startswith("base_encoder.")}
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def mae(state: StateDict, model: torch.nn.Module | None = None) -> StateDict:
    """MAE pre-training checkpoint -> encoder only (drop the decoder and the mask token)."""
    return {k: v for k, v in state.items() if not (k.startswith("decoder") or k == "mask_token")}


CONVERTERS: dict[str, Callable[[StateDict, torch.nn.Module | None], StateDict]] = {
    "dinov2": dinov2,
    "mocov3": mocov3,
    "mae": mae,
}


def convert(name: str | None, state: StateDict, model: torch.nn.Module | None = None) -> StateDict:
    """Apply the named converter (``None``: unchanged)."""
    if name is None:
        return state
    if name not in CONVERTERS:
        raise KeyError(f"unknown state-dict converter {name!r}; known: {', '.join(CONVERTERS)}")
    return CONVERTERS[name](state, model)

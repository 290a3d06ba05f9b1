"""SiT state dicts of the REPA family (REPA, iREPA ``ldm/``, REPA-E) in irepa's layout, and their architecture.

The reference SiT is DiT's module tree with timm parts; irepa's SiT computes the same function with
its own names (``x_embedder.proj`` -> ``x_embedder``, ``mlp.fc1/fc2`` -> ``mlp.0/2``,
``y_embedder.embedding_table`` -> ``y_embedder``). The fixed sin-cos position table, stored as a
parameter there, is rebuilt by irepa and only checked here. Heads cannot be read from weights: they
come from the model name the checkpoint gives (or ``--num-heads``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from irepa.models.layers import sincos_pos_embed_2d
from irepa.models.registry import list_models, model_config

from .base import block_count, grid_side, refuse

_RENAMES = (  # reference suffix -> irepa suffix, per key
    ("x_embedder.proj.", "x_embedder."),
    ("y_embedder.embedding_table.", "y_embedder."),
    (".mlp.fc1.", ".mlp.0."),
    (".mlp.fc2.", ".mlp.2."),
)


@dataclass
class SiTArch:
    name: str  # a registered irepa name of the same family, patch included
    depth: int
    hidden_size: int
    num_heads: int
    patch_size: int
    input_size: int
    in_channels: int
    num_classes: int

    def settings(self) -> dict[str, Any]:
        return {
            "model.name": self.name, "model.depth": self.depth, "model.hidden_size": self.hidden_size,
            "model.num_heads": self.num_heads, "model.patch_size": self.patch_size,
            "model.input_size": self.input_size, "model.in_channels": self.in_channels,
            "model.num_classes": self.num_classes,
        }


def unlegacy(state: Mapping[str, torch.Tensor], encoder_depth: int | None, source: str) -> dict[str, torch.Tensor]:
    """REPA's early checkpoints split the blocks into ``blocks`` and ``decoder_blocks`` (numbered from 0 again)."""
    if not any(k.startswith("decoder_blocks.") for k in state):
        return dict(state)
    if not encoder_depth:
        raise refuse(source, "the checkpoint has REPA's legacy decoder_blocks but names no encoder depth",
                     "pass --align-depth (the run's encoder depth)")
    out = {}
    for key, value in state.items():
        if key.startswith("decoder_blocks."):
            _, index, rest = key.split(".", 2)
            key = f"blocks.{int(index) + encoder_depth}.{rest}"
        out[key] = value
    return out


def heads_for(model_name: str | None, depth: int, width: int, patch: int, source: str, num_heads: int | None,
              family: str = "SiT") -> tuple[str, int]:
    """A registered name of ``family`` with this patch, and the head count (from the checkpoint's model name)."""
    registered = [n for n in list_models() if n.startswith(f"{family}-") and n.endswith(f"/{patch}")]
    fallback = registered[0] if registered else f"{family}-B/2"
    if model_name in list_models():
        c = model_config(model_name)
        if (c.depth, c.hidden_size, c.patch_size) != (depth, width, patch):
            raise refuse(source, f"the checkpoint's arguments name {model_name} (depth {c.depth}, width "
                         f"{c.hidden_size}, patch {c.patch_size}) but its weights have depth {depth}, width {width}, "
                         f"patch {patch}",
                         "check that the file and its arguments belong together")
        if num_heads is not None and num_heads != c.num_heads:
            raise refuse(source, f"--num-heads {num_heads} contradicts {model_name} ({c.num_heads} heads)",
                         "drop --num-heads")
        return model_name, c.num_heads
    if model_name is None:  # no arguments: a size whose depth, width and patch match
        for name in registered:
            c = model_config(name)
            if (c.depth, c.hidden_size) == (depth, width):
                return name, c.num_heads
    if num_heads is None:
        said = f"names the model {model_name!r}" if model_name else "names no model"
        raise refuse(source, f"the checkpoint {said} and depth {depth} / width {width} is no standard {family} size, "
                     "so the number of attention heads is unknown", "pass --num-heads N")
    if width % num_heads:
        raise refuse(source, f"width {width} is not divisible by --num-heads {num_heads}", "pass the run's head count")
    return fallback, num_heads


def convert_sit(state: Mapping[str, torch.Tensor], source: str, model_name: str | None = None,
                num_heads: int | None = None) -> tuple[dict[str, torch.Tensor], SiTArch]:
    """A reference SiT state dict (no projectors, no batch-norm) -> irepa's SiT state dict and its architecture."""
    if "x_embedder.proj.weight" not in state or "pos_embed" not in state:
        raise refuse(source, "the weights are not a SiT of the REPA code (no x_embedder.proj / pos_embed)",
                     "check --from: this file is of another kind")
    if any(".q_norm." in k or ".k_norm." in k for k in state):
        raise refuse(source, "the SiT was trained with qk-norm (timm LayerNorm on q and k), which irepa's SiT has as "
                     "RMSNorm", "import a checkpoint trained without --qk-norm")
    patch_w = state["x_embedder.proj.weight"]
    width, in_channels, patch = patch_w.shape[0], patch_w.shape[1], patch_w.shape[-1]
    depth = block_count(state)
    side = grid_side(state["pos_embed"].shape[1], source)
    rows = state["y_embedder.embedding_table.weight"].shape[0]
    out_dim = state["final_layer.linear.weight"].shape[0]
    if out_dim != patch * patch * in_channels:
        raise refuse(source, f"the output layer has {out_dim} channels per token, not patch² x in_channels "
                     f"= {patch * patch * in_channels} (a learned-sigma model?)", "import a velocity-prediction SiT")
    name, heads = heads_for(model_name, depth, width, patch, source, num_heads)
    expected = sincos_pos_embed_2d(width, (side, side))
    if (state["pos_embed"].reshape(expected.shape).float() - expected).abs().max() > 1e-5:
        raise refuse(source, "the position table is not the fixed 2-D sin-cos table irepa's SiT uses",
                     "import a SiT with fixed sin-cos positions")
    converted = {}
    for key, value in state.items():
        if key == "pos_embed":
            continue
        for old, new in _RENAMES:
            if key.startswith(old) or old.startswith(".") and old in key:
                key = key.replace(old, new, 1)
        converted[key] = value
    arch = SiTArch(name, depth, width, heads, patch, side * patch, in_channels, rows - 1)
    return converted, arch


def split_state(state: Mapping[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """(backbone, projectors, everything else) of a reference SiT state dict."""
    backbone, projectors, other = {}, {}, {}
    for key, value in state.items():
        if key.startswith("projectors."):
            projectors[key] = value
        elif key.startswith("bn."):
            other[key] = value
        else:
            backbone[key] = value
    return backbone, projectors, other

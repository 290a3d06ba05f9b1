"""The pixel-space JiT releases: ``jit`` (LTH14/JiT) and ``irepa-jit`` (iREPA ``jit/``, JiT with projectors).

Both save ``{"model", "model_ema1", "model_ema2", "optimizer", "epoch", "args"}``, the state dicts
being the denoiser's (``net.`` before every network key). irepa's JiT is the same network under its
own names; two things are converted:

* **Time.** JiT's network reads t_JiT = 1 − t (t_JiT = 0 is noise; irepa's t = 0 is data). The
  conversion happens at the network input, inside the weights: the sinusoidal features of 1 − t are a
  fixed linear map of those of t (``cos((1−t)w) = cos w cos tw + sin w sin tw``, ``sin((1−t)w) =
  sin w cos tw − cos w sin tw``), so the first layer of the time MLP becomes ``W M``. The imported
  network then takes irepa's t and computes what the released one computes at 1 − t.
* **Recipe numbers in JiT's time**: ``P_mean`` -> ``objective.p_mean = −P_mean``; the guidance
  interval ``(min, max)`` -> ``sample.guidance_low/high = (1 − max, 1 − min)`` (docs/recipes.md).

The in-context start block is not in the weights: it comes from the model name (JiT-B: 4, L: 8,
H: 10) or ``--in-context-start``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from irepa.models.layers import sincos_pos_embed_2d
from irepa.models.registry import list_models, model_config
from irepa.recipes import recipe_overrides

from .base import (
    ImportedRun,
    aligner_state,
    arg,
    block_count,
    encoder_names_for,
    grid_side,
    is_state_dict,
    projector_layout,
    read_released,
    refuse,
    split_coeffs,
    strip_prefix,
)

_RENAMES = (
    ("x_embedder.proj1.", "x_embedder.reduce."),
    ("x_embedder.proj2.", "x_embedder.expand."),
    ("y_embedder.embedding_table.", "y_embedder."),
    ("final_layer.norm_final.", "final_layer.norm."),
    ("in_context_posemb", "in_context_pos"),
)


def time_flip_matrix(frequency_dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``M`` with ``features(1 − t) = M features(t)`` for the ``[cos(t w), sin(t w)]`` time features (float64)."""
    half = frequency_dim // 2
    w = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).double()
    cos, sin = torch.diag(w.cos()), torch.diag(w.sin())
    m = torch.zeros(frequency_dim, frequency_dim, dtype=torch.float64)
    m[:half, :half], m[:half, half:2 * half] = cos, sin
    m[half:2 * half, :half], m[half:2 * half, half:2 * half] = sin, -cos
    return m


def flip_time_input(weight: torch.Tensor) -> torch.Tensor:
    """The time MLP's first weight ``W`` as ``W M``: the layer now reads irepa's t where it read 1 − t."""
    return (weight.double() @ time_flip_matrix(weight.shape[1])).to(weight.dtype)


def convert_jit(state: Mapping[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """A JiT network's state dict (no projectors) -> irepa's, with the sizes it shows."""
    if "x_embedder.proj1.weight" not in state:
        raise refuse(source, "the weights are not a JiT (no x_embedder.proj1)",
                     "check --from: this file is of another kind")
    reduce = state["x_embedder.proj1.weight"]
    bottleneck, in_channels, patch = reduce.shape[0], reduce.shape[1], reduce.shape[-1]
    width = state["x_embedder.proj2.weight"].shape[0]
    head_dim = state["blocks.0.attn.q_norm.weight"].shape[0]
    depth = block_count(state)
    side = grid_side(state["pos_embed"].shape[1], source)
    in_context_len = state["in_context_posemb"].shape[1] if "in_context_posemb" in state else 0
    swiglu = state["blocks.0.mlp.w3.weight"].shape[1]
    if swiglu != int(int(width * 4.0) * 2 / 3):
        raise refuse(source, f"the SwiGLU width {swiglu} is not JiT's (mlp_ratio 4)",
                     "import a JiT of the standard shape")
    expected = sincos_pos_embed_2d(width, (side, side))
    if (state["pos_embed"].reshape(expected.shape).float() - expected).abs().max() > 1e-5:
        raise refuse(source, "the position table is not JiT's fixed 2-D sin-cos table", "import a standard JiT")
    converted = {}
    for key, value in state.items():
        if key == "pos_embed":
            continue
        for old, new in _RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
        converted[key] = value
    converted["t_embedder.mlp.0.weight"] = flip_time_input(converted["t_embedder.mlp.0.weight"])
    sizes = dict(depth=depth, hidden_size=width, num_heads=width // head_dim, patch_size=patch,
                 bottleneck_dim=bottleneck, in_context_len=in_context_len, input_size=side * patch,
                 in_channels=in_channels, num_classes=state["y_embedder.embedding_table.weight"].shape[0] - 1)
    return converted, sizes


def _network(state: Any, name: str, source: str) -> tuple[dict, dict]:
    """(network, projectors) of one of the denoiser's state dicts."""
    if not is_state_dict(state):
        raise refuse(source, f"the checkpoint's {name!r} is not a state dict",
                     "give the checkpoint-*.pth file of the run")
    state = strip_prefix(strip_prefix(state, "module."), "net.")
    net = {k: v for k, v in state.items() if not k.startswith("projectors.")}
    return net, {k: v for k, v in state.items() if k.startswith("projectors.")}


def _model_name(sizes: dict[str, int], named: str | None, in_context_start: int | None, source: str) -> tuple[str, int]:
    """A registered JiT name for the sizes, and the in-context start block."""
    if named in list_models():
        c = model_config(named)
        if (c.depth, c.hidden_size, c.patch_size) != (sizes["depth"], sizes["hidden_size"], sizes["patch_size"]):
            raise refuse(source, f"the arguments name {named} but the weights have depth {sizes['depth']}, width "
                         f"{sizes['hidden_size']}, patch {sizes['patch_size']}", "check the file and its arguments")
        return named, c.in_context_start if in_context_start is None else in_context_start
    patch = sizes["patch_size"]
    candidates = [n for n in list_models() if n.startswith("JiT-") and n.endswith(f"/{patch}")] or ["JiT-B/16"]
    if named is None:
        for name in candidates:
            c = model_config(name)
            if (c.depth, c.hidden_size) == (sizes["depth"], sizes["hidden_size"]) and in_context_start is None:
                return name, c.in_context_start
    if in_context_start is None and sizes["in_context_len"]:
        raise refuse(source, f"the model ({named or 'unnamed'}, depth {sizes['depth']}, width "
                     f"{sizes['hidden_size']}) is no standard JiT size, so the block where the class tokens enter "
                     "is unknown",
                     "pass --in-context-start N (0-indexed block)")
    return candidates[0], sizes["depth"] if in_context_start is None else in_context_start


def import_jit(source: str, path: str | Path, options: dict[str, Any]) -> ImportedRun:
    """``jit`` or ``irepa-jit``: a JiT release as an :class:`ImportedRun`."""
    from .sit_sources import describe_file

    obj = read_released(path, source)
    if not isinstance(obj, Mapping) or "model_ema1" not in obj or "model" not in obj:
        raise refuse(source, f"the file is {describe_file(obj)}",
                     "give a JiT checkpoint-*.pth ({model, model_ema1, model_ema2, optimizer, epoch, args})")
    args = obj.get("args")
    raw, raw_proj = _network(obj["model"], "model", source)
    ema, ema_proj = _network(obj["model_ema1"], "model_ema1", source)
    extra = [_network(obj["model_ema2"], "model_ema2", source)[0]] if obj.get("model_ema2") is not None else []
    irepa_args = arg(args, "projection_layer_type") is not None or arg(args, "spnorm_method") is not None
    if source == "jit" and (raw_proj or irepa_args):
        raise refuse(source, "the checkpoint has alignment projectors / iREPA arguments: it is of the iREPA jit/ code",
                     "use --from irepa-jit")
    if source == "irepa-jit" and not raw_proj and not irepa_args:
        raise refuse(source, "the checkpoint has no projectors and no iREPA arguments: it is a plain JiT",
                     "use --from jit")
    model, sizes = convert_jit(raw, source)
    ema_model, _ = convert_jit(ema, source)
    extra_models = [convert_jit(s, source)[0] for s in extra]
    name, start = _model_name(sizes, arg(args, "model"), options.get("in_context_start"), source)
    if options.get("num_heads") not in (None, sizes["num_heads"]):
        raise refuse(source, f"--num-heads {options['num_heads']} contradicts the weights ({sizes['num_heads']} heads)",
                     "drop --num-heads")
    for key, value in [("class_num", sizes["num_classes"]), ("img_size", sizes["input_size"])]:
        if arg(args, key) is not None and int(arg(args, key)) != value:
            raise refuse(source, f"the arguments say {key}={arg(args, key)} but the weights imply {value}",
                         "check that the file and its arguments belong together")

    layout = projector_layout(raw_proj, source) if raw_proj else None
    kind = "vanilla" if layout is None else ("irepa" if layout.kind == "conv" else "repa")
    settings: dict[str, Any] = recipe_overrides(f"jit-{kind}")
    settings.update({"model.name": name, "model.in_context_start": start,
                     **{f"model.{k}": v for k, v in sizes.items()}})
    aligner = None
    notes = ["time: the network reads irepa's t; JiT's 1 - t is folded into the time MLP's first layer"]
    if layout is not None:
        names = encoder_names_for(layout, options.get("encoders") or arg(args, "enc_type"), source)
        coeffs = split_coeffs(arg(args, "proj_coeff", 0.5), len(names), source)
        norm = arg(args, "spnorm_method", "none")
        if norm not in ("none", "zscore"):
            raise refuse(source, f"spatial normalisation {norm!r} has no irepa equivalent", "irepa has none and zscore")
        settings.update({
            "align.enabled": True, "align.depth": int(arg(args, "encoder_depth", 8)),
            "align.projector": layout.kind, "align.kernel_size": layout.kernel_size,
            "align.projector_hidden_dim": layout.hidden_dim, "align.norm": norm,
            "align.encoders": [{"name": n, "coeff": c} for n, c in zip(names, coeffs)], "align.coeff": coeffs[0],
        })
        if norm == "zscore":
            settings["align.zscore_alpha"] = float(arg(args, "zscore_alpha", 0.8))
        aligner = aligner_state(raw_proj, names)
    interval = (float(arg(args, "interval_min", 0.0)), float(arg(args, "interval_max", 1.0)))
    method = arg(args, "sampling_method", "heun")
    if method not in ("heun", "euler"):
        raise refuse(source, f"sampling_method {method!r} has no irepa sampler", "irepa has JiT's heun and euler")
    settings.update({
        "objective.p_mean": -float(arg(args, "P_mean", -0.8)),
        "objective.p_std": float(arg(args, "P_std", 0.8)),
        "objective.t_eps": float(arg(args, "t_eps", 0.05)),
        "objective.noise_scale": float(arg(args, "noise_scale", 1.0)),
        "objective.label_dropout": float(arg(args, "label_drop_prob", 0.1)),
        "data.resolution": sizes["input_size"],
        "sample.kind": f"ode-{method}",
        "sample.steps": int(arg(args, "num_sampling_steps", 50)),
        "sample.cfg_scale": float(arg(args, "cfg", 1.0)),
        "sample.guidance_low": 1.0 - interval[1],
        "sample.guidance_high": 1.0 - interval[0],
        "train.ema_decay": float(arg(args, "ema_decay1", 0.9999)),
        "train.extra_ema_decays": [float(arg(args, "ema_decay2", 0.9996))] if extra_models else [],
    })
    step = int(obj.get("step") or 0)
    notes.append(f"JiT counts epochs (this file: epoch {obj.get('epoch')}); the run starts at step {step}")
    codec = {"kind": "pixels", "channels": sizes["in_channels"]}
    return ImportedRun(source, settings, model, ema_model, codec, aligner, extra_models, step=step, notes=notes)

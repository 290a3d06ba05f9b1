"""The latent SiT releases: ``repa`` (sihyun-yu/REPA), ``irepa-ldm`` (iREPA ``ldm/``) and ``repa-e`` (REPA-E).

All three save ``{"model", "ema", "opt", "args", "steps"}`` (REPA-E adds its VAE, discriminator and
their optimisers) with the training script's ``argparse`` arguments; REPA's own release ``last.pt`` is
the bare EMA state dict. What each file means for irepa:

* the SiT weights (raw and EMA) and the projectors, converted by :mod:`irepa.interop.sit`;
* the recipe from the arguments (path, prediction, time sampling, label dropout, encoder, depth,
  λ, projector, spatial normalisation and z-score α), and the presets where a field is absent;
* the latent space: REPA scales SD-VAE latents by 0.18215 (fixed in its code); iREPA ``ldm/`` uses
  per-channel statistics kept in a file beside its VAE (``--latent-stats``); REPA-E keeps them in the
  SiT's batch-norm running statistics (``bn.running_mean`` / ``bn.running_var``), read here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from irepa.recipes import recipe_overrides

from .base import (
    ImportedRun,
    aligner_state,
    arg,
    encoder_names_for,
    is_state_dict,
    projector_layout,
    read_released,
    refuse,
    split_coeffs,
    strip_prefix,
)
from .sit import convert_sit, split_state, unlegacy

SD_VAE_SCALE = 0.18215  # REPA's fixed latent scale (bias 0), sihyun-yu/REPA train.py
# What each release samples with to report its headline number (see README, "Published checkpoints").
PUBLISHED_SAMPLER = {
    "repa": {"sample.kind": "sde", "sample.steps": 250, "sample.cfg_scale": 1.8, "sample.guidance_low": 0.0,
             "sample.guidance_high": 0.7},
    "irepa-ldm": {"sample.kind": "sde", "sample.steps": 250, "sample.cfg_scale": 1.0},
    "repa-e": {"sample.kind": "sde", "sample.steps": 250, "sample.cfg_scale": 1.0},
}


def describe_file(obj: Any) -> str:
    """What a loaded file looks like, for messages refusing it."""
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}, not a checkpoint dict"
    keys = set(obj)
    state = obj.get("ema") or obj.get("model") or obj.get("model_ema1") or (obj if is_state_dict(obj) else {})
    if isinstance(state, Mapping):
        state = strip_prefix(strip_prefix(state, "module."), "net.")
        names = set(state)
        if "x_embedder.proj1.weight" in names:
            return "a JiT checkpoint (use --from jit or --from irepa-jit)"
        if "bn.running_mean" in names:
            return "a REPA-E SiT with latent batch-norm (use --from repa-e)"
        if "x_embedder.proj.weight" in names:
            return "a SiT of the REPA code"
    if isinstance(obj.get("model"), Mapping) and any(str(k).startswith("net_ema.") for k in obj["model"]):
        return "a checkpoint of the MeanFlow PyTorch port (use --from meanflow)"
    return f"a dict with keys {sorted(map(str, keys))[:8]}"


def _open(obj: Any, source: str) -> tuple[dict, dict, Any, int, bool]:
    """(raw state, EMA state, args, step, has_raw) of a training checkpoint or a bare EMA state dict."""
    if is_state_dict(obj):
        state = strip_prefix(obj, "module.")
        return state, state, None, 0, False
    if isinstance(obj, Mapping) and is_state_dict(obj.get("ema")):
        ema = strip_prefix(obj["ema"], "module.")
        raw = strip_prefix(obj["model"], "module.") if is_state_dict(obj.get("model")) else ema
        return raw, ema, obj.get("args"), int(obj.get("steps") or 0), is_state_dict(obj.get("model"))
    raise refuse(source, f"the file is {describe_file(obj)}",
                 "give a training checkpoint ({model, ema, opt, args, steps}) or the released EMA state dict")


def _check_kind(source: str, ema: Mapping[str, torch.Tensor], args: Any) -> None:
    """Refuse a file of another release before converting anything."""
    if "x_embedder.proj.weight" not in ema:
        raise refuse(source, f"the weights are not a latent SiT: this is {describe_file({'ema': ema})}",
                     "choose the --from that matches the file")
    has_bn = "bn.running_mean" in ema
    if source == "repa-e" and not has_bn:
        raise refuse(source, "the SiT has no latent batch-norm statistics (bn.running_mean), so it is not a REPA-E "
                     "model", "use --from repa or --from irepa-ldm")
    if source != "repa-e" and has_bn:
        raise refuse(source, "the SiT carries latent batch-norm statistics: this is a REPA-E checkpoint",
                     "use --from repa-e")
    new_layout = any(".projection_layer." in k for k in ema)
    irepa_args = arg(args, "projection_layer_type") is not None or arg(args, "spnorm_method") is not None
    if source == "repa" and (new_layout or irepa_args):
        raise refuse(source, "the checkpoint is of the iREPA ldm/ code (selectable projectors / spatial "
                     "normalisation)", "use --from irepa-ldm")
    if source == "irepa-ldm" and args is not None and not irepa_args and not new_layout:
        raise refuse(source, "the checkpoint's arguments have no projection_layer_type / spnorm_method: this is a "
                     "REPA checkpoint", "use --from repa")


def _vae_factor(args: Any, channels: int, source: str) -> int:
    """REPA-E's ``--vae f8d4`` / ``f16d32``: the downsampling factor, checked against the SiT's input channels."""
    kind = arg(args, "vae")
    match = re.fullmatch(r"f(\d+)d(\d+)", str(kind)) if kind is not None else None
    if match is None:
        if channels != 4:
            raise refuse(source, f"the SiT takes {channels} latent channels and the arguments name no VAE (f8d4 / "
                         "f16d32)", "import a checkpoint that carries its training arguments")
        return 8
    if int(match.group(2)) != channels:
        raise refuse(source, f"the arguments name the VAE {kind} but the SiT takes {channels} channels",
                     "check that the file and its arguments belong together")
    return int(match.group(1))


def _latent_space(source: str, ema: Mapping[str, torch.Tensor], options: dict[str, Any],
                  args: Any = None) -> tuple[dict, list[str]]:
    """The codec state (VAE and per-channel statistics) and notes on where they came from."""
    vae = options.get("vae")
    channels = ema["x_embedder.proj.weight"].shape[1]
    if source == "repa":
        std = [1.0 / SD_VAE_SCALE] * channels
        vae = vae or "stabilityai/sd-vae-ft-ema"
        return ({"kind": "latent", "vae": vae, "mean": [0.0] * channels, "std": std, "factor": 8},
                [f"latents: SD-VAE scaled by {SD_VAE_SCALE} (REPA's constant); decoded with {vae}"])
    if source == "repa-e":
        if not vae:
            raise refuse(source, "the REPA-E SiT works in the latent space of its end-to-end-tuned VAE, which the "
                         "checkpoint does not hold in a loadable form", "pass --vae DIR (the E2E-VAE as a diffusers "
                         "AutoencoderKL folder, e.g. downloaded from the REPA-E release)")
        mean, var = ema["bn.running_mean"].double(), ema["bn.running_var"].double()
        factor = _vae_factor(args, channels, source)
        return ({"kind": "latent", "vae": vae, "mean": mean.tolist(), "std": var.sqrt().tolist(), "factor": factor},
                ["latents: normalised by the EMA model's batch-norm running mean and sqrt(running var), as REPA-E "
                 f"decodes; VAE {vae}"])
    stats_file = options.get("latent_stats")
    if not vae or not stats_file:
        raise refuse(source, "iREPA ldm/ keeps the VAE and its latent statistics outside the checkpoint",
                     "pass --vae DIR (the sdvae-ft-mse-f8d4 VAE as a diffusers folder) and --latent-stats FILE "
                     "(its -latents-stats.pt)")
    stats = read_released(stats_file, source)
    if not isinstance(stats, Mapping) or not {"latents_scale", "latents_bias"} <= set(stats):
        raise refuse(source, f"{stats_file} has no latents_scale / latents_bias",
                     "give the -latents-stats.pt file that sits beside the VAE checkpoint")
    scale = stats["latents_scale"].double().flatten()
    bias = stats["latents_bias"].double().flatten()
    if scale.numel() != channels or bias.numel() != channels:
        raise refuse(source, f"{stats_file} has statistics for {scale.numel()} channels, the SiT takes {channels}",
                     "give the statistics of the VAE the run was trained on")
    return ({"kind": "latent", "vae": vae, "mean": bias.tolist(), "std": (1.0 / scale).tolist(), "factor": 8},
            [f"latents: (z - latents_bias) * latents_scale from {stats_file}; VAE {vae}"])


def import_sit(source: str, path: str | Path, options: dict[str, Any]) -> ImportedRun:
    """``repa``, ``irepa-ldm`` or ``repa-e``: a latent SiT release as an :class:`ImportedRun`."""
    obj = read_released(path, source)
    raw, ema, args, step, has_raw = _open(obj, source)
    _check_kind(source, ema, args)
    depth_arg = arg(args, "encoder_depth", options.get("align_depth"))
    raw, ema = unlegacy(raw, depth_arg, source), unlegacy(ema, depth_arg, source)
    model_name = arg(args, "model")
    heads = options.get("num_heads")
    raw_backbone, raw_proj, _ = split_state(raw)
    ema_backbone, ema_proj, _ = split_state(ema)
    model, arch = convert_sit(raw_backbone, source, model_name, heads)
    ema_model, _ = convert_sit(ema_backbone, source, model_name, heads)
    notes = [] if has_raw else ["the release holds the EMA weights only: the raw weights are a copy of them"]

    num_classes = arg(args, "num_classes")
    if num_classes is not None and int(num_classes) != arch.num_classes:
        raise refuse(source, f"the label table has {arch.num_classes + 1} rows but the run had {num_classes} classes "
                     "(trained without label dropout, so no null class for guidance?)",
                     "irepa's SiT needs the null-class row; import a run trained with cfg_prob > 0")
    prediction = arg(args, "prediction", "v")
    if prediction != "v":
        raise refuse(source, f"the run predicts {prediction!r}", "irepa imports velocity-prediction SiTs only")

    layout = projector_layout(ema_proj, source) if ema_proj else None
    kind = "vanilla" if layout is None else ("irepa" if layout.kind == "conv" else "repa")
    settings: dict[str, Any] = recipe_overrides(f"sit-{kind}")
    settings.update(arch.settings())
    aligner = None
    if layout is not None:
        encoders = options.get("encoders") or arg(args, "enc_type")
        if args is None and source == "repa":  # REPA's release: DINOv2-B at block 8, lambda 0.5 (its README)
            encoders, depth_arg = encoders or "dinov2-vit-b", depth_arg or 8
            notes.append(f"no arguments in the file: encoder {encoders}, depth {depth_arg} (REPA's released model)")
        if not depth_arg:
            raise refuse(source, "the file does not say after which block the projectors read (encoder_depth)",
                         "pass --align-depth N")
        names = encoder_names_for(layout, encoders, source)
        coeffs = split_coeffs(arg(args, "proj_coeff", 0.5), len(names), source)
        depth = int(depth_arg)
        if not 1 <= depth <= arch.depth:
            raise refuse(source, f"encoder_depth {depth} is outside 1..{arch.depth}", "pass --align-depth")
        settings.update({
            "align.enabled": True, "align.depth": depth, "align.projector": layout.kind,
            "align.kernel_size": layout.kernel_size, "align.projector_hidden_dim": layout.hidden_dim,
            "align.encoders": [{"name": n, "coeff": c} for n, c in zip(names, coeffs)], "align.coeff": coeffs[0],
        })
        norm = arg(args, "spnorm_method", "none")
        if norm not in ("none", "zscore"):
            raise refuse(source, f"spatial normalisation {norm!r} has no irepa equivalent", "irepa has none and zscore")
        if arg(args, "zscore_proj_skip_std", False):
            raise refuse(source, "the run z-scored without the standard deviation (zscore_proj_skip_std)",
                         "irepa's z-score divides by it; this variant cannot be imported")
        settings["align.norm"] = norm
        if norm == "zscore":
            settings["align.zscore_alpha"] = float(arg(args, "zscore_alpha", 0.6))
        aligner = aligner_state(ema_proj, names)
        if raw_proj and raw_proj.keys() == ema_proj.keys():
            aligner = aligner_state(raw_proj, names)  # the projectors train with the raw weights; EMA has a copy
    settings.update({
        "objective.path": arg(args, "path_type", "linear"),
        "objective.time_sampling": arg(args, "weighting", "uniform"),
        "objective.label_dropout": float(arg(args, "cfg_prob", 0.1)),
        "data.flip": False,
        "data.vae": "stabilityai/sd-vae-ft-mse" if source == "repa" else options.get("vae"),
        **PUBLISHED_SAMPLER[source],
    })
    for field, name in [("train.lr", "learning_rate"), ("train.weight_decay", "adam_weight_decay"),
                        ("train.adam_eps", "adam_epsilon"), ("train.grad_clip", "max_grad_norm"),
                        ("train.batch_size", "batch_size"), ("train.ema_decay", "ema_decay")]:
        if arg(args, name) is not None:
            settings[field] = arg(args, name)
    if arg(args, "adam_beta1") is not None:
        settings["train.betas"] = [float(arg(args, "adam_beta1")), float(arg(args, "adam_beta2", 0.999))]
    codec, latent_notes = _latent_space(source, ema, options, args)
    resolution = arch.input_size * codec["factor"]
    if arg(args, "resolution") is not None and int(arg(args, "resolution")) != resolution:
        raise refuse(source, f"the arguments say resolution {arg(args, 'resolution')} but the SiT's {arch.input_size}² "
                     f"latents of an f{codec['factor']} VAE are {resolution} px", "check the file and its arguments")
    settings["data.resolution"] = resolution
    return ImportedRun(source, settings, model, ema_model, codec, aligner, step=step, notes=notes + latent_notes)

"""``meanflow``: the MeanFlow authors' PyTorch port (Gsunshine/py-meanflow), its CIFAR-10 DDPM++ U-Net.

The port saves ``{"model", "optimizer", "lr_schedule", "epoch", "args"}``; ``model`` is its ``MeanFlow``
module: the network under ``net.``, the EMA that sampling uses under ``net_ema.``, further EMAs under
``net_ema<i>.`` and the count of EMA updates (= optimiser steps) in ``num_updates``. The network is
EDM's SongUNet (``args.arch == "unet"``) fed ``(t, h = t - r)``: irepa's
:class:`~irepa.models.songunet.SongUNet` with ``interval_embedding``, the same time convention
(t = 1 noise) and scale. What is converted:

* **Names.** ``enc.<R>x<R>_conv`` -> ``stem``; ``enc.<r>x<r>_down`` / ``_block<i>`` -> ``down.<level>.<j>``;
  ``dec.<r>x<r>_in0/1`` -> ``mid.0/1``; ``dec.<r>x<r>_up`` / ``_block<i>`` -> ``up.<k>.<j>`` (k = 0 the
  lowest level); ``dec.<R>x<R>_aux_norm/conv`` -> ``out_norm/out_conv``; ``map_layer0/1`` ->
  ``embed_mlp.0/2``; inside a block ``norm0, conv0, affine, norm1, conv1, norm2, qkv, proj`` ->
  ``norm_in, conv_in, emb_proj, norm_mid, conv_out, attn_norm, attn_qkv, attn_out``.
* **Resampling filters** are checked against irepa's fixed ``[1, 3, 3, 1]`` and not stored.
* **Labels.** The port's model is unconditional; the run gets one class whose embedding is zero, so the
  network computes exactly what the release computes.
* **EDM augmentation conditioning** (``map_augment``, with ``--use_edm_aug``) is dropped: the port
  samples with no augmentation labels, where that layer adds nothing; irepa trains without EDM's
  augmentation pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from irepa.models.songunet import Resample
from irepa.recipes import recipe_overrides

from .base import ImportedRun, arg, read_released, refuse

_BLOCK_PARTS = {"norm0": "norm_in", "conv0": "conv_in", "affine": "emb_proj", "norm1": "norm_mid",
                "conv1": "conv_out", "skip": "skip", "norm2": "attn_norm", "qkv": "attn_qkv", "proj": "attn_out"}
_FILTER = (1, 3, 3, 1)
_DATASET_SIZE = {"cifar10": 32, "mnist": 32}  # the port's datasets, at the size its loaders give


def _networks(model: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The module's state split by network: ``net``, ``net_ema``, ``net_ema1``, ..."""
    nets: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in model.items():
        head, _, rest = str(key).partition(".")
        if rest and re.fullmatch(r"net(_ema\d*)?", head):
            nets.setdefault(head, {})[rest] = value
    return nets


def _levels(state: Mapping[str, torch.Tensor], source: str) -> tuple[int, list[int]]:
    """The input resolution and the resolution of every level, from the encoder's names."""
    stems = [k for k in state if re.fullmatch(r"enc\.\d+x\d+_conv\.weight", k)]
    if len(stems) != 1:
        raise refuse(source, "the weights have no single enc.<R>x<R>_conv stem: not the port's SongUNet",
                     "check --from: this file is of another kind")
    size = int(stems[0].split(".")[1].split("x")[0])
    found = {int(m.group(1)) for k in state if (m := re.match(r"enc\.(\d+)x\d+_", k))}
    levels = []
    while size >> len(levels) in found:
        levels.append(size >> len(levels))
    return size, levels


def _rename_block(prefix: str, target: str, state: Mapping[str, torch.Tensor], out: dict, source: str) -> None:
    for key, value in state.items():
        if not key.startswith(prefix + "."):
            continue
        part, _, leaf = key[len(prefix) + 1:].partition(".")
        if part not in _BLOCK_PARTS:
            raise refuse(source, f"unexpected layer {key} in a U-Net block",
                         "import a checkpoint of the port's SongUNet")
        if leaf == "resample_filter":
            kernel = Resample(_FILTER, up=False).kernel
            if value.shape != kernel.shape or not torch.allclose(value.float(), kernel):
                raise refuse(source, f"{key} is not the [1, 3, 3, 1] resampling filter",
                             "irepa's SongUNet has only that one")
            continue
        out[f"{target}.{_BLOCK_PARTS[part]}.{leaf}"] = value


def convert_song_unet(state: Mapping[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The port's SongUNet state dict -> irepa's SongUNet, with the sizes it shows."""
    unsupported = [k for k in state if k.startswith(("map_noise.", "map_label.")) or "_aux_down" in k
                   or "_aux_skip" in k or "_aux_residual" in k or "_aux_up" in k]
    if unsupported:
        raise refuse(source, f"the U-Net has {unsupported[0].split('.')[0]}-style layers ({unsupported[0]}): a Fourier "
                     "embedding, labels, or a skip / residual encoder or decoder, which the port's config does not use",
                     "irepa imports the port's DDPM++ configuration (positional embedding, standard encoder, "
                     "standard decoder)")
    size, levels = _levels(state, source)
    stem = state[f"enc.{size}x{size}_conv.weight"]
    base, in_channels = stem.shape[0], stem.shape[1]
    out: dict[str, torch.Tensor] = {"stem.weight": stem, "stem.bias": state[f"enc.{size}x{size}_conv.bias"]}
    mult, attention, blocks_per_level = [], [], set()
    for level, r in enumerate(levels):
        names = [f"enc.{r}x{r}_down"] if level else []
        count = len({k.split(".")[1] for k in state if re.match(rf"enc\.{r}x{r}_block\d+\.", k)})
        blocks_per_level.add(count)
        names += [f"enc.{r}x{r}_block{i}" for i in range(count)]
        for j, name in enumerate(names):
            _rename_block(name, f"down.{level}.{j}", state, out, source)
        last = f"enc.{r}x{r}_block{count - 1}"
        mult.append(state[f"{last}.conv0.weight"].shape[0] // base)
        if f"{last}.qkv.weight" in state:
            attention.append(level)
    if len(blocks_per_level) != 1:
        raise refuse(source, f"the levels have different block counts {sorted(blocks_per_level)}",
                     "irepa's SongUNet has the same count on every level")
    layers = blocks_per_level.pop()
    low = levels[-1]
    for j in (0, 1):
        _rename_block(f"dec.{low}x{low}_in{j}", f"mid.{j}", state, out, source)
    for k, r in enumerate(reversed(levels)):
        names = [f"dec.{r}x{r}_up"] if k else []
        names += [f"dec.{r}x{r}_block{i}" for i in range(layers + 1)]
        for j, name in enumerate(names):
            _rename_block(name, f"up.{k}.{j}", state, out, source)
    for part, target in (("aux_norm", "out_norm"), ("aux_conv", "out_conv")):
        for leaf in ("weight", "bias"):
            out[f"{target}.{leaf}"] = state[f"dec.{size}x{size}_{part}.{leaf}"]
    for i, target in ((0, "embed_mlp.0"), (1, "embed_mlp.2")):
        for leaf in ("weight", "bias"):
            out[f"{target}.{leaf}"] = state[f"map_layer{i}.{leaf}"]
    emb_in, emb_dim = state["map_layer0.weight"].shape[1], state["map_layer0.weight"].shape[0]
    if emb_in != 4 * base or emb_dim != 4 * base:
        raise refuse(source, f"the embedding MLP is {emb_in} -> {emb_dim} for {base} base channels, not the port's "
                     f"2 x {2 * base} time features -> {4 * base}", "import a checkpoint of the port's configuration")
    out["class_embed.weight"] = torch.zeros(2, emb_in, dtype=state["map_layer0.weight"].dtype)  # one class + null
    leftover = [k for k in state if not k.startswith(("enc.", "dec.", "map_layer", "map_augment."))]
    if leftover:
        raise refuse(source, f"layers irepa does not know: {leftover[:3]}",
                     "import a checkpoint of the port's SongUNet")
    sizes = dict(input_size=size, in_channels=in_channels, base_channels=base, channel_mult=mult,
                 layers_per_block=layers, attention_levels=attention)
    return out, sizes


def import_meanflow(source: str, path: str | Path, options: dict[str, Any]) -> ImportedRun:
    from .sit_sources import describe_file

    obj = read_released(path, source)
    model = obj.get("model") if isinstance(obj, Mapping) else None
    if not isinstance(model, Mapping) or not any(str(k).startswith("net.") for k in model) or "epoch" not in obj:
        raise refuse(source, f"the file is {describe_file(obj)}, not a checkpoint of the MeanFlow PyTorch port",
                     "give its checkpoint-*.pth ({model: net / net_ema, optimizer, lr_schedule, epoch, args})")
    args = obj.get("args")
    arch = arg(args, "arch", "unet")
    if arch != "unet":
        raise refuse(source, f"the port's network {arch!r} is not one irepa can rebuild", "irepa imports its 'unet'")
    nets = _networks(model)
    if "net_ema" not in nets:
        raise refuse(source, "the checkpoint has no net_ema weights",
                     "give a checkpoint written by the port's trainer")
    raw, sizes = convert_song_unet(nets["net"], source)
    ema, _ = convert_song_unet(nets["net_ema"], source)
    extra_names = sorted((n for n in nets if re.fullmatch(r"net_ema\d+", n)), key=lambda n: int(n[7:]))
    extra = [convert_song_unet(nets[n], source)[0] for n in extra_names]
    dataset = arg(args, "dataset")
    if dataset in _DATASET_SIZE and _DATASET_SIZE[dataset] != sizes["input_size"]:
        raise refuse(source, f"the arguments say dataset {dataset} ({_DATASET_SIZE[dataset]} px) but the weights are "
                     f"{sizes['input_size']} px", "check that the file and its arguments belong together")
    decays = [float(d) for d in (arg(args, "ema_decays") or [])]
    if len(decays) != len(extra):
        raise refuse(source, f"the arguments list {len(decays)} extra EMA decay(s) but the file has {len(extra)} "
                     "extra EMA network(s)", "check that the file and its arguments belong together")
    tr_sampler = arg(args, "tr_sampler", "v1")
    if tr_sampler not in ("v0", "v1"):
        raise refuse(source, f"tr_sampler {tr_sampler!r} is not one of the port's (v0, v1)",
                     "check the file's arguments")

    settings: dict[str, Any] = recipe_overrides("meanflow-vanilla")
    settings.update({
        "model.name": "SongUNet-B" if sizes["base_channels"] == 128 else "SongUNet-S",
        "model.num_classes": 1,  # unconditional: one class, its embedding zero
        "model.dropout": float(arg(args, "dropout", 0.0)),
        **{f"model.{k}": v for k, v in sizes.items()},
        # no alignment in the release; the stage `irepa diagnose` reads, and that alignment would use when
        # fine-tuning with it: down.1 (the attention level, 16 px at 32 px)
        "align.depth": min(2, len(sizes["channel_mult"]) + 1),
        "data.resolution": sizes["input_size"],
        "data.flip": True,
        "objective.time_sampling": "lognormal",  # logit-normal on the linear path
        "objective.p_mean": float(arg(args, "P_mean_t", -0.6)),
        "objective.p_std": float(arg(args, "P_std_t", 1.6)),
        "objective.label_dropout": 0.0,
        "objective.meanflow.r_p_mean": float(arg(args, "P_mean_r", -4.0)),
        "objective.meanflow.r_p_std": float(arg(args, "P_std_r", 1.6)),
        "objective.meanflow.pairing": "sorted" if tr_sampler == "v0" else "clamped",
        "objective.meanflow.ratio": float(arg(args, "ratio", 0.75)),
        "objective.meanflow.adaptive_p": float(arg(args, "norm_p", 0.75)),
        "objective.meanflow.adaptive_c": float(arg(args, "norm_eps", 1e-3)),
        "train.lr": float(arg(args, "lr", 6e-4)),
        "train.betas": [float(b) for b in (arg(args, "optimizer_betas") or [0.9, 0.999])],
        "train.weight_decay": 0.0,
        "train.ema_decay": float(arg(args, "ema_decay", 0.9999)),
        "train.extra_ema_decays": decays,
        "sample.kind": "meanflow",
        "sample.steps": 1,
        "sample.cfg_scale": 1.0,
    })
    step = int(model["num_updates"]) if "num_updates" in model else 0
    notes = [f"the port counts epochs (this file: epoch {obj.get('epoch')}); the run starts at its "
             f"{step} EMA updates (= optimiser steps)",
             "unconditional release: one class, whose embedding is zero"]
    if "map_augment.weight" in nets["net"]:
        notes.append("EDM augmentation conditioning (map_augment) dropped: unused when sampling, irepa trains "
                     "without EDM's augmentation pipeline")
    codec = {"kind": "pixels", "channels": sizes["in_channels"]}
    return ImportedRun(source, settings, raw, ema, codec, None, extra, step=step, notes=notes)

"""What every importer shares: reading a released file, the imported run as data, and writing it as a run folder.

An importer turns a checkpoint of another code base into an :class:`ImportedRun`: irepa state dicts
for the backbone (raw and EMA), the alignment head and any further EMAs, the dotted config settings
the release implies (architecture, recipe, sampler) and the codec. :func:`write_run` then writes an
ordinary run folder, ``config.yaml`` and a verified ``checkpoints/step_*.pt``, through the same writer
the trainer uses, so every command that reads a run reads it. Optimiser state is never carried over.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from irepa.errors import CheckpointError, ConfigError, RunExistsError

log = logging.getLogger(__name__)


@dataclass
class ImportedRun:
    """A released checkpoint in irepa's terms, before it is written."""

    source: str
    settings: dict[str, Any]  # dotted config fields (recipe preset first, then what the release says)
    model: dict[str, torch.Tensor]  # backbone, raw weights
    ema: dict[str, torch.Tensor]  # backbone, the EMA that sampling uses
    codec: dict[str, Any]  # Codec.checkpoint_state()
    aligner: dict[str, torch.Tensor] | None = None
    extra_ema: list[dict[str, torch.Tensor]] = field(default_factory=list)
    step: int = 0
    notes: list[str] = field(default_factory=list)  # what the importer decided, for config.yaml's reader


def refuse(source: str, what: str, fix: str) -> CheckpointError:
    """The one-line error of an import: ``--from SOURCE: what — fix``."""
    return CheckpointError(f"--from {source}: {what}", fix=fix)


def read_released(path: str | Path, source: str) -> Any:
    """``torch.load`` a released file on the CPU.

    Released training checkpoints pickle an ``argparse.Namespace`` of their arguments; that class is
    allowed, nothing else beyond tensors and containers (no code from the file runs).
    """
    path = Path(path)
    if not path.is_file():
        raise refuse(source, f"{path} does not exist", "give the path of the downloaded checkpoint file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, truncated, or a pickle with other classes
        reason = " ".join(str(err).split())[:300]
        raise refuse(source, f"{path} cannot be read as a PyTorch checkpoint ({reason})",
                     "check the download (size, checksum) and that the file is the one --from names") from err


def arg(args: Any, name: str, default: Any = None) -> Any:
    """A field of a checkpoint's arguments (a Namespace or a dict), ``-``/``_`` spelled either way."""
    if args is None:
        return default
    getter = args.get if isinstance(args, Mapping) else (lambda k, d: getattr(args, k, d))
    for key in (name, name.replace("_", "-"), name.replace("-", "_")):
        value = getter(key, None)
        if value is not None:
            return value
    return default


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys under ``prefix`` with it removed (e.g. ``module.`` of DDP, ``net.`` of JiT's denoiser)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def block_count(state: Mapping[str, torch.Tensor], prefix: str = "blocks.") -> int:
    """How many transformer blocks a state dict holds (``blocks.<i>.`` keys, numbered from 0)."""
    indices = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    if indices and indices != set(range(max(indices) + 1)):
        raise ConfigError(f"the state dict's blocks are not numbered 0..{max(indices)}: {sorted(indices)}")
    return len(indices)


def grid_side(num_tokens: int, source: str) -> int:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise refuse(source, f"the position table has {num_tokens} tokens, not a square grid",
                     "only square inputs are supported by the importer")
    return side


# ---------------------------------------------------------------------------------------------
# projectors


@dataclass
class ProjectorLayout:
    kind: str  # mlp | linear | conv
    out_dims: list[int]
    kernel_size: int = 3
    hidden_dim: int = 2048


def projector_layout(state: Mapping[str, torch.Tensor], source: str) -> ProjectorLayout | None:
    """The alignment heads in ``projectors.<i>.…`` keys: their kind, kernel, widths (None: no projectors).

    Both layouts of the reference code are read: ``projectors.<i>.<layer>`` (REPA's MLP) and
    ``projectors.<i>.projection_layer.<layer>`` (iREPA's selectable MLP / linear / conv).
    """
    keys = [k for k in state if k.startswith("projectors.")]
    if not keys:
        return None
    heads = sorted({int(k.split(".")[1]) for k in keys})
    kinds, dims, kernels, hidden = set(), [], set(), set()
    for i in heads:
        sub = {k[len(f"projectors.{i}."):]: v for k, v in state.items() if k.startswith(f"projectors.{i}.")}
        sub = strip_prefix(sub, "projection_layer.")
        if {"0.weight", "2.weight", "4.weight"} <= set(sub):
            kinds.add("mlp")
            dims.append(sub["4.weight"].shape[0])
            hidden.add(sub["0.weight"].shape[0])
        elif set(sub) == {"weight", "bias"} and sub["weight"].ndim == 2:
            kinds.add("linear")
            dims.append(sub["weight"].shape[0])
        elif set(sub) == {"weight", "bias"} and sub["weight"].ndim == 4:
            kh, kw = sub["weight"].shape[-2:]
            if kh != kw or kh % 2 == 0:
                raise refuse(source, f"projector {i} is a {kh}x{kw} convolution",
                             "irepa's conv projector is k x k, k odd")
            kinds.add("conv")
            kernels.add(kh)
            dims.append(sub["weight"].shape[0])
        else:
            raise refuse(source, f"projector {i} has layers {sorted(sub)}, none of REPA's MLP, a linear map or a conv",
                         "import a checkpoint of the REPA / iREPA code")
    if len(kinds) > 1 or len(kernels) > 1 or len(hidden) > 1:
        raise refuse(source, f"the projectors differ in kind or shape ({sorted(kinds)}, kernels {sorted(kernels)})",
                     "irepa builds every projector of a run alike")
    return ProjectorLayout(kinds.pop(), dims, kernels.pop() if kernels else 3, hidden.pop() if hidden else 2048)


def aligner_state(state: Mapping[str, torch.Tensor], encoder_names: list[str]) -> dict[str, torch.Tensor]:
    """``projectors.<i>.[projection_layer.]<rest>`` -> irepa's ``projectors.<encoder key>.<rest>``."""
    out = {}
    for key, value in state.items():
        if not key.startswith("projectors."):
            continue
        _, index, rest = key.split(".", 2)
        rest = rest[len("projection_layer."):] if rest.startswith("projection_layer.") else rest
        weight = state.get(key.rsplit(".", 1)[0] + ".weight")
        if rest in ("weight", "bias") and weight is not None and weight.ndim == 4:  # irepa's conv sits at .conv
            rest = f"conv.{rest}"
        out[f"projectors.{encoder_names[int(index)].replace('.', '_')}.{rest}"] = value
    return out


def encoder_names_for(layout: ProjectorLayout, enc_type: str | None, source: str) -> list[str]:
    """The encoder of each projector, from the checkpoint's ``enc_type`` (``a,b``), checked against the catalog."""
    from irepa.encoders.registry import get_spec

    if not enc_type:
        raise refuse(source, f"the checkpoint has {len(layout.out_dims)} projector(s) but names no encoder (enc_type)",
                     "pass --encoders NAME[,NAME] (the encoders the run was aligned with)")
    names = [n.strip() for n in str(enc_type).split(",") if n.strip()]
    if len(names) != len(layout.out_dims):
        raise refuse(source, f"{len(layout.out_dims)} projector(s) but {len(names)} encoder(s) named ({enc_type})",
                     "pass --encoders with one name per projector")
    for name, dim in zip(names, layout.out_dims):
        try:
            spec = get_spec(name)
        except (KeyError, ValueError) as err:
            raise refuse(source, f"encoder {name!r} is not one irepa knows",
                         "pass --encoders with irepa's name for it (irepa encoders list)") from err
        if spec.embed_dim != dim:
            raise refuse(source, f"projector for {name} outputs {dim} channels but {name} has {spec.embed_dim}",
                         "pass --encoders naming the encoder the run was aligned with")
    return names


def split_coeffs(value: Any, count: int, source: str) -> list[float]:
    """``proj_coeff`` as one float per encoder (``"0.5"``, ``0.5`` or ``"0.5,0.5"``)."""
    parts = [float(v) for v in str(value).split(",") if v.strip()]
    if len(parts) == 1:
        return parts * count
    if len(parts) != count:
        raise refuse(source, f"proj_coeff {value!r} gives {len(parts)} coefficients for {count} encoders",
                     "give one coefficient, or one per encoder")
    return parts


# ---------------------------------------------------------------------------------------------
# writing


def build_config(imported: ImportedRun, out: str | Path):
    """The run config an import implies: library defaults < the recipe's preset < the release's settings."""
    from irepa.config import load_config

    settings = dict(imported.settings)
    settings["out"] = str(out)
    return load_config(None, settings)


def check_loadable(imported: ImportedRun, cfg) -> None:
    """Build the backbone (and alignment head) the config describes and load every state dict strictly."""
    from irepa.align import Aligner
    from irepa.train.aligned_model import build_backbone

    backbone = build_backbone(cfg)
    for name, state in [("model", imported.model), ("ema", imported.ema)] + [
        (f"extra_ema[{i}]", s) for i, s in enumerate(imported.extra_ema)
    ]:
        try:
            backbone.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise refuse(imported.source, f"the {name} weights do not fit the inferred {cfg.model.name} "
                         f"({' '.join(str(err).split())[:300]})", "report the checkpoint; nothing was written") from err
    if imported.aligner is not None:
        from irepa.encoders.registry import get_spec

        a = cfg.align
        aligner = Aligner(
            backbone.hidden_size, {e.name: get_spec(e.name).embed_dim for e in a.encoders}, backbone.grid,
            projector=a.projector, kernel_size=a.kernel_size, projector_hidden_dim=a.projector_hidden_dim,
            norm=a.norm, alpha=a.zscore_alpha,
        )
        try:
            aligner.load_state_dict(imported.aligner, strict=True)
        except RuntimeError as err:
            raise refuse(imported.source, f"the projectors do not fit ({' '.join(str(err).split())[:300]})",
                         "report the checkpoint; nothing was written") from err


def write_run(imported: ImportedRun, out: str | Path) -> Path:
    """Write ``out/config.yaml`` and ``out/checkpoints/step_*.pt`` (atomic, with its manifest); returns the file.

    Refused when ``out`` already holds files: an import never overwrites a run.
    """
    from irepa.config import save_config, to_dict
    from irepa.train.checkpoint import atomic_torch_save, checkpoint_path

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunExistsError(f"{out} already exists and is not empty; nothing was written",
                             fix="choose a new --out folder")
    cfg = build_config(imported, out)
    check_loadable(imported, cfg)
    state = {
        "model": imported.model,
        "aligner": imported.aligner,
        "ema": imported.ema,
        "extra_ema": imported.extra_ema,
        "optimizer": None,  # never imported: `irepa train --init-from` starts a fresh optimiser
        "step": int(imported.step),
        "config": to_dict(cfg),
        "codec": imported.codec,
        "end_to_end": None,
        "imported": {"source": imported.source, "notes": list(imported.notes)},
    }
    path = checkpoint_path(out / "checkpoints", imported.step)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, path)
    save_config(cfg, out / "config.yaml")
    for note in imported.notes:
        log.info("%s: %s", imported.source, note)
    return path

"""Run configuration: dataclasses, loaded from YAML, every field overridable from the command line.

Precedence is defaults < YAML file < command line. Each section belongs to the part of the library
that consumes it; :class:`RunConfig` only composes them.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from irepa.align.normalize import NORMS
from irepa.data.config import DataConfig
from irepa.diffusion.samplers import SamplerConfig
from irepa.errors import ConfigError
from irepa.objectives.base import ObjectiveConfig
from irepa.precision import precision_name
from irepa.train.end_to_end import EndToEndConfig
from irepa.utils.io import atomic_write_text


@dataclass
class ModelSection:
    name: str = "SiT-B/2"
    input_size: int = 32  # latent (or pixel) side length
    in_channels: int = 4
    num_classes: int = 1000
    qk_norm: bool = False  # SiT: RMSNorm on queries and keys (JiT always has it)
    # None: the named model's own value; set to build a custom-size model
    depth: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None
    bottleneck_dim: int | None = None  # JiT: width of the bottleneck patch embedding
    in_context_start: int | None = None  # JiT: block before which the class tokens are prepended
    in_context_len: int | None = None  # JiT: how many class tokens
    fp32_ops: bool | None = None  # JiT: float32 attention logits and RMSNorms under autocast (None: true, as JiT)

    def overrides(self, interval_embedding: bool = False) -> dict:
        """Keyword overrides for ``irepa.models.create_model`` (only what was set, and what the model has)."""
        out = {"input_size": self.input_size, "in_channels": self.in_channels, "num_classes": self.num_classes}
        if self.qk_norm:
            out["qk_norm"] = True
        if interval_embedding:
            out["interval_embedding"] = True
        optional = ("depth", "hidden_size", "num_heads", "patch_size", "bottleneck_dim", "in_context_start",
                    "in_context_len", "fp32_ops")
        out.update({k: v for k in optional if (v := getattr(self, k)) is not None})
        return out


@dataclass
class EncoderEntry:
    name: str = "dinov2-vit-b"
    coeff: float | None = None  # None: the alignment section's coeff
    weights: str | None = None  # None: local cache / hub; a path; or "random" (tests)


@dataclass
class AlignSection:
    enabled: bool = True
    encoders: list[EncoderEntry] = field(default_factory=lambda: [EncoderEntry()])
    coeff: float = 0.5  # lambda in L = L_diffusion + lambda * L_align
    depth: int = 8  # hidden state after this block (1-indexed)
    projector: str = "mlp"
    kernel_size: int = 3
    projector_hidden_dim: int = 2048
    norm: str = "none"  # "none" (REPA) or "zscore" (iREPA)
    zscore_alpha: float = 0.6
    encoder_batch_size: int | None = None  # micro-batch the encoders to bound memory
    # Pixels fed to every encoder. None: the model's token grid times the encoder's patch size, so
    # the encoder's tokens match the grid exactly; otherwise its tokens are resampled to the grid.
    encoder_resolution: int | None = None
    # How images reach the encoder's input size: "reference" as the paper's code (bicubic / bilinear
    # without antialias; DINOv3 antialiased), or "antialias" (low-pass when shrinking, like PIL).
    encoder_resize: str = "reference"
    # Position embeddings resampled to the encoder grid: "reference" as the paper's code (timm's bicubic
    # with antialias; bilinear for PE), or "upstream" as the encoder's release (DINOv2 without antialias,
    # MoCo v3 sin-cos regenerated).
    encoder_pos_embed: str = "reference"
    # Encode the training set once and train on the stored tokens (needs data.flip false: the targets
    # of an un-augmented dataset never change). Stored under $IREPA_HOME/targets.
    cache_targets: bool = False


@dataclass
class TrainSection:
    steps: int = 400_000
    batch_size: int = 256  # global batch per optimizer step (all processes, all accumulation steps)
    grad_accum: int = 1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping
    decay_1d_params: bool = True  # false: no weight decay on biases, norms and other 1-D parameters (JiT)
    lr_schedule: str = "constant"  # constant | cosine (to min_lr at the last step), after the warm-up
    warmup_steps: int = 0  # linear warm-up of the learning rate from 0
    min_lr: float = 0.0
    ema_decay: float = 0.9999  # the EMA that sampling and evaluation use
    extra_ema_decays: list[float] = field(default_factory=list)  # further EMAs kept in checkpoints (JiT: 0.9996)
    ema_warmup: bool = False  # ramp the decay as (1 + step) / (10 + step) for short runs
    max_skipped_steps: int = 100  # fp16: stop after this many consecutive loss-scaler overflows
    mixed_precision: str = "fp32"  # fp32 | bf16 | fp16 (irepa.precision; "no" is read as fp32)
    compile: bool = False
    seed: int = 0
    log_every: int = 100
    sample_every: int = 10_000
    ckpt_every: int = 50_000
    keep_checkpoints: int = 3  # step checkpoints kept besides the latest; 0 keeps all
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard, wandb
    grid_classes: int = 8  # rows of the periodic sample grid
    grid_per_class: int = 8


@dataclass
class RunConfig:
    recipe: str = "sit"  # a family (sit | jit | meanflow | repa-e) or <family>-<alignment>: see irepa.recipes
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    align: AlignSection = field(default_factory=AlignSection)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainSection = field(default_factory=TrainSection)
    sample: SamplerConfig = field(default_factory=SamplerConfig)
    end_to_end: EndToEndConfig = field(default_factory=EndToEndConfig)  # REPA-E: train the VAE too
    out: str = "runs/default"


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(tp: Any, value: Any, where: str) -> Any:
    tp = _strip_optional(tp)
    if value is None:
        return None
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if isinstance(value, str):
            value = value.split(",")
        return tuple(_coerce(a, v, where) for a, v in zip(typing.get_args(tp), value))
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return bool(value)
    if tp in (int, float, str):
        try:
            return tp(value)
        except (TypeError, ValueError) as err:
            example = {"int": "8", "float": "1e-4", "str": "name"}[tp.__name__]
            fix = f"e.g. --{where} {example}"
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}", fix=fix) from err
    return value


def _encoder_entry_from(value: Any) -> Any:
    """Accept ``name`` or ``name:coeff`` strings as encoder entries."""
    if isinstance(value, str):
        name, _, coeff = value.partition(":")
        try:
            return {"name": name, "coeff": float(coeff) if coeff else None}
        except ValueError:
            raise ConfigError(f"align.encoders: {value!r} should be name or name:coefficient") from None
    return value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys are an error naming the valid ones."""
    hints = typing.get_type_hints(cls)
    valid = {f.name for f in fields(cls)}
    unknown = set(data) - valid
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {sorted(unknown)}; valid: {sorted(valid)}")
    kwargs = {}
    for key, value in data.items():
        if cls is AlignSection and key == "encoders":
            value = [_encoder_entry_from(v) for v in (value.split(",") if isinstance(value, str) else value)]
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples become lists) suitable for YAML and checkpoints."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(asdict(cfg))


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def upgrade_config_dict(data: dict, stored: bool = False) -> dict:
    """A config dict as written by an earlier release, in today's layout (a copy; unknown keys are kept).

    ``stored``: the complete config of a checkpoint, where a missing field means the run predates it
    and used that field's behaviour of the time (not today's default).
    """
    data = dict(data)
    if "diffusion" in data and "objective" not in data:  # the objective section was called diffusion
        data["objective"] = data.pop("diffusion")
    align = data.get("align")
    if stored and isinstance(align, dict) and "encoder_resize" not in align:  # encoders then resized with antialias
        data["align"] = {**align, "encoder_resize": "antialias", "encoder_pos_embed": "upstream"}
    train = data.get("train")
    if isinstance(train, dict) and train.get("mixed_precision") in ("no", False):  # fp32 was once called no
        data["train"] = {**train, "mixed_precision": "fp32"}
    if isinstance(data.get("sample"), dict) and "path" in data["sample"]:  # samplers take the objective's path
        data["sample"] = {k: v for k, v in data["sample"].items() if k != "path"}
    return data


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            raise ConfigError(f"unknown config key {dotted!r}")
        node = node[p]
    if leaf not in node:
        raise ConfigError(f"unknown config key {dotted!r}; valid here: {sorted(node)}")
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, the recipe's preset, the YAML file, then dotted ``overrides`` such as ``{"train.lr": 2e-4}``.

    The recipe (``recipe`` from the overrides, else from the file, else ``sit``) names a family preset
    of :mod:`irepa.recipes` that sits between the library defaults and the file.
    """
    from irepa.recipes import family_preset

    overrides = dict(overrides or {})
    loaded: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist", fix="pass an existing YAML file, e.g. configs/irepa.yaml"
            )
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is not valid YAML ({' '.join(str(err).split())})") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        loaded = upgrade_config_dict(loaded)
    data = to_dict(RunConfig())
    recipe = overrides.get("recipe", loaded.get("recipe", data["recipe"]))
    for dotted, value in family_preset(str(recipe)).items():
        _set_dotted(data, dotted, value)
    data = _merge(data, loaded)
    for dotted, value in overrides.items():
        _set_dotted(data, dotted, value)
    cfg = from_dict(RunConfig, data, where="")
    validate_config(cfg)
    return cfg


def validate_config(cfg: RunConfig) -> None:
    """Refuse values no run can use, naming the field (``ConfigError``); cheap, before anything is built."""
    t, m, a = cfg.train, cfg.model, cfg.align
    at_least = {
        "train.steps": (t.steps, 1), "train.batch_size": (t.batch_size, 1), "train.grad_accum": (t.grad_accum, 1),
        "train.log_every": (t.log_every, 1), "train.ckpt_every": (t.ckpt_every, 1),
        "train.sample_every": (t.sample_every, 0), "train.keep_checkpoints": (t.keep_checkpoints, 0),
        "train.grid_classes": (t.grid_classes, 1), "train.grid_per_class": (t.grid_per_class, 1),
        "train.warmup_steps": (t.warmup_steps, 0), "train.max_skipped_steps": (t.max_skipped_steps, 1),
        "model.input_size": (m.input_size, 1), "model.in_channels": (m.in_channels, 1),
        "model.num_classes": (m.num_classes, 1), "align.depth": (a.depth, 1), "align.coeff": (a.coeff, 0),
        "train.weight_decay": (t.weight_decay, 0), "train.grad_clip": (t.grad_clip, 0), "train.min_lr": (t.min_lr, 0),
    }
    for name, (value, low) in at_least.items():
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}", fix=f"set --{name} to {low} or more")
    if not t.lr > 0:
        raise ConfigError(f"train.lr must be > 0, got {t.lr}", fix="use a positive learning rate, e.g. --train.lr 1e-4")
    for name, decay in [("train.ema_decay", t.ema_decay)] + [("train.extra_ema_decays", d) for d in t.extra_ema_decays]:
        if not 0 <= decay <= 1:
            raise ConfigError(f"{name} must be in [0, 1], got {decay}", fix="e.g. --train.ema_decay 0.9999")
    t.mixed_precision = precision_name(t.mixed_precision, "train.mixed_precision")  # old spellings: today's name
    if t.lr_schedule not in ("constant", "cosine"):
        raise ConfigError(f"train.lr_schedule must be constant or cosine, got {t.lr_schedule!r}")
    if a.norm not in NORMS:
        raise ConfigError(f"align.norm must be one of {', '.join(NORMS)}, got {a.norm!r}")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by train.grad_accum={t.grad_accum}",
                          fix="choose a batch size that is a multiple of grad_accum")
    cfg.objective.validate()
    cfg.sample.validate()
    cfg.end_to_end.validate()


def save_config(cfg: RunConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def with_defaults(stored: dict) -> dict:
    """A stored config dict in today's layout, completed with today's defaults (fields added since)."""
    return _merge(to_dict(RunConfig()), upgrade_config_dict(stored, stored=True))


def config_from_checkpoint(ckpt: dict) -> RunConfig:
    """The run config stored in a checkpoint (of this or an earlier release) as a :class:`RunConfig`."""
    return from_dict(RunConfig, with_defaults(ckpt["config"]), "checkpoint config")


def config_diff(a: dict, b: dict, keys: list[str] | None = None) -> dict[str, tuple[Any, Any]]:
    """Fields (dotted) whose values differ between two config dicts, optionally under ``keys`` prefixes."""
    fa, fb = flatten(a), flatten(b)
    diff = {}
    for k in sorted(set(fa) | set(fb)):
        if keys is not None and not any(k == p or k.startswith(p + ".") for p in keys):
            continue
        if fa.get(k) != fb.get(k):
            diff[k] = (fa.get(k), fb.get(k))
    return diff


# ---------------------------------------------------------------------------------------------
# command line


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--section.field VALUE`` for every leaf field of :class:`RunConfig` (values parsed as YAML)."""
    group = parser.add_argument_group("config fields (override the YAML file)")
    taken = set(parser._option_string_actions)
    for key in flatten(to_dict(RunConfig())):
        if f"--{key}" in taken:  # a shortcut of the same name already sets this field
            continue
        group.add_argument(f"--{key}", dest=f"cfg:{key}", default=None, metavar="V", help=argparse.SUPPRESS)
    group.description = (
        "any field as --section.field VALUE, e.g. --train.lr 2e-4 --align.norm zscore "
        "--align.encoders dinov2-vit-b:0.5,mocov3-vit-l:0.5"
    )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for name, value in vars(args).items():
        if name.startswith("cfg:") and value is not None:
            out[name[4:]] = _parse_scalar(value)
    return out


def _parse_scalar(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, dict) else value


__all__ = [
    "ModelSection",
    "EncoderEntry",
    "AlignSection",
    "ObjectiveConfig",
    "EndToEndConfig",
    "upgrade_config_dict",
    "TrainSection",
    "RunConfig",
    "DataConfig",
    "SamplerConfig",
    "load_config",
    "save_config",
    "to_dict",
    "from_dict",
    "config_diff",
    "add_config_arguments",
    "overrides_from_args",
    "flatten",
    "config_from_checkpoint",
    "validate_config",
    "with_defaults",
]

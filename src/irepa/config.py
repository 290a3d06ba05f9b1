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
from irepa.utils.io import atomic_write_text


@dataclass
class ModelSection:
    name: str = "SiT-B/2"
    input_size: int = 32  # latent (or pixel) side length
    in_channels: int = 4
    num_classes: int = 1000
    qk_norm: bool = False
    depth: int | None = None  # None: the named size's; set to build a custom-size model
    hidden_size: int | None = None
    num_heads: int | None = None

    def overrides(self) -> dict:
        """Keyword overrides for ``irepa.models.create_model``."""
        out = {
            "input_size": self.input_size,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "qk_norm": self.qk_norm,
        }
        out.update({k: v for k in ("depth", "hidden_size", "num_heads") if (v := getattr(self, k)) is not None})
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


@dataclass
class DiffusionSection:
    path: str = "linear"
    time_sampling: str = "uniform"
    p_mean: float = -1.2
    p_std: float = 1.2
    label_dropout: float = 0.1


@dataclass
class TrainSection:
    steps: int = 400_000
    batch_size: int = 256  # global batch per optimizer step (all processes, all accumulation steps)
    grad_accum: int = 1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # ramp the decay as (1 + step) / (10 + step) for short runs
    mixed_precision: str = "no"  # no | fp16 | bf16
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
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    align: AlignSection = field(default_factory=AlignSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    train: TrainSection = field(default_factory=TrainSection)
    sample: SamplerConfig = field(default_factory=SamplerConfig)
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


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the YAML file, then dotted ``overrides`` such as ``{"train.lr": 2e-4}``."""
    data = to_dict(RunConfig())
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
        data = _merge(data, loaded)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"unknown config key {dotted!r}")
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"unknown config key {dotted!r}; valid here: {sorted(node)}")
        node[leaf] = value
    cfg = from_dict(RunConfig, data, where="")
    validate_config(cfg)
    return cfg


def validate_config(cfg: RunConfig) -> None:
    """Refuse values no run can use, naming the field (``ConfigError``); cheap, before anything is built."""
    t, m, a, d = cfg.train, cfg.model, cfg.align, cfg.diffusion
    at_least = {
        "train.steps": (t.steps, 1), "train.batch_size": (t.batch_size, 1), "train.grad_accum": (t.grad_accum, 1),
        "train.log_every": (t.log_every, 1), "train.ckpt_every": (t.ckpt_every, 1),
        "train.sample_every": (t.sample_every, 0), "train.keep_checkpoints": (t.keep_checkpoints, 0),
        "train.grid_classes": (t.grid_classes, 1), "train.grid_per_class": (t.grid_per_class, 1),
        "model.input_size": (m.input_size, 1), "model.in_channels": (m.in_channels, 1),
        "model.num_classes": (m.num_classes, 1), "align.depth": (a.depth, 1), "align.coeff": (a.coeff, 0),
        "train.weight_decay": (t.weight_decay, 0), "train.grad_clip": (t.grad_clip, 0),
    }
    for name, (value, low) in at_least.items():
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}", fix=f"set --{name} to {low} or more")
    if not t.lr > 0:
        raise ConfigError(f"train.lr must be > 0, got {t.lr}", fix="use a positive learning rate, e.g. --train.lr 1e-4")
    if not 0 <= t.ema_decay <= 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1], got {t.ema_decay}", fix="e.g. --train.ema_decay 0.9999")
    if not 0 <= d.label_dropout < 1:
        raise ConfigError(f"diffusion.label_dropout must be in [0, 1), got {d.label_dropout}", fix="e.g. 0.1")
    if t.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"train.mixed_precision must be no, fp16 or bf16, got {t.mixed_precision!r}")
    if a.norm not in NORMS:
        raise ConfigError(f"align.norm must be one of {', '.join(NORMS)}, got {a.norm!r}")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by train.grad_accum={t.grad_accum}",
                          fix="choose a batch size that is a multiple of grad_accum")


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
    """A stored config dict completed with today's defaults (fields added since it was written)."""
    return _merge(to_dict(RunConfig()), stored)


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
    "DiffusionSection",
    "TrainSection",
    "RunConfig",
    "DataConfig",
    "SamplerConfig",
    "load_config",
    "validate_config",
    "save_config",
    "to_dict",
    "from_dict",
    "config_diff",
    "add_config_arguments",
    "overrides_from_args",
    "flatten",
]

"""The run config: one section per part of the library, composed into :class:`RunConfig`.

Each section lives next to the code that consumes it and validates itself (``validate()``):
``model`` (:mod:`irepa.models.config`), ``data`` (:mod:`irepa.data.config`), ``align``
(:mod:`irepa.align.config`), ``objective`` (:mod:`irepa.objectives.base`), ``sample``
(:mod:`irepa.diffusion.samplers`), ``end_to_end`` (:mod:`irepa.codecs.config`); ``train`` belongs to
the run itself and lives here. The generic YAML / dict / command-line plumbing is
:mod:`irepa.utils.settings`, which refuses empty, null, non-finite and mistyped values and unknown
keys in one line naming the dotted key.

Precedence is defaults < the recipe's preset (:mod:`irepa.recipes`) < YAML file < command line. A
config is a YAML path or the name of a reference config shipped with irepa (``irepa``, ``jit-irepa``:
:func:`reference_configs`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from irepa.align.config import AlignSection, EncoderEntry
from irepa.codecs.config import EndToEndConfig
from irepa.data.config import DataConfig
from irepa.diffusion.samplers import SamplerConfig
from irepa.errors import ConfigError
from irepa.models.config import ModelSection
from irepa.objectives.base import ObjectiveConfig
from irepa.precision import precision_name
from irepa.recipes import canonical_recipe, family_preset
from irepa.utils.io import atomic_write_text
from irepa.utils.settings import (
    add_dotted_arguments,
    coerce,
    flatten,
    merge,
    read_yaml_mapping,
    section_from_dict,
    set_dotted,
    to_dict,
    validate_sections,
)
from irepa.utils.settings import overrides_from_args as _overrides_from_args

LR_SCHEDULES = ("constant", "cosine")
REPORTERS = ("tensorboard", "wandb", "none")
CONFIG_SUFFIXES = (".yaml", ".yml")


def _choice(key: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{key} must be one of {', '.join(valid)}, got {value!r}", fix=f"e.g. --{key} {valid[0]}")


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

    def validate(self) -> None:
        """Refuse settings no run can use, naming the ``train.`` field."""
        at_least = {"steps": 1, "batch_size": 1, "grad_accum": 1, "log_every": 1, "ckpt_every": 1, "sample_every": 0,
                    "keep_checkpoints": 0, "grid_classes": 1, "grid_per_class": 1, "warmup_steps": 0,
                    "max_skipped_steps": 1, "weight_decay": 0, "grad_clip": 0, "min_lr": 0, "adam_eps": 0}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value < low:
                raise ConfigError(f"train.{name} must be >= {low}, got {value}",
                                  fix=f"set --train.{name} {low} or more")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}",
                              fix="use a positive learning rate, e.g. --train.lr 1e-4")
        for i, beta in enumerate(self.betas):
            if not 0 <= beta < 1:
                raise ConfigError(f"train.betas[{i}] must be in [0, 1), got {beta}", fix="e.g. --train.betas 0.9,0.999")
        decays = [("train.ema_decay", self.ema_decay)] + [
            (f"train.extra_ema_decays[{i}]", d) for i, d in enumerate(self.extra_ema_decays)]
        for name, decay in decays:
            if not 0 <= decay <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {decay}", fix="e.g. --train.ema_decay 0.9999")
        self.mixed_precision = precision_name(self.mixed_precision, "train.mixed_precision")  # old names: today's
        _choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        for name in self.report_to:
            _choice("train.report_to", name, REPORTERS)
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"train.batch_size={self.batch_size} must be divisible by "
                              f"train.grad_accum={self.grad_accum}",
                              fix="choose a batch size that is a multiple of grad_accum")



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

    def validate(self) -> None:
        """What no single section can check: settings that must agree across sections."""
        if self.end_to_end.enabled:
            _check_end_to_end(self)


def _check_end_to_end(cfg: RunConfig) -> None:
    if cfg.data.source == "latents":
        raise ConfigError("end-to-end training encodes images with the VAE it trains, but data.source is latents",
                          fix="set data.source to an image source (folder, hf, fashion-mnist, synthetic)")
    if cfg.objective.kind != "flow":
        raise ConfigError(f"end-to-end training is defined for flow matching; objective.kind is {cfg.objective.kind}",
                          fix="set --objective.kind flow")
    if not cfg.align.enabled or not cfg.align.encoders:
        raise ConfigError("end-to-end training tunes the VAE through the alignment loss, but align is off",
                          fix="set align.enabled true with at least one encoder")
    if cfg.train.grad_accum != 1:
        raise ConfigError("end-to-end training updates the VAE and the discriminator every micro-batch, but "
                          f"train.grad_accum is {cfg.train.grad_accum}",
                          fix="set train.grad_accum 1 (raise train.batch_size or the number of GPUs instead)")
    if cfg.train.mixed_precision == "fp16":
        raise ConfigError("end-to-end training runs three optimizers and does not use an fp16 loss scaler",
                          fix="set train.mixed_precision bf16 (or fp32)")


# ---------------------------------------------------------------------------------------------
# reference configs shipped with the package


def reference_configs() -> dict[str, Path]:
    """Name -> file of every reference config shipped inside the package (``irepa``, ``jit-irepa``, ...)."""
    folder = resources.files("irepa") / "configs"
    if not folder.is_dir():
        return {}
    return {Path(e.name).stem: Path(str(e)) for e in sorted(folder.iterdir(), key=lambda e: e.name)
            if Path(e.name).suffix in CONFIG_SUFFIXES}


def resolve_config(config: str | Path) -> Path:
    """A YAML path, or the name of a shipped reference config (``irepa`` or ``irepa.yaml``), as a file path.

    A path that exists wins over a name; a folder is refused as a folder.
    """
    path = Path(config)
    if path.exists():
        if path.is_dir():
            raise ConfigError(f"config {path} is a folder", fix="give a YAML file, or a reference config name: "
                              + ", ".join(reference_configs()))
        return path
    shipped = reference_configs()
    name = path.stem if path.suffix in CONFIG_SUFFIXES and path.parent == Path(".") else str(config)
    if name in shipped:
        return shipped[name]
    if path.suffix in CONFIG_SUFFIXES or path.parent != Path("."):
        raise ConfigError(f"config file {path} does not exist",
                          fix=f"give an existing YAML file or a reference config name ({', '.join(shipped)})")
    raise ConfigError(f"no reference config named {config!r}", fix=f"valid names: {', '.join(shipped)}; or a YAML path")


# ---------------------------------------------------------------------------------------------
# loading, storing, comparing


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, strictly (see :mod:`irepa.utils.settings`)."""
    return section_from_dict(cls, data, where)


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


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, the recipe's preset, the YAML file, then dotted ``overrides`` such as ``{"train.lr": 2e-4}``.

    ``path`` is a YAML file or the name of a shipped reference config. The recipe (``recipe`` from the
    overrides, else from the file, else ``sit``) names a family preset of :mod:`irepa.recipes` that
    sits between the library defaults and the file; it is stored under its canonical name. Every
    section is validated here, once.
    """
    overrides = dict(overrides or {})
    loaded: dict = {}
    if path is not None:
        loaded = upgrade_config_dict(read_yaml_mapping(resolve_config(path)))
    data = to_dict(RunConfig())
    recipe = canonical_recipe(coerce(str, overrides.get("recipe", loaded.get("recipe", data["recipe"])), "recipe"))
    for dotted, value in family_preset(recipe).items():
        set_dotted(data, dotted, value)
    data = merge(data, loaded)
    for dotted, value in overrides.items():
        set_dotted(data, dotted, value)
    data["recipe"] = recipe
    cfg = section_from_dict(RunConfig, data)
    validate_sections(cfg)
    return cfg


def validate_config(cfg: RunConfig) -> None:
    """Refuse values no run can use, naming the field (``ConfigError``); cheap, before anything is built."""
    validate_sections(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def with_defaults(stored: dict) -> dict:
    """A stored config dict in today's layout, completed with today's defaults (fields added since)."""
    return merge(to_dict(RunConfig()), upgrade_config_dict(stored, stored=True))


def config_from_checkpoint(ckpt: dict) -> RunConfig:
    """The run config stored in a checkpoint (of this or an earlier release) as a :class:`RunConfig`."""
    return section_from_dict(RunConfig, with_defaults(ckpt["config"]))


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


def config_keys(section: str | None = None) -> list[str]:
    """Every dotted leaf field of :class:`RunConfig` (under ``section`` only, when given)."""
    keys = list(flatten(to_dict(RunConfig())))
    return [k for k in keys if section is None or k.startswith(section + ".")]


def add_config_arguments(parser: argparse.ArgumentParser, section: str | None = None,
                         aliases: dict[str, list[str]] | None = None,
                         choices: dict[str, tuple[str, ...]] | None = None) -> None:
    """``--section.field VALUE`` for every leaf field of :class:`RunConfig` (or of one ``section``)."""
    add_dotted_arguments(
        parser, config_keys(section), "config fields" if section is None else f"{section} settings",
        "any field as --section.field VALUE, e.g. --train.lr 2e-4 --align.norm zscore "
        "--align.encoders dinov2-vit-b:0.5,mocov3-vit-l:0.5" if section is None else
        f"any field of the {section} section as --{section}.FIELD VALUE: {', '.join(config_keys(section))}",
        aliases,
        choices,
    )


def overrides_from_args(args: argparse.Namespace, section: str | None = None) -> dict[str, Any]:
    """The ``--section.field`` values given on the command line (of one ``section``, when given)."""
    return _overrides_from_args(args, f"{section}." if section else "")


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
    "reference_configs",
    "resolve_config",
    "config_keys",
]

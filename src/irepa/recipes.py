"""Training recipes as data: each family's reference settings, and REPA / iREPA on top of any of them.

A *family* (``sit``, ``jit``, ``meanflow``, ``repa-e``) fixes the backbone, the objective and the
optimiser habits of its paper; an *alignment* (``vanilla``, ``repa``, ``irepa``) adds representation
alignment with the defaults its authors used for that family. A recipe name is ``<family>-<alignment>``
(``jit-irepa``, ``repa-e-irepa``); the bare alignment names mean the SiT family (``irepa`` =
``sit-irepa``). A name may carry config changes: ``meanflow-irepa+sample.steps=1+align.depth=3``.

``load_config`` applies the run's ``recipe`` preset between the library defaults and the YAML file,
so a config file only states what it changes: defaults < recipe preset < YAML < command line. A bare
family name (``recipe: sit``) applies the family preset alone; ``recipe: repa-e-irepa`` applies the
family preset and that alignment's settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from irepa.errors import ConfigError
from irepa.utils.settings import parse_scalar


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    preset: dict[str, Any]  # dotted config overrides: the paper's reference settings
    alignment: dict[str, dict[str, Any]]  # per alignment name: what REPA / iREPA set in this family
    targets: list[str] = field(default_factory=list)  # published numbers the reference configs aim at
    default_alignment: str | None = None  # what a bare family name means in a recipe spec (None: as configured)


_SIT_ALIGNMENT = {
    "vanilla": {"align.enabled": False},
    "repa": {"align.enabled": True, "align.projector": "mlp", "align.coeff": 0.5, "align.norm": "none"},
    "irepa": {
        "align.enabled": True,
        "align.projector": "conv",
        "align.kernel_size": 3,
        "align.coeff": 1.0,
        "align.norm": "zscore",
        "align.zscore_alpha": 0.6,
    },
}

FAMILIES: dict[str, Family] = {
    "sit": Family(
        name="sit",
        summary="SiT on SD-VAE latents, flow matching with velocity prediction (linear path), SDE sampler",
        preset={},  # the library defaults are SiT's
        alignment=_SIT_ALIGNMENT,
        targets=["SiT-XL/2 + DINOv2-B, 100K steps, gFID w/o CFG: REPA 19.06, iREPA 16.96"],
    ),
    "jit": Family(
        name="jit",
        summary="JiT in pixel space: the network predicts the clean image, trained with the v-loss",
        preset={
            "model.name": "JiT-B/16",
            "model.input_size": 256,
            "model.in_channels": 3,
            "data.flip": True,
            "objective.prediction": "x",
            "objective.path": "linear",
            # JiT draws logit-normal t with P_mean -0.8 in its convention (t = 0 noise); irepa's t is 1 - t_JiT.
            "objective.time_sampling": "lognormal",
            "objective.p_mean": 0.8,
            "objective.p_std": 0.8,
            "objective.t_eps": 0.05,
            "objective.noise_scale": 1.0,
            "train.betas": [0.9, 0.95],
            "train.weight_decay": 0.0,
            "train.decay_1d_params": False,
            "train.grad_clip": 0.0,
            "train.ema_decay": 0.9999,
            "train.extra_ema_decays": [0.9996],
            "sample.kind": "ode-heun",
            "sample.steps": 50,
            # JiT guides inside the open interval (0.1, 1) of its time, deciding at each evaluation: (0, 0.9)
            # in irepa's time, with JiT's strict bounds; it evaluates with 50 images per class
            "sample.guidance_low": 0.0,
            "sample.guidance_high": 0.9,
            "sample.guidance_rule": "jit",
            "sample.labels": "balanced",
        },
        alignment={
            "vanilla": {"align.enabled": False},
            "repa": {**_SIT_ALIGNMENT["repa"], "align.coeff": 0.5},
            "irepa": {**_SIT_ALIGNMENT["irepa"], "align.coeff": 0.5, "align.zscore_alpha": 0.8},
        },
        targets=["JiT-B/16, ImageNet 256, with CFG: 200 epochs FID 4.37, 600 epochs FID 3.66 (JiT paper, Tab. 6)"],
    ),
    "meanflow": Family(
        name="meanflow",
        summary="MeanFlow: SiT with a second time embedding predicts the average velocity; 1-step sampling",
        preset={
            "objective.kind": "meanflow",
            # MeanFlow's data: SD-VAE latents times 0.18215 (no shift), never flipped
            "data.latent_norm": "constant",
            "data.flip": False,
            "objective.path": "linear",
            "objective.time_sampling": "lognormal",
            "objective.p_mean": -0.4,
            "objective.p_std": 1.0,
            "train.betas": [0.9, 0.95],  # the reference code: Adam(W) with b2 0.95, no weight decay, no clipping
            "train.grad_clip": 0.0,
            "sample.kind": "meanflow",
            "sample.steps": 1,
        },
        alignment=_SIT_ALIGNMENT,
        targets=[
            "MeanFlow, ImageNet 256, 240 epochs, 1-NFE FID: B/2 6.17, XL/2 3.43; 2-NFE: XL/2 2.93",
            "MeanFlow-XL/2+, 1000 epochs: 2-NFE FID 2.20",
        ],
    ),
    "repa-e": Family(
        name="repa-e",
        summary="REPA-E: SiT and its VAE trained end to end; the VAE through the alignment loss only "
        "(plus L1, LPIPS, KL, PatchGAN), with batch-norm on the latents",
        preset={
            "end_to_end.enabled": True,
            "model.input_size": 32,  # 256 px through SD-VAE (f8)
            "model.in_channels": 4,
            **_SIT_ALIGNMENT["repa"],
            "align.depth": 8,
        },
        alignment={
            "repa": _SIT_ALIGNMENT["repa"],
            # iREPA-E: iREPA's projector and target normalisation; lambda and the VAE's 1.5 stay REPA-E's
            "irepa": {**_SIT_ALIGNMENT["irepa"], "align.coeff": 0.5},
        },
        targets=[
            "REPA-E, SiT-XL/2 + SD-VAE, ImageNet 256, 80 epochs: gFID 4.07 without CFG, "
            "1.67 with CFG (scale 2.2, interval [0, 0.65])"
        ],
        default_alignment="repa",
    ),
}

ALIGNMENTS = ("vanilla", "repa", "irepa")
# The names the papers use for a recipe, where they differ from ``<family>-<alignment>``.
PAPER_NAMES = {"irepa-e": "repa-e-irepa"}


def family_preset(name: str) -> dict[str, Any]:
    """The dotted settings of a ``recipe``: the family's preset, and the alignment's of ``<family>-<alignment>``."""
    if name in FAMILIES:
        return dict(FAMILIES[name].preset)
    family, alignment = split_recipe_name(name)
    return {**FAMILIES[family].preset, **FAMILIES[family].alignment[alignment]}


def canonical_recipe(name: str) -> str:
    """The one stored name of a recipe: a bare family stays itself, anything else is ``<family>-<alignment>``
    (``irepa`` -> ``sit-irepa``, the paper's ``irepa-e`` -> ``repa-e-irepa``)."""
    if name in FAMILIES:
        return name
    family, alignment = split_recipe_name(name)
    return f"{family}-{alignment}"


def valid_recipes() -> list[str]:
    return [f"{f.name}-{a}" for f in FAMILIES.values() for a in f.alignment]


def split_recipe_name(name: str) -> tuple[str, str | None]:
    """``jit-irepa`` -> (jit, irepa); ``irepa`` -> (sit, irepa); ``repa-e`` -> (repa-e, repa); ``jit`` -> (jit, None):
    a bare family name keeps the alignment as configured unless the family names a default;
    ``irepa-e`` -> (repa-e, irepa) as the paper names it."""
    name = PAPER_NAMES.get(name, name)
    if name in ALIGNMENTS:
        return "sit", name
    if name in FAMILIES:
        return name, FAMILIES[name].default_alignment
    family, _, alignment = name.rpartition("-")
    if family in FAMILIES and alignment in FAMILIES[family].alignment:
        return family, alignment
    raise ConfigError(
        f"unknown recipe {name!r}; valid: {', '.join(valid_recipes())} (or vanilla / repa / irepa for SiT)"
    )


# a change starts at a "+" followed by "section.field=", so values may hold "+" (dinov2-vit-s+shuffle)
_CHANGE = re.compile(r"\+(?=[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*=)")


def split_spec(spec: str) -> tuple[str, list[str]]:
    """A recipe spec's name and changes; a change's value may hold ``+``:
    ``"irepa+align.depth=3+align.encoders=hog+blur=1"`` -> ``("irepa", ["align.depth=3", "align.encoders=hog+blur=1"])``
    """
    name, *changes = _CHANGE.split(spec)
    if "+" in name:  # a change without a section, e.g. irepa+depth=3
        name, _, first = name.partition("+")
        changes.insert(0, first)
    return name, changes


def recipe_overrides(spec: str, common: dict[str, Any] | None = None) -> dict[str, Any]:
    """Dotted overrides for a recipe spec such as ``jit-irepa+align.depth=3``.

    The result sets ``recipe`` (its canonical name, so the family preset applies under everything else), the
    alignment's settings (none for a bare family name: the config's own alignment stays), then
    ``common`` (changes for every recipe), then the spec's own changes.
    """
    name, changes = split_spec(spec)
    family, alignment = split_recipe_name(name)
    aligned = FAMILIES[family].alignment[alignment] if alignment else {}
    out: dict[str, Any] = {"recipe": canonical_recipe(name), **aligned, **(common or {})}
    for change in changes:
        key, sep, value = change.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"{spec!r}: expected +section.field=value after the recipe name, got {change!r}")
        out[key] = parse_scalar(value)
    return out

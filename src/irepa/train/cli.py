"""``irepa train``: train a model from a YAML config plus command-line overrides; ``irepa export-vae``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from irepa.config import add_config_arguments, load_config, overrides_from_args
from irepa.models.presets import small_model

# A few steps of a tiny pixel-space model on synthetic data: checks the whole pipeline on a CPU.
SMOKE_PRESET = {
    "model.input_size": 16,
    "model.in_channels": 3,
    "model.num_classes": 10,
    "data.source": "synthetic",
    "data.resolution": 16,
    "data.num_workers": 0,
    "data.num_classes": 10,
    "train.steps": 10,
    "train.batch_size": 8,
    "train.log_every": 1,
    "train.ckpt_every": 5,
    "train.sample_every": 10,
    "train.grid_classes": 4,
    "train.grid_per_class": 4,
    "train.report_to": ["none"],
    "train.ema_decay": 0.9,
    "train.compile": False,
    "train.mixed_precision": "fp32",
    "align.depth": 4,
    "sample.kind": "ode-euler",
    "sample.steps": 8,
}
# What a smoke run of an end-to-end recipe changes on top: a small untrained VAE (f2, 4 channels),
# an untrained LPIPS trunk, a two-stage PatchGAN (a three-stage one has no logits left at 16 px).
SMOKE_END_TO_END = {
    "model.input_size": 8,
    "model.in_channels": 4,
    "end_to_end.vae": "random",
    "end_to_end.perceptual_weights": "random",
    "end_to_end.disc_weights": None,
    "end_to_end.disc_layers": 2,
    "end_to_end.stats_images": 64,
}
# ...with each family's backbone, small.
SMOKE_FAMILY = {
    "sit": {"model.name": "SiT-S/2"},
    "jit": {
        **small_model("jit", hidden_size=96, num_heads=2, in_context_len=4),
        "train.extra_ema_decays": [0.8],
        "sample.kind": "ode-heun",
    },
    "meanflow": {"model.name": "SiT-S/2", "sample.kind": "meanflow", "sample.steps": 2},
    "repa-e": {"model.name": "SiT-S/2", **SMOKE_END_TO_END},
}
# A config whose backbone is not the family's transformer keeps its kind, small (instead of the family's model.*).
SMOKE_BACKBONE = {
    "UNet": {"model.name": "UNet-S", "align.depth": 2},  # 4 levels at 16 px; stage 2 (down.1): 8 x 8 tokens
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a SiT with REPA / iREPA alignment",
        description="Train from --config YAML; any field can be overridden as --section.field VALUE.",
    )
    p.add_argument("--config", help="YAML config: a reference config's name (irepa, jit-irepa, ...: "
                   "`irepa train --list-configs`) or a path")
    p.add_argument(
        "--recipe",
        help="training recipe: a family (sit, jit, meanflow) or family-alignment (jit-irepa, meanflow-repa, ...); "
        "the family's reference settings sit under the YAML file",
    )
    p.add_argument("--model", help="model name, e.g. SiT-B/2 (= --model.name)")
    p.add_argument(
        "--encoder", help="alignment encoder(s), comma-separated, optionally name:coeff (= --align.encoders)"
    )
    p.add_argument("--out", help="run folder (= --out)")
    p.add_argument("--steps", type=int, help="optimizer steps (= --train.steps)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="auto|PATH",
        help="continue the run in --out from its latest checkpoint (refused if it is damaged); "
        "'--resume auto': from the newest usable one (intact and loadable), with a warning; "
        "'--resume PATH': from that file only",
    )
    p.add_argument("--init-from", metavar="RUN", default=None,
                   help="fine-tune: start from RUN's weights, EMA and projectors with a fresh optimiser "
                        "(without --config, RUN/config.yaml is the config)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a few steps of a tiny model on synthetic data (CPU, random encoder weights)",
    )
    p.add_argument("--list-configs", action="store_true", help="list the reference configs shipped with irepa")
    add_config_arguments(p)
    p.set_defaults(func=run)

    e = subparsers.add_parser(
        "export-vae",
        help="write the VAE of an end-to-end (REPA-E) run as a diffusers AutoencoderKL folder",
        description="The tuned VAE of RUN's latest checkpoint (or of the given checkpoint file) as an AutoencoderKL "
                    "folder with its latent statistics (latent_stats.json, and latents_mean / latents_std in "
                    "config.json): `irepa prepare-latents --vae DIR` and AutoencoderKL.from_pretrained(DIR) load it.",
    )
    e.add_argument("run", help="run folder or step_*.pt checkpoint of an end-to-end run")
    e.add_argument("--out", required=True, help="new folder for the VAE (refused if it exists and is not empty)")
    e.add_argument("--no-ema", action="store_true",
                   help="export the live latent statistics instead of their EMA (the VAE weights are the same)")
    e.set_defaults(func=run_export)


def _yaml_value(config: str | None, *keys: str):
    """``config[keys[0]][keys[1]]...`` of a config (path or reference name), or None (load_config reports a
    real problem with the file)."""
    if not config:
        return None
    from irepa.config import resolve_config
    from irepa.utils.settings import read_yaml_mapping

    try:
        value = read_yaml_mapping(resolve_config(config))
        for key in keys:
            value = value.get(key)
        return value
    except (ValueError, AttributeError):
        return None


def _recipe_of(config: str | None) -> str:
    """The recipe a config (path or reference name) names (``sit`` when it names none)."""
    return str(_yaml_value(config, "recipe") or "sit")


def smoke_overrides(family: str, model_name: str | None) -> dict:
    """What ``--smoke`` sets for a run of ``family`` whose config names ``model_name``."""
    smoke = {**SMOKE_PRESET, **SMOKE_FAMILY.get(family, {})}
    backbone = SMOKE_BACKBONE.get(str(model_name or "").split("-")[0])
    if backbone is not None:
        smoke = {k: v for k, v in smoke.items() if not k.startswith("model.") or k in SMOKE_PRESET}
        smoke.update(backbone)
    return smoke


def list_configs() -> str:
    """The shipped reference configs, one per line with the first line of its comment."""
    from irepa.config import reference_configs

    lines = []
    for name, path in reference_configs().items():
        first = next((ln.lstrip("# ").strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
        lines.append(f"{name:18s} {first}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from irepa.recipes import recipe_overrides, split_recipe_name
    from irepa.train.trainer import train
    from irepa.utils.console import setup_logging

    if args.list_configs:
        print(list_configs())
        return 0
    setup_logging(logging.INFO)  # warnings (e.g. a skipped image) print above the progress bar, not inside it
    overrides: dict = recipe_overrides(args.recipe) if args.recipe else {}
    if args.smoke:
        family = split_recipe_name(overrides.get("recipe") or _recipe_of(args.config))[0]
        model = args.model or overrides_from_args(args).get("model.name") or _yaml_value(args.config, "model", "name")
        overrides.update(smoke_overrides(family, model))
    shortcuts = {"model.name": args.model, "align.encoders": args.encoder, "out": args.out, "train.steps": args.steps}
    overrides.update({k: v for k, v in shortcuts.items() if v is not None})
    overrides.update(overrides_from_args(args))
    if args.config is None and args.init_from:  # fine-tuning a run: its own config unless one is given
        from irepa.train.init_from import run_config_of

        args.config = run_config_of(args.init_from)
    cfg = load_config(args.config, overrides)
    if args.smoke:  # encoders are random-initialised in a smoke run: no weights needed
        for entry in cfg.align.encoders:
            entry.weights = entry.weights or "random"
    args.on_interrupt = lambda: resume_hint(Path(cfg.out))
    result = train(cfg, resume=args.resume, init_from=args.init_from)
    if result.checkpoint is None:  # resumed a run that had already reached train.steps: no step was taken
        from irepa.train.checkpoint import latest_checkpoint

        print(f"nothing to do: the run is already at step {result.step} of train.steps={cfg.train.steps} (latest "
              f"checkpoint {latest_checkpoint(Path(cfg.out) / 'checkpoints')}); raise --steps to train it further")
    else:
        print(f"finished at step {result.step}; checkpoint: {result.checkpoint}")
    return 0


def resume_hint(run_dir: Path) -> str:
    """What an interrupted run can continue from (for the message after Ctrl-C)."""
    from irepa.train.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run_dir / "checkpoints")
    if latest is None:
        return f"no checkpoint was written yet in {run_dir}: rerun the same command to start again"
    return f"rerun the same command with --resume to continue from {latest}"


def run_export(args: argparse.Namespace) -> int:
    from irepa.codecs import TrainableVAECodec, codec_from_checkpoint
    from irepa.errors import ConfigError
    from irepa.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.run)
    codec = codec_from_checkpoint(ckpt, ema=not args.no_ema)
    if not isinstance(codec, TrainableVAECodec):
        raise ConfigError(f"{ckpt['path']} was not trained end to end (its codec: {codec.describe()})",
                          fix="export-vae takes a run of the repa-e recipe, whose VAE was trained")
    folder = codec.save_pretrained(args.out, ema=not args.no_ema)
    mean, std = codec.statistics(not args.no_ema)
    print(f"wrote {folder} (VAE of {ckpt['path']}, step {int(ckpt['step'])}; latent mean "
          f"{[round(v, 4) for v in mean.tolist()]}, std {[round(v, 4) for v in std.tolist()]})")
    return 0

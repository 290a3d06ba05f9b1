"""``irepa train``: train a model from a YAML config plus command-line overrides; ``irepa export-vae``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from irepa.config import add_config_arguments, load_config, overrides_from_args

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
    "train.mixed_precision": "no",
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
        "model.name": "JiT-B/16",
        "model.patch_size": 4,
        "model.depth": 6,
        "model.hidden_size": 96,
        "model.num_heads": 2,
        "model.bottleneck_dim": 16,
        "model.in_context_start": 2,
        "model.in_context_len": 4,
        "train.extra_ema_decays": [0.8],
        "sample.kind": "ode-heun",
    },
    "meanflow": {"model.name": "SiT-S/2", "sample.kind": "meanflow", "sample.steps": 2},
    "repa-e": {"model.name": "SiT-S/2", **SMOKE_END_TO_END},
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
        "'--resume auto': from the newest intact one, with a warning; '--resume PATH': from that file only",
    )
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


def _recipe_of(config: str | None) -> str:
    """The recipe a config (path or reference name) names (``sit`` when it names none)."""
    if not config:
        return "sit"
    from irepa.config import resolve_config
    from irepa.utils.settings import read_yaml_mapping

    try:
        return str(read_yaml_mapping(resolve_config(config)).get("recipe", "sit"))
    except ValueError:
        return "sit"  # load_config reports the real problem with the file


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

    if args.list_configs:
        print(list_configs())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides: dict = recipe_overrides(args.recipe) if args.recipe else {}
    if args.smoke:
        family = split_recipe_name(overrides.get("recipe") or _recipe_of(args.config))[0]
        overrides.update({**SMOKE_PRESET, **SMOKE_FAMILY.get(family, {})})
    shortcuts = {"model.name": args.model, "align.encoders": args.encoder, "out": args.out, "train.steps": args.steps}
    overrides.update({k: v for k, v in shortcuts.items() if v is not None})
    overrides.update(overrides_from_args(args))
    cfg = load_config(args.config, overrides)
    if args.smoke:  # encoders are random-initialised in a smoke run: no weights needed
        for entry in cfg.align.encoders:
            entry.weights = entry.weights or "random"
    args.on_interrupt = lambda: resume_hint(Path(cfg.out))
    result = train(cfg, resume=args.resume)
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

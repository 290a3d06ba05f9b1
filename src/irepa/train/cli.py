"""``irepa train``: train a model from a YAML config plus command-line overrides."""

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
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a SiT with REPA / iREPA alignment",
        description="Train from --config YAML; any field can be overridden as --section.field VALUE.",
    )
    p.add_argument("--config", help="YAML config, e.g. configs/irepa.yaml")
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
    add_config_arguments(p)
    p.set_defaults(func=run)


def _family_of(config: str | None) -> str:
    """The recipe family a YAML file names (``sit`` when it names none)."""
    if not config:
        return "sit"
    from pathlib import Path

    import yaml

    try:
        return str((yaml.safe_load(Path(config).read_text()) or {}).get("recipe", "sit"))
    except (OSError, yaml.YAMLError, AttributeError):
        return "sit"  # load_config reports the real problem with the file


def run(args: argparse.Namespace) -> int:
    from irepa.recipes import recipe_overrides
    from irepa.train.trainer import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    overrides: dict = recipe_overrides(args.recipe) if args.recipe else {}
    if args.smoke:
        family = overrides.get("recipe") or _family_of(args.config)
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

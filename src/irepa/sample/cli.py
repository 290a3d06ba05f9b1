"""``irepa sample``: from a checkpoint to a picture grid or a 50K-image evaluation batch.

Run it as ``accelerate launch -m irepa.cli sample ...`` (or ``torchrun``) to spread the work over all
GPUs and nodes; a plain ``irepa sample`` uses one device. See ``docs/evaluate.md``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from irepa.config import add_config_arguments, overrides_from_args
from irepa.diffusion.samplers import GUIDANCE_RULES, SAMPLERS, SamplerConfig
from irepa.errors import ConfigError
from irepa.precision import AUTO, PRECISIONS
from irepa.sample.labels import LABEL_MODES
from irepa.utils.settings import finite_float, merge, section_from_dict, set_dotted, to_dict

# The short flags of ``irepa sample``: aliases of the ``--sample.FIELD`` options.
SAMPLER_ALIASES = {
    "sample.kind": ["--sampler"],
    "sample.steps": ["--steps"],
    "sample.cfg_scale": ["--cfg-scale"],
    "sample.guidance_low": ["--guidance-low"],
    "sample.guidance_high": ["--guidance-high"],
    "sample.guidance_rule": ["--guidance-rule"],
}
DEFAULT_SHARD_SIZE = 256
AUTO_GRID_MAX_SAMPLES = 256  # below this many samples a grid is always saved
AUTO_GRID_PER_CLASS = 16
GRID_MAX_ROWS = 32


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated class indices, got {text!r}") from err


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sample", help="sample images from a checkpoint (a quick grid or a sharded 50K batch)",
        description="The sampler is the run's own (the `sample` section of its config.yaml); change any of its "
                    "fields with --sample.FIELD VALUE (kind, steps, cfg_scale, guidance_low, guidance_high, "
                    "guidance_rule, sde_last_t; --sampler, --steps, --cfg-scale, --guidance-low, --guidance-high "
                    "and --guidance-rule are short forms). "
                    "Sample i gets seed seed + i and a label drawn from (seed, i) (or class i % num_classes with "
                    "--labels balanced); the work is split evenly over every process of an accelerate/torchrun "
                    "launch, resumable, merged into samples_<N>.npz.",
    )
    p.add_argument("--ckpt", required=True, help="training checkpoint (step_*.pt) or a run folder (latest step)")
    p.add_argument("--num-samples", type=int, default=50_000, help="how many images (default 50000)")
    p.add_argument("--out", default=None,
                   help="output folder (default: <checkpoint folder>/samples/<checkpoint>-<settings>)")
    add_config_arguments(p, "sample", aliases=SAMPLER_ALIASES,
                         choices={"sample.kind": SAMPLERS, "sample.guidance_rule": GUIDANCE_RULES})
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--vae", default=None, help="override the VAE named in the checkpoint (path or id)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (>= 0)")
    p.add_argument("--precision", choices=(AUTO, *PRECISIONS), default=AUTO,
                   help="precision of the model call (the integrator stays float32); auto: bf16 on CUDA, "
                        "fp32 on CPU")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass, per process")
    p.add_argument("--shard-size", type=int, default=None,
                   help=f"images per resumable shard file (default {DEFAULT_SHARD_SIZE}; fixed once a run started)")
    p.add_argument("--labels", choices=LABEL_MODES, default=None,
                   help="random: each sample's class drawn uniformly from (seed, index), as the REPA / SiT "
                        "evaluation does; balanced: class i %% num_classes, as JiT's (default: the run's "
                        "sample.labels: balanced for JiT runs, random otherwise)")
    p.add_argument("--classes", type=_int_list, default=None,
                   help="use these classes only, e.g. 207,360,387 (default: all classes)")
    p.add_argument("--unconditional", action="store_true", help="sample with the null label")
    p.add_argument("--grid", type=int, default=None, metavar="N",
                   help=f"also save a PNG grid with up to N images per class row (always saved, with "
                        f"{AUTO_GRID_PER_CLASS} per row, when num-samples <= {AUTO_GRID_MAX_SAMPLES})")
    p.add_argument("--wait-timeout", type=finite_float, default=None, metavar="SECONDS",
                   help="how long the main process waits for a new image from the other processes before "
                        "giving up (default: the longer of 30 min and 4 shards' worth of its own sampling time)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run_sample, on_interrupt="finished shards are kept: rerun the same command to make the rest")


def default_out_dir(ckpt: str | Path, cfg: SamplerConfig, use_ema: bool, seed: int, label_mode: str = "balanced",
                    precision: str = "fp32") -> Path:
    """``<ckpt folder>/samples/<name>-<settings>``; balanced labels and fp32 add no suffix (the names
    runs had before those options existed), so such runs are found and resumed."""
    ckpt = Path(ckpt)
    name, base = (ckpt.stem, ckpt.parent) if ckpt.suffix else (ckpt.name, ckpt)
    tag = f"{cfg.kind}{cfg.steps}-cfg{cfg.cfg_scale:g}"
    if cfg.cfg_scale != 1.0:
        tag += f"-int{cfg.guidance_low:g}-{cfg.guidance_high:g}"
        if cfg.guidance_rule != "reference":
            tag += f"-{cfg.guidance_rule}"
    if cfg.kind == "sde" and cfg.sde_last_t != SamplerConfig.sde_last_t:
        tag += f"-last{cfg.sde_last_t:g}"
    tag += f"-{'ema' if use_ema else 'raw'}-seed{seed}"
    if label_mode != "balanced":
        tag += f"-{label_mode}-labels"
    if precision != "fp32":
        tag += f"-{precision}"
    return base / "samples" / f"{name}-{tag}"


def objective_settings(objective: Any) -> dict[str, Any]:
    """What the sampler integrated: the objective's kind, path and prediction (and what they depend on)."""
    c = objective.cfg
    return {"kind": objective.kind, "path": c.path, "prediction": c.prediction, "t_eps": c.t_eps,
            "noise_scale": c.noise_scale}


def sampling_settings(generator: Any, cfg: SamplerConfig, batch_size: int, num_processes: int) -> dict[str, Any]:
    """Every setting that describes the samples (checkpoint, weights, VAE, sampler, sizes)."""
    import torch

    import irepa

    info = dict(generator.info)
    return {
        "checkpoint": str(Path(info.get("checkpoint", "")).resolve()) if info.get("checkpoint") else None,
        "checkpoint_step": info.get("step"),
        "model": info.get("model"),
        "ema": info.get("ema"),
        "vae": info.get("vae"),
        "space": info.get("space"),
        "sampler": {k: v for k, v in asdict(cfg).items() if k != "labels"},  # the labels: label_mode
        "objective": objective_settings(generator.objective),
        "precision": generator.precision,
        "image_size": int(generator.image_size),
        "latent_shape": list(generator.latent_shape),
        "num_classes": int(generator.num_classes),
        "batch_size": batch_size,
        "num_processes": num_processes,
        "torch_version": torch.__version__,
        "irepa_version": getattr(irepa, "__version__", None),
    }


def run_sampler(recorded: dict[str, Any] | None, overrides: dict[str, Any]) -> SamplerConfig:
    """The sampler a run recorded (its ``sample`` section), with ``--sample.FIELD`` overrides, validated."""
    data = {"sample": merge(to_dict(SamplerConfig()), recorded or {})}
    for dotted, value in overrides.items():
        set_dotted(data, dotted, value)
    cfg = section_from_dict(SamplerConfig, data["sample"], "sample")
    cfg.validate()
    return cfg


def run_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from accelerate import PartialState

    from irepa.evaluate.npz import open_npz_array
    from irepa.sample.large_scale import (
        SamplingPlan,
        class_grid,
        read_run_file,
        resolve_classes,
        run_sampling,
    )
    from irepa.sample.pipeline import load_generator, save_png

    overrides = overrides_from_args(args, "sample")
    run_sampler({}, overrides)  # a bad value is refused before the checkpoint is read
    for name in ("num_samples", "batch_size", "shard_size", "grid"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    state = PartialState(cpu=not torch.cuda.is_available())  # CPU-only machines still shard over processes
    use_ema = not args.no_ema
    generator = load_generator(args.ckpt, use_ema=use_ema, device=state.device, vae=args.vae,
                               precision=args.precision)
    cfg = run_sampler(generator.info.get("run_sampler"), overrides)
    generator.objective.check_sampler(cfg.kind)
    ckpt_file = generator.info.get("checkpoint") or args.ckpt  # a run folder resolves to its newest usable step
    args.labels = args.labels or cfg.labels  # the run's own evaluation labels unless given
    if state.is_main_process:
        print(f"using checkpoint {ckpt_file} (step {generator.info.get('step')})", file=sys.stderr)
    out = Path(args.out) if args.out else default_out_dir(ckpt_file, cfg, use_ema, args.seed, args.labels,
                                                          generator.precision)
    shard_size = args.shard_size
    if shard_size is None:  # keep the layout of a run being resumed
        recorded = read_run_file(out) or {}
        shard_size = recorded.get("shard_size", DEFAULT_SHARD_SIZE)
    classes = resolve_classes(generator.num_classes, args.classes, args.unconditional)
    plan = SamplingPlan(args.num_samples, classes, args.seed, shard_size, args.labels)
    settings = sampling_settings(generator, cfg, args.batch_size, state.num_processes)

    def generate(labels, seeds):
        return generator.generate(labels, seeds, cfg)

    result = run_sampling(generate, plan, out, settings, rank=state.process_index,
                          world_size=state.num_processes, batch_size=args.batch_size,
                          barrier=state.wait_for_everyone, progress=not args.no_progress,
                          wait_timeout=args.wait_timeout)
    if result.samples is None:
        return 0
    print(f"wrote {result.samples} ({args.num_samples} images) and {result.samples.with_suffix('.json').name}")
    if args.grid is not None or args.num_samples <= AUTO_GRID_MAX_SAMPLES:
        images = open_npz_array(result.samples, "arr_0")
        labels = np.asarray(open_npz_array(result.samples, "labels"))
        grid = class_grid(images, labels, args.grid or AUTO_GRID_PER_CLASS, GRID_MAX_ROWS)
        png = result.samples.with_name(f"{result.samples.stem}_grid.png")
        save_png(grid, png)
        print(f"wrote {png}")
    return 0

"""``irepa reproduce``: the paper's REPA vs iREPA comparison from one command.

For each row of a published table (an encoder and an alignment recipe) it trains the paper's model
for the paper's number of steps with ``accelerate``, draws 50,000 samples with the paper's sampler
(SDE, 250 steps, no guidance: the tables report gFID without CFG), evaluates them against the ADM
reference batch, and writes the measured FID next to the published one. Every stage resumes: a run
with checkpoints continues, finished samples and evaluations are reused, so the command can simply be
started again after an interruption or a job-time limit.

Each stage is an ordinary ``irepa`` command line (printed before it runs), so a cluster user can also
copy the commands into their own job scripts. ``--dry-run`` runs the same stages in-process with a
tiny model, synthetic data and a few samples, which is how the tests check the whole path on a CPU.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irepa.config import resolve_config
from irepa.errors import ConfigError


@dataclass(frozen=True)
class Row:
    encoder: str  # irepa encoder name
    label: str  # as the paper writes it
    recipe: str  # repa | irepa
    published: float | None  # the paper's gFID (no CFG), None when not reported


@dataclass(frozen=True)
class Table:
    name: str
    model: str
    steps: int
    depth: int  # the aligned block
    source: str
    rows: tuple[Row, ...]


def _pairs(model_rows: list[tuple[str, str, float | None, float | None]]) -> tuple[Row, ...]:
    out = []
    for encoder, label, repa, irepa in model_rows:
        out += [Row(encoder, label, "repa", repa), Row(encoder, label, "irepa", irepa)]
    return tuple(out)


TABLES: dict[str, Table] = {
    "sit-xl2-100k": Table(
        name="sit-xl2-100k",
        model="SiT-XL/2",
        steps=100_000,
        depth=8,
        source="iREPA paper (arXiv 2512.10794), ImageNet 256, SiT-XL/2, 100K steps, gFID without CFG",
        rows=_pairs([
            ("dinov2-vit-b", "DINOv2-B", 19.06, 16.96),
            ("dinov3-vit-b16", "DINOv3-B", 21.47, 16.26),
            ("webssl-vit-dino1b_full2b_224", "WebSSL-1B", 26.10, 16.66),
            ("pe-vit-g", "PE-Core-G", 32.35, 18.19),
        ]),
    ),
    "sit-b2-100k": Table(
        name="sit-b2-100k",
        model="SiT-B/2",
        steps=100_000,
        depth=4,
        source="iREPA paper setting for SiT-B/2 (encoder after block 4, as the authors' README); "
        "published values not transcribed here",
        rows=_pairs([("dinov2-vit-b", "DINOv2-B", None, None), ("pe-vit-g", "PE-Core-G", None, None)]),
    ),
}

NUM_SAMPLES = 50_000
SAMPLER = ["--sample.kind", "sde", "--sample.steps", "250", "--sample.cfg_scale", "1.0"]


@dataclass
class Stage:
    name: str  # train | sample | eval
    argv: list[str]  # the irepa command line (without the launcher)
    done: Path  # exists when the stage has finished


def row_dir(out: Path, row: Row) -> Path:
    return out / f"{row.encoder}-{row.recipe}"


def plan_row(table: Table, row: Row, out: Path, data: str, ref: str, configs: Path | None = None,
             steps: int | None = None, num_samples: int = NUM_SAMPLES, extra_train: list[str] | None = None,
             sampler: list[str] | None = None) -> list[Stage]:
    """The three stages of one row as ``irepa`` command lines (``configs``: a folder of YAML files, or
    None for the reference configs shipped with irepa, named ``repa`` and ``irepa``)."""
    run = row_dir(out, row)
    steps = steps or table.steps
    ckpt = run / "checkpoints" / f"step_{steps:07d}.pt"
    samples = run / "samples" / f"samples_{num_samples}.npz"
    has_checkpoint = (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step_*.pt"))
    config = str(configs / f"{row.recipe}.yaml") if configs is not None else row.recipe
    train = ["train", "--config", config, "--encoder", row.encoder,
             "--align.depth", str(table.depth), "--train.steps", str(steps), "--train.ckpt_every",
             str(max(1, min(steps, 10_000))), "--data.path", data, "--out", str(run), *(extra_train or [])]
    if has_checkpoint:
        train.append("--resume")
    sample = ["sample", "--ckpt", str(ckpt), "--num-samples", str(num_samples), *(sampler or SAMPLER),
              "--out", str(samples.parent)]
    evaluate = ["eval", "--samples", str(samples), "--ref", ref, "--out", str(run / "eval")]
    return [
        Stage("train", train, ckpt),
        Stage("sample", sample, samples),
        Stage("eval", evaluate, run / "eval" / f"eval_{samples.stem}_inception.json"),
    ]


def measured_fid(stage: Stage) -> float | None:
    if not stage.done.is_file():
        return None
    return float(json.loads(stage.done.read_text())["metrics"]["fid"])


def markdown(table: Table, results: list[tuple[Row, float | None]]) -> str:
    lines = [f"# {table.source}", "", "| encoder | recipe | gFID (this run) | gFID (published) |", "|---|---|---|---|"]
    for row, fid in results:
        ours = f"{fid:.2f}" if fid is not None else "—"
        paper = f"{row.published:.2f}" if row.published is not None else "—"
        lines.append(f"| {row.label} | {row.recipe.upper() if row.recipe == 'repa' else 'iREPA'} | {ours} | {paper} |")
    return "\n".join(lines) + "\n"


def run_stage(stage: Stage, launcher: list[str] | None) -> None:
    """Run one stage: a subprocess under ``launcher`` (``accelerate launch ...``), or in this process."""
    print("+ irepa " + " ".join(shlex.quote(a) for a in stage.argv), flush=True)
    if launcher is None:
        from irepa.cli import main

        code = main(stage.argv)
    else:  # training and sampling spread over the launcher's processes; evaluation is one process
        prefix = launcher if stage.name in ("train", "sample") else [sys.executable]
        code = subprocess.call([*prefix, "-m", "irepa.cli", *stage.argv])
    if code:
        raise ConfigError(f"the {stage.name} stage exited with status {code}; fix what it reported and run "
                          "`irepa reproduce` again (finished stages are kept)")


def reproduce(table_name: str, out: str | Path, data: str, ref: str, configs: str | Path | None = None,
              encoders: list[str] | None = None, recipes: list[str] | None = None,
              launcher: list[str] | None = None, dry_run: bool = False, stages: tuple[str, ...] = ("train",
              "sample", "eval"), overrides: dict[str, Any] | None = None) -> Path:
    """Run (or continue) the table's rows and write ``<out>/<table>.md``; returns that file.

    ``configs``: a folder with ``repa.yaml`` and ``irepa.yaml`` (default: the shipped reference configs).
    ``overrides``: dotted settings for every row; ``sample.*`` go to the sampling stage, the rest to training.
    """
    if table_name not in TABLES:
        raise ConfigError(f"unknown table {table_name!r}; valid: {', '.join(TABLES)}")
    table = TABLES[table_name]
    if dry_run and not encoders:
        encoders = [table.rows[0].encoder]  # one encoder's REPA and iREPA rows
    rows = [r for r in table.rows if (not encoders or r.encoder in encoders) and (not recipes or r.recipe in recipes)]
    if not rows:
        raise ConfigError(f"no row of {table_name} matches --encoders {encoders} --recipes {recipes}")
    configs, out = (Path(configs) if configs is not None else None), Path(out) / table_name
    for recipe in sorted({r.recipe for r in rows}):
        if configs is not None and not (configs / f"{recipe}.yaml").is_file():
            raise ConfigError(f"{configs / (recipe + '.yaml')} not found",
                              fix="pass --configs with a folder holding repa.yaml and irepa.yaml, or leave it out "
                                  "to use the reference configs shipped with irepa")
        if configs is None:
            resolve_config(recipe)  # shipped with the package: refused only in a broken install
    kwargs: dict = {}
    if dry_run:  # a tiny model on synthetic data, a few samples: the whole path in a minute on a CPU
        kwargs = {"steps": 4, "num_samples": 16, "sampler": ["--sample.kind", "ode-euler", "--sample.steps", "4"],
                  "extra_train": ["--smoke", "--model.depth", "2", "--model.hidden_size", "64",
                                  "--model.num_heads", "2", "--align.depth", "1", "--encoder", "dinov2-vit-s"]}
        launcher = None
    sample_args, train_args = _as_argv(overrides or {}, "sample."), _as_argv(overrides or {}, "", "sample.")
    kwargs["sampler"] = [*kwargs.get("sampler", SAMPLER), *sample_args]
    kwargs["extra_train"] = [*kwargs.get("extra_train", []), *train_args]
    results = []
    for row in rows:
        plan = plan_row(table, row, out, data, ref, configs, **kwargs)
        for stage in plan:
            if stage.name in stages and not stage.done.exists():
                run_stage(stage, launcher)
        results.append((row, measured_fid(plan[-1])))
    path = out.parent / f"{table_name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(table, results))
    print(path.read_text())
    return path


def write_dry_run_reference(folder: Path, n: int = 16, resolution: int = 16) -> Path:
    """Reference images for a dry run: synthetic images saved as PNG files in ``folder``."""
    from PIL import Image

    from irepa.data import DataConfig, build_dataset

    folder.mkdir(parents=True, exist_ok=True)
    data = build_dataset(DataConfig(source="synthetic", resolution=resolution, flip=False, synthetic_size=n,
                                    num_classes=10, seed=7, num_workers=0))
    for i in range(n):
        pixels = (data[i]["image"].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return folder


def _as_argv(overrides: dict[str, Any], prefix: str, exclude: str | None = None) -> list[str]:
    """``--key value`` pairs of the dotted ``overrides`` under ``prefix`` (values written back as YAML)."""
    out = []
    for key, value in overrides.items():
        if key.startswith(prefix) and not (exclude and key.startswith(exclude)):
            out += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return out


def main_args(args) -> int:
    from irepa.config import overrides_from_args

    launcher = shlex.split(args.launcher) if args.launcher else [sys.executable]
    data, ref = args.data, args.ref
    if args.dry_run:
        ref = str(write_dry_run_reference(Path(args.out) / "dry-run-reference"))
        data = data or "unused"
    elif not data or not ref:
        raise ConfigError("--data (a latent cache from `irepa prepare-latents`) and --ref (the ADM reference "
                          "batch VIRTUAL_imagenet256_labeled.npz) are needed; or pass --dry-run")
    reproduce(args.table, args.out, data, ref, args.configs, _split(args.encoders), _split(args.recipes),
              launcher, args.dry_run, tuple(_split(args.stages) or ("train", "sample", "eval")),
              overrides_from_args(args))
    return 0


def _split(text: str | None) -> list[str] | None:
    return [t for t in text.split(",") if t] if text else None

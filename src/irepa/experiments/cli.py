"""``irepa quickstart``, ``compare``, ``study``, ``reproduce`` and ``diagnose``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from irepa.config import add_config_arguments, overrides_from_args
from irepa.errors import ConfigError
from irepa.utils.settings import parse_scalar


def _extra(args: argparse.Namespace) -> dict:
    """Config overrides: ``--set KEY=VALUE`` pairs, then the ``--section.field VALUE`` options."""
    out = {}
    for pair in args.set or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {pair!r}", fix="e.g. --set train.lr=5e-4")
        out[key] = parse_scalar(value)
    return {**out, **overrides_from_args(args)}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    q = subparsers.add_parser("quickstart", help="offline CPU demo: iREPA on Fashion-MNIST, samples, FID, report")
    q.add_argument("--out", default="runs/quickstart")
    q.add_argument("--steps", type=int, default=None, help="training steps (default 400)")
    q.add_argument("--fid-samples", type=int, default=300)
    q.add_argument("--fid-ref", type=int, default=1000, help="test images in the FID reference")
    q.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. train.lr=5e-4 (the same as --train.lr 5e-4)")
    add_config_arguments(q)
    q.set_defaults(func=_quickstart)

    c = subparsers.add_parser("compare", help="train recipes side by side and plot FID against steps")
    c.add_argument(
        "--recipes",
        default="vanilla,repa,irepa",
        help="comma-separated recipes: vanilla / repa / irepa (SiT) or family-alignment such as jit-irepa, "
        "meanflow-irepa; a recipe may carry changes, e.g. irepa+align.depth=3 or meanflow-irepa+sample.steps=4",
    )
    c.add_argument("--encoder", default=None, help="alignment encoder(s) (default dinov2-vit-s)")
    c.add_argument("--steps", type=int, default=400)
    c.add_argument("--eval-every", type=int, default=200)
    c.add_argument("--fid-samples", type=int, default=300)
    c.add_argument("--fid-ref", type=int, default=1000)
    c.add_argument("--out", default="runs/compare")
    c.add_argument("--seeds", default=None,
                   help="training seeds, e.g. 0,1,2: each recipe trains once per seed and every figure is reported "
                        "as mean and 95%% Student-t interval over seeds (default: one run, the config's seed)")
    c.add_argument("--fd-dinov2", action="store_true", help="also FD in DINOv2-S space (offline weights)")
    c.add_argument("--diagnose-t", type=float, default=None,
                   help="also irepa diagnose's probe / CKA / LDS / CDS of each run's hidden state at this noise level")
    c.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                   help="config overrides for every recipe, e.g. train.lr=5e-4 (the same as --train.lr 5e-4)")
    add_config_arguments(c)
    c.set_defaults(func=_compare)

    st = subparsers.add_parser(
        "study", help="controlled-encoder studies, e.g. spatial-vs-global: target properties vs generation quality",
        description="Trains every condition of the study per seed (as irepa compare), measures each alignment "
                    "target's spatial metrics and linear-probe accuracy on the training data, and correlates them "
                    "with FID. Resumable. See docs/study-spatial-vs-global.md.",
    )
    st.add_argument("study", choices=["spatial-vs-global"])
    st.add_argument("--seeds", default="0,1", help="training seeds (default 0,1)")
    st.add_argument("--steps", type=int, default=300, help="training steps per cell (default 300)")
    st.add_argument("--eval-every", type=int, default=None, help="FID every this many steps (default: at the end)")
    st.add_argument("--family", default="sit", choices=["sit", "jit", "meanflow"],
                    help="recipe family of every condition (default sit)")
    st.add_argument("--conditions", default=None, help="only these conditions (labels, comma-separated)")
    st.add_argument("--fid-samples", type=int, default=300)
    st.add_argument("--fid-ref", type=int, default=1000)
    st.add_argument("--fd-dinov2", action="store_true", help="also FD in DINOv2-S space")
    st.add_argument("--out", default="runs/study")
    st.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                    help="config overrides for every condition, e.g. train.lr=5e-4 (the same as --train.lr 5e-4)")
    add_config_arguments(st)
    st.set_defaults(func=_study)

    r = subparsers.add_parser(
        "reproduce", help="the paper's REPA vs iREPA table: train, sample 50K, evaluate, compare with published",
        description="Runs (or resumes) every row of a published table and writes <out>/<table>.md with the "
                    "measured and the published gFID side by side. --section.field VALUE changes a setting of "
                    "every row: --sample.* options go to the sampling stage (default: SDE, 250 steps, no guidance, "
                    "as the paper's table), every other one to training.",
    )
    r.add_argument("--paper", choices=["irepa"], default="irepa")
    r.add_argument("--table", default="sit-xl2-100k", help="sit-xl2-100k (default) or sit-b2-100k")
    r.add_argument("--data", help="latent cache of ImageNet 256 (irepa prepare-latents)")
    r.add_argument("--ref", help="ADM reference batch, e.g. VIRTUAL_imagenet256_labeled.npz")
    r.add_argument("--out", default="runs/reproduce")
    r.add_argument("--configs", default=None,
                   help="folder with your own repa.yaml and irepa.yaml (default: the reference configs shipped "
                        "with irepa)")
    r.add_argument("--encoders", help="only these rows' encoders (comma-separated)")
    r.add_argument("--recipes", help="only these recipes: repa, irepa")
    r.add_argument("--stages", help="only these stages: train, sample, eval (default all)")
    r.add_argument("--launcher", default=None,
                   help='how training and sampling start, e.g. "accelerate launch --multi_gpu --num_processes 8" '
                        "(default: this Python, one process)")
    r.add_argument("--dry-run", action="store_true", help="tiny model, synthetic data, 16 samples: checks the path")
    add_config_arguments(r)
    r.set_defaults(func=_reproduce)

    d = subparsers.add_parser(
        "diagnose", help="probe accuracy, CKA to the encoder and spatial metrics of trained runs' hidden states"
    )
    d.add_argument("runs", nargs="+", help="run folders (each with checkpoints/), e.g. runs/compare/vanilla")
    d.add_argument("--t", default="0.25,0.5,0.75", help="noise levels (t=0 data, t=1 noise)")
    d.add_argument("--depth", type=int, default=None, help="block to read (default: each run's align.depth)")
    d.add_argument("--encoder", default="dinov2-vit-s")
    d.add_argument("--encoder-weights", default=None)
    d.add_argument("--n-train", type=int, default=2000, help="training images for the probe")
    d.add_argument("--n-test", type=int, default=1000, help="test images for the probe, CKA and metrics")
    d.add_argument("--images", default="fashion-mnist", choices=["fashion-mnist", "synthetic"])
    d.add_argument("--out", default=None, help="CSV to write (default: print only)")
    d.set_defaults(func=_diagnose)


def parse_seeds(text: str | None) -> list[int] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--seeds needs comma-separated integers, got {text!r}", fix="e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds needs distinct non-negative integers, got {text!r}", fix="e.g. --seeds 0,1,2")
    return seeds


def _quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart
    from .small_scale import format_time_table

    logging.basicConfig(level=logging.WARNING)
    m = run_quickstart(args.out, args.steps, args.fid_samples, args.fid_ref, extra=_extra(args))
    print(format_time_table(m["timings"]))
    print(f"FID {m['fid']:.2f} (N={m['fid_samples']}); report: {args.out}/report.md")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import markdown_table, run_compare

    logging.basicConfig(level=logging.WARNING)
    recipes = [r for r in args.recipes.split(",") if r]
    rows = run_compare(
        recipes,
        args.steps,
        args.eval_every,
        args.out,
        args.encoder,
        args.fid_samples,
        args.fid_ref,
        extra=_extra(args),
        seeds=parse_seeds(args.seeds),
        fd_dinov2=args.fd_dinov2,
        diagnose_t=args.diagnose_t,
    )
    print(markdown_table(rows, recipes))
    return 0


def _study(args: argparse.Namespace) -> int:
    from .study import run_study

    logging.basicConfig(level=logging.WARNING)
    labels = [x.strip() for x in args.conditions.split(",") if x.strip()] if args.conditions else None
    result = run_study(args.study, args.out, parse_seeds(args.seeds), args.steps, args.eval_every, labels,
                       args.fid_samples, args.fid_ref, extra=_extra(args), fd_dinov2=args.fd_dinov2,
                       family=args.family)
    print(Path(args.out, "study.md").read_text())
    return 0 if result["conditions"] else 1


def _reproduce(args: argparse.Namespace) -> int:
    from .reproduce import main_args

    logging.basicConfig(level=logging.WARNING)
    return main_args(args)


def _diagnose(args: argparse.Namespace) -> int:
    from .diagnose import diagnose_runs, markdown, write_rows

    try:
        times = tuple(float(x) for x in args.t.split(",") if x)
    except ValueError:
        raise ConfigError(f"--t needs comma-separated noise levels in [0, 1], got {args.t!r}") from None
    if not times or not all(0.0 <= t <= 1.0 for t in times):
        raise ConfigError(f"--t needs noise levels in [0, 1], got {args.t!r}")
    rows = diagnose_runs(
        args.runs,
        times,
        args.depth,
        args.encoder,
        args.encoder_weights,
        n_train=args.n_train,
        n_test=args.n_test,
        source=args.images,
    )
    if args.out:
        write_rows(rows, Path(args.out))
    print(markdown(rows))
    return 0

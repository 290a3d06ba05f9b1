"""``irepa import``: a released checkpoint of REPA, iREPA, JiT, REPA-E or MeanFlow as an irepa run folder."""

from __future__ import annotations

import argparse
import logging

from . import SOURCES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import",
        help="import a released checkpoint (REPA, iREPA, JiT, REPA-E) as an irepa run",
        description="Write RUN/config.yaml and a verified RUN/checkpoints/step_*.pt from a released checkpoint: "
                    "weights, EMA and projectors (no optimiser state), the architecture read from the weights and "
                    "checked against the file's arguments, the recipe and published sampler from those arguments. "
                    "Sources: " + "; ".join(f"{k}: {v}" for k, v in SOURCES.items()),
    )
    p.add_argument("ckpt", help="the released checkpoint file")
    p.add_argument("--from", dest="source", required=True, choices=list(SOURCES), help="which code base wrote it")
    p.add_argument("--out", required=True, help="new run folder (refused if it exists and is not empty)")
    p.add_argument("--vae", default=None,
                   help="VAE decoding the latents (diffusers folder or hub id); required for irepa-ldm and repa-e")
    p.add_argument("--latent-stats", default=None,
                   help="irepa-ldm: the VAE's -latents-stats.pt (latents_scale, latents_bias)")
    p.add_argument("--encoders", default=None, help="alignment encoder per projector (a,b) when the file names none")
    p.add_argument("--num-heads", type=int, default=None, help="attention heads, for a non-standard model size")
    p.add_argument("--in-context-start", type=int, default=None,
                   help="JiT: block where the class tokens enter, for a non-standard model size")
    p.add_argument("--align-depth", type=int, default=None, help="encoder depth, when the file does not say it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from . import import_checkpoint

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = import_checkpoint(
        args.source, args.ckpt, args.out, vae=args.vae, latent_stats=args.latent_stats, encoders=args.encoders,
        num_heads=args.num_heads, in_context_start=args.in_context_start, align_depth=args.align_depth,
    )
    run_dir = path.parent.parent
    print(f"wrote {path} and {run_dir / 'config.yaml'} (--from {args.source} {args.ckpt})")
    print(f"the release's sampler: {sample_command(run_dir)}")
    return 0


def sample_command(run_dir) -> str:
    """The ``irepa sample`` call with the sampler the imported run's config records (the published one)."""
    from irepa.config import load_config

    s = load_config(run_dir / "config.yaml").sample
    return (f"irepa sample --ckpt {run_dir} --num-samples 50000 --sampler {s.kind} --steps {s.steps} "
            f"--cfg-scale {s.cfg_scale:g} --guidance-low {s.guidance_low:g} --guidance-high {s.guidance_high:g}")

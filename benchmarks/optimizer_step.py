"""The parameter-update part of a step in isolation: AdamW implementations and EMA updates, per model size.

    python benchmarks/optimizer_step.py --models SiT-B/2,SiT-XL/2          # CUDA
    python benchmarks/optimizer_step.py --device cpu --models SiT-S/2 --threads 1

For the parameters of a model (random gradients in place), times ``AdamW.step`` with the for-loop,
``foreach`` and ``fused`` implementations, and the EMA update as the library does it
(``irepa.train.ema.EMA.update``: one ``torch._foreach_lerp_``) beside a loop over ``named_parameters``
with ``mul_`` / ``add_`` per tensor (the published loops' way). These are the parts of a training
step that do not grow with the batch, so their share is largest for small batches and large models.
Candidates are timed in turns (see ``harness``); medians in ms per update.
"""

from __future__ import annotations

import argparse
import sys

import torch
from harness import print_table, save_result, say, start, time_in_turns

from irepa.models import create_model
from irepa.train.ema import EMA


class Call:
    def __init__(self, fn):
        self.fn = fn

    def step(self) -> None:
        self.fn()

    def end_window(self) -> None:
        pass


def ema_loop(shadow: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        ema_params = dict(shadow.named_parameters())
        for name, p in model.named_parameters():
            ema_params[name].mul_(decay).add_(p.data, alpha=1 - decay)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None)
    p.add_argument("--models", default="SiT-S/2", help="comma list of irepa model names")
    p.add_argument("--window", type=int, default=None, help="updates per timed window (default 20 CUDA, 3 CPU)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device, info = start(args.device, args.threads)
    window = args.window or (20 if device.type == "cuda" else 3)
    rows = []
    for name in args.models.split(","):
        model = create_model(name, input_size=32, in_channels=4, num_classes=1000).to(device)
        params = list(model.parameters())
        for q in params:
            q.grad = torch.randn_like(q) * 1e-3
        count = sum(q.numel() for q in params)
        candidates: dict[str, Call] = {}
        impls = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
        for impl, extra in impls.items():
            try:
                opt = torch.optim.AdamW(params, lr=1e-4, **extra)
                opt.step()  # creates the state
            except (RuntimeError, ValueError) as err:
                say(f"  AdamW {impl} unavailable here: {err}")
                continue
            candidates[f"AdamW {impl}"] = Call(opt.step)
        ema = EMA(model, 0.9999)
        candidates["EMA foreach_lerp (irepa)"] = Call(lambda ema=ema, model=model: ema.update(model))
        candidates["EMA per-tensor loop"] = Call(lambda ema=ema, model=model: ema_loop(ema.shadow, model, 0.9999))
        say(f"\n== {name}: {count / 1e6:.1f} M parameters in {len(params)} tensors")
        timings = time_in_turns(candidates, 1, device, warmup=1, window=window, reps=args.reps, say=say)
        for cand, timing in timings.items():
            rows.append({"model": name, "params_m": count / 1e6, "tensors": len(params), "update": cand,
                         "ms": 1e3 * timing.median, "ms_min": 1e3 * min(timing.seconds),
                         "ms_max": 1e3 * max(timing.seconds)})
        del model, params, candidates, ema
    say("")
    print_table(rows, [("model", "model", ""), ("params_m", "M params", ".1f"), ("update", "update", ""),
                       ("ms", "ms (median)", ".2f"), ("ms_min", "min", ".2f"), ("ms_max", "max", ".2f")])
    save_result(args, "optimizer_step", info, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

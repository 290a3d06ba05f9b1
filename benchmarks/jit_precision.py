"""What JiT's float32 attention logits and RMSNorms cost under bf16 autocast, and what they buy.

    python benchmarks/jit_precision.py                       # JiT-B/16 at 256 px, batch 32 (a GPU)
    python benchmarks/jit_precision.py --device cpu --quick  # depth 4, width 384, 128 px, batch 4

Two candidates share their weights: ``fp32_ops`` true (the default, as JiT: ``q k^T`` and the softmax in
float32 with autocast off, unfused, and every RMSNorm in float32) and false (everything in bf16 with
``F.scaled_dot_product_attention``). Each runs one training step (forward, v-loss, backward) under bf16
autocast, timed in turns (``harness.time_in_turns``). Printed: the median step time with its range, the
ratio to the bf16 candidate, and each candidate's bf16 output against a float32 forward of the same
network (relative L2 error), on weights perturbed away from the zero initialisation.
"""

from __future__ import annotations

import argparse

import torch
from harness import print_table, save_result, say, start, time_in_turns

from irepa.models import create_model


def build(args, fp32_ops: bool, device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("JiT-B/16", depth=args.depth, hidden_size=args.width, num_heads=args.heads,
                         input_size=args.resolution, fp32_ops=fp32_ops)
    with torch.no_grad():  # leave the zero initialisation so every block does real work
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.to(device)


class Step:
    def __init__(self, model, x, t, y):
        self.model, self.x, self.t, self.y = model, x, t, y

    def step(self) -> None:
        self.model.zero_grad(set_to_none=True)
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16):
            x_hat = self.model(self.x, self.t, self.y)
        ((x_hat.float() - self.x) ** 2).mean().backward()

    def end_window(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--quick", action="store_true", help="a small JiT for a CPU")
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.depth, args.width, args.heads, args.resolution, args.batch = 4, 384, 6, 128, 4
        args.window, args.reps = 1, 5
    device, info = start(args.device, args.threads)
    models = {"fp32 logits + norms (JiT)": build(args, True, device), "all bf16 (fused)": build(args, False, device)}
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution, generator=gen).to(device)
    t = torch.rand(args.batch, generator=gen).to(device)
    y = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)

    rows = []
    with torch.no_grad():
        exact = models["fp32 logits + norms (JiT)"](x, t, y).float()
        for name, model in models.items():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = model(x, t, y).float()
            rows.append({"candidate": name, "rel_error": ((out - exact).norm() / exact.norm()).item()})
    say(f"JiT depth {args.depth}, width {args.width}, {args.heads} heads, {args.resolution} px, batch {args.batch}")
    timings = time_in_turns({n: Step(m, x, t, y) for n, m in models.items()}, args.batch, device,
                            args.warmup, args.window, args.reps, say=say)
    base = timings["all bf16 (fused)"].median
    for row in rows:
        timing = timings[row["candidate"]]
        row.update(timing.as_dict(), ratio=timing.median / base,
                   ms_min=1e3 * min(timing.seconds), ms_max=1e3 * max(timing.seconds))
    print_table(rows, [("candidate", "candidate", ""), ("ms_per_step", "ms/step", ".1f"), ("ms_min", "min", ".1f"),
                       ("ms_max", "max", ".1f"), ("ratio", "x bf16", ".2f"),
                       ("rel_error", "bf16 vs fp32 output", ".2e")])
    save_result(args, "jit_precision", info, rows)


if __name__ == "__main__":
    main()

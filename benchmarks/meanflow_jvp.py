"""What MeanFlow's JVP costs against flow matching, and where ``torch.func.jvp`` runs.

    python benchmarks/meanflow_jvp.py [--depth 12] [--width 384] [--heads 6] [--input-size 32] [--batch 8]
                                      [--reps 5] [--threads 1] [--device cpu] [--parts 123]

A SiT-S-like backbone (SiT-S/2: depth 12, width 384, 6 heads, on 32x32x4 latents = 256 tokens) by default.
Times are medians; on the CPU they are this process's CPU seconds (robust to other jobs on a shared machine),
on a GPU wall seconds. Prints, on the machine it runs on:

1. the median seconds of one optimizer step (loss, backward, AdamW) for flow matching, for MeanFlow without
   training-time guidance and for MeanFlow with it (kappa > 0: one more doubled forward), as ratios to flow
   matching; and the JVP pass alone against one forward;
2. whether ``torch.func.jvp`` runs through ``F.scaled_dot_product_attention`` with the default kernel choice
   and with each forced kernel (the error's first line when not);
3. whether the JVP runs through ``torch.compile`` (the whole model, and block by block as ``train.compile``
   does), the first call's time (tracing + compiling), the steady-state time and the largest difference
   from eager mode.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from irepa.models import create_model
from irepa.objectives import FlowMatching, MeanFlow, MeanFlowConfig, ObjectiveConfig
from irepa.train.aligned_model import AlignedModel


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def clock(device: torch.device) -> float:
    """Wall time on an accelerator; on the CPU this process's CPU time, which other jobs on a shared machine
    do not inflate (it sums over threads, so compare runs with the same ``--threads``)."""
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def median_seconds(fn: Callable[[], object], reps: int, device: torch.device, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = clock(device)
        fn()
        sync(device)
        times.append(clock(device) - t0)
    return statistics.median(times)


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def build_backbone(args, device) -> torch.nn.Module:
    model = create_model("SiT-S/2", depth=args.depth, hidden_size=args.width, num_heads=args.heads,
                         input_size=args.input_size, in_channels=4, num_classes=1000, interval_embedding=True)
    with torch.no_grad():  # leave DiT's zero initialisation, so every layer does real work
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.to(device)


def step_fn(objective, backbone, x0, labels, seed: int) -> Callable[[], None]:
    net = AlignedModel(backbone, None, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    gen = torch.Generator(device=x0.device).manual_seed(seed)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        objective.loss(net, x0, labels, gen)["loss"].backward()
        opt.step()

    return step


def measure_steps(args, device, backbone, x0, labels) -> None:
    flow = FlowMatching(ObjectiveConfig(time_sampling="lognormal", p_mean=-0.4, p_std=1.0), 1000)
    plain = MeanFlow(ObjectiveConfig(kind="meanflow", time_sampling="lognormal", p_mean=-0.4, p_std=1.0), 1000)
    guided = MeanFlow(
        ObjectiveConfig(kind="meanflow", time_sampling="lognormal", p_mean=-0.4, p_std=1.0,
                        meanflow=MeanFlowConfig(cfg_omega=1.0, cfg_kappa=0.5)),
        1000,
    )
    rows = []
    for name, objective in (("flow matching", flow), ("MeanFlow", plain), ("MeanFlow + training CFG", guided)):
        step = step_fn(objective, copy.deepcopy(backbone), x0, labels, seed=0)
        rows.append((name, median_seconds(step, args.reps, device)))
    base = rows[0][1]
    print(f"\n1. one training step (batch {args.batch}, median of {args.reps})")
    for name, sec in rows:
        print(f"   {name:<26s} {sec * 1000:9.1f} ms   x{sec / base:.2f}")

    t = torch.rand(args.batch, device=device)
    r = t * torch.rand(args.batch, device=device)
    v = torch.randn_like(x0)

    def forward() -> None:
        with torch.no_grad():
            backbone(x0, t, labels, r=r)

    def jvp() -> None:
        plain.mean_flow_target(lambda z, tt, y, r=None: backbone(z, tt, y, r=r), x0, r, t, v, labels)

    f_sec = median_seconds(forward, args.reps, device)
    j_sec = median_seconds(jvp, args.reps, device)
    print(f"   forward (no grad)          {f_sec * 1000:9.1f} ms")
    print(f"   JVP target (no grad, math) {j_sec * 1000:9.1f} ms   = {j_sec / f_sec:.2f} forwards")


def jvp_call(model, x0, labels, backend) -> torch.Tensor:
    t = torch.full((x0.shape[0],), 0.7, device=x0.device)
    r = torch.full((x0.shape[0],), 0.2, device=x0.device)
    v = torch.ones_like(x0)

    def u(z, r_, t_):
        return model(z, t_, labels, r=r_)

    with torch.no_grad(), (sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()):
        return torch.func.jvp(u, (x0, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))[1]


def measure_backends(backbone, x0, labels) -> None:
    print("\n2. torch.func.jvp through F.scaled_dot_product_attention")
    backends = [("default (no kernel forced)", None)] + [(b.name, b) for b in (
        SDPBackend.MATH, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION)]
    for name, backend in backends:
        try:
            jvp_call(backbone, x0, labels, backend)
            print(f"   {name:<28s} works")
        except Exception as err:  # noqa: BLE001 - the point is to report whatever fails
            print(f"   {name:<28s} fails: {first_line(err)}")


def dynamo_summary() -> tuple[int, str]:
    """Graphs dynamo compiled since the last reset, and the first reason it gave for not tracing something."""
    from torch._dynamo.utils import counters

    graphs = int(counters["stats"].get("unique_graphs", 0))
    reasons = [line.strip() for key in counters["unimplemented"] for line in key.splitlines()]
    said = [line for line in reasons if "not supported" in line] or reasons[:1]
    return graphs, (said[0] if said else "")


def timed_first_call(fn: Callable[[], torch.Tensor], device) -> tuple[torch.Tensor, float, float]:
    sync(device)
    t0, w0 = clock(device), time.perf_counter()
    out = fn()
    sync(device)
    return out, clock(device) - t0, time.perf_counter() - w0


def measure_compile(args, device, backbone, x0, labels) -> None:
    print("\n3. JVP (math kernel) and torch.compile")
    reference = jvp_call(backbone, x0, labels, SDPBackend.MATH)
    eager = median_seconds(lambda: jvp_call(backbone, x0, labels, SDPBackend.MATH), args.reps, device)
    print(f"   eager                                {eager * 1000:9.1f} ms per JVP")

    whole = torch.compile(copy.deepcopy(backbone))
    regional = copy.deepcopy(backbone)
    for block in regional.blocks:
        block.compile()
    compiled_jvp = torch.compile(lambda: jvp_call(backbone, x0, labels, SDPBackend.MATH))
    cases = (
        ("jvp(compiled model)", lambda: jvp_call(whole, x0, labels, SDPBackend.MATH)),
        ("jvp(model, blocks compiled)", lambda: jvp_call(regional, x0, labels, SDPBackend.MATH)),
        ("compile(function calling jvp)", compiled_jvp),
    )
    for name, fn in cases:
        torch._dynamo.reset()
        try:
            out, first, first_wall = timed_first_call(fn, device)
            graphs, reason = dynamo_summary()
            steady = median_seconds(fn, args.reps, device, warmup=0)
            diff = (out - reference).abs().max().item()
            how = f"{graphs} graph(s) compiled" if graphs else f"ran eagerly: {reason}"
            print(f"   {name:<36s} {how}\n   {'':<36s} first call {first_wall:6.1f} s wall ({first:.1f} s CPU here), "
                  f"then {steady * 1000:.1f} ms (x{steady / eager:.2f} of eager), max |diff| from eager {diff:.1e}")
        except Exception as err:  # noqa: BLE001 - the point is to report whatever fails
            print(f"   {name:<36s} fails: {first_line(err)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parts", default="123", help="which parts to run, e.g. 12 (compiling is slow on a CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"torch {torch.__version__} on {device.type} ({name}), {torch.get_num_threads()} threads; "
          f"SiT depth {args.depth}, width {args.width}, {args.heads} heads, "
          f"{(args.input_size // 2) ** 2} tokens, batch {args.batch}")
    backbone = build_backbone(args, device)
    x0 = torch.randn(args.batch, 4, args.input_size, args.input_size, device=device)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    if "1" in args.parts:
        measure_steps(args, device, backbone, x0, labels)
    if "2" in args.parts:
        measure_backends(backbone, x0, labels)
    if "3" in args.parts:
        measure_compile(args, device, backbone, x0, labels)


if __name__ == "__main__":
    main()

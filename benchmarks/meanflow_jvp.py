"""What MeanFlow's JVP costs against flow matching, and where ``torch.func.jvp`` runs.

    python benchmarks/meanflow_jvp.py [--depth 12] [--width 384] [--heads 6] [--input-size 32] [--batch 8]
                                      [--reps 5] [--rounds 3] [--threads 1] [--device cpu] [--parts 1234]
    python benchmarks/meanflow_jvp.py --quick --threads 1   # parts 1 and 4 on a depth-4 model, 64 tokens

A SiT-S-like backbone (SiT-S/2: depth 12, width 384, 6 heads, on 32x32x4 latents = 256 tokens) by default.
Times are medians; on the CPU they are this process's CPU seconds (robust to other jobs on a shared machine),
on a GPU wall seconds. Prints, on the machine it runs on:

1. the median seconds of one optimizer step (loss, backward, AdamW) for flow matching and for MeanFlow in
   both forms (``objective.meanflow.jvp``: single pass, the prediction taken from the JVP's primal output;
   two-pass, a no-grad JVP then a forward and backward), without training-time guidance and with it
   (kappa > 0: one more doubled forward), as ratios to flow matching over interleaved rounds (median and
   range, so the spread on a busy machine shows); and the JVP pass alone against one forward;
2. whether ``torch.func.jvp`` runs through ``F.scaled_dot_product_attention`` with the default kernel choice
   and with each forced kernel (the error's first line when not);
3. whether the JVP runs through ``torch.compile`` (the whole model, and block by block as ``train.compile``
   does), the first call's time (tracing + compiling), the steady-state time and the largest difference
   from eager mode;
4. how far the MeanFlow target, its JVP term and the error move under bf16 autocast
   (``objective.meanflow.precision: autocast``) from the float32 default (relative L2, and the worst sample).
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


def meanflow(form: str, kappa: float = 0.0, precision: str = "fp32") -> MeanFlow:
    m = MeanFlowConfig(jvp=form, precision=precision, cfg_omega=1.0, cfg_kappa=kappa)
    return MeanFlow(ObjectiveConfig(kind="meanflow", time_sampling="lognormal", p_mean=-0.4, p_std=1.0, meanflow=m),
                    1000)


def measure_steps(args, device, backbone, x0, labels) -> None:
    flow = FlowMatching(ObjectiveConfig(time_sampling="lognormal", p_mean=-0.4, p_std=1.0), 1000)
    cases = [("flow matching", flow), ("MeanFlow, single pass", meanflow("single")),
             ("MeanFlow, two-pass", meanflow("two-pass"))]
    if not args.quick:
        cases += [("MeanFlow + training CFG, single", meanflow("single", 0.5)),
                  ("MeanFlow + training CFG, two-pass", meanflow("two-pass", 0.5))]
    steps = {name: step_fn(objective, copy.deepcopy(backbone), x0, labels, seed=0) for name, objective in cases}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):  # interleaved rounds: a load change on a shared machine hits every case alike
        for name, step in steps.items():
            times[name].append(median_seconds(step, args.reps, device))
    print(f"\n1. one training step (batch {args.batch}; median of {args.reps} per round, {args.rounds} interleaved "
          f"rounds; ratio to flow matching: median over rounds [min, max])")
    base = times["flow matching"]
    for name, secs in times.items():
        ratios = [s / b for s, b in zip(secs, base)]
        print(f"   {name:<34s} {statistics.median(secs) * 1000:9.1f} ms   x{statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}, {max(ratios):.2f}]")

    t = torch.rand(args.batch, device=device)
    r = t * torch.rand(args.batch, device=device)
    v = torch.randn_like(x0)

    def forward() -> None:
        with torch.no_grad():
            backbone(x0, t, labels, r=r)

    def jvp() -> None:
        cases[1][1].mean_flow_target(lambda z, tt, y, r=None: backbone(z, tt, y, r=r), x0, r, t, v, labels)

    f_sec = median_seconds(forward, args.reps, device)
    j_sec = median_seconds(jvp, args.reps, device)
    print(f"   forward (no grad)                  {f_sec * 1000:9.1f} ms")
    print(f"   JVP target (no grad, math)         {j_sec * 1000:9.1f} ms   = {j_sec / f_sec:.2f} forwards")


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


def measure_precision(backbone, x0, labels) -> None:
    """What bf16 autocast does to the MeanFlow target (``precision: autocast``) against float32 (the default)."""
    print("\n4. MeanFlow target and error under bf16 autocast (precision: autocast) vs float32 (precision: fp32)")
    gen = torch.Generator(device=x0.device).manual_seed(1)
    objective = meanflow("two-pass", precision="autocast")
    d = objective.draw(x0, labels, gen)
    d.r = torch.where(d.r < d.t, d.r, d.t * 0.5)  # every row with r < t: the JVP term acts everywhere
    z, v = objective.path.sample_xt(x0, d.noise, d.t), objective.path.velocity(x0, d.noise, d.t)

    def u(z_, t_, y, r=None):
        return backbone(z_, t_, y, r=r)

    results = {}
    for name, ctx in (("fp32", contextlib.nullcontext()), ("bf16", torch.autocast(x0.device.type, torch.bfloat16))):
        with ctx:
            target = objective.mean_flow_target(u, z, d.r, d.t, v, d.labels).float()
            with torch.no_grad():
                pred = u(z, d.t, d.labels, r=d.r).float()
        results[name] = (target, v - target, pred - target)
    names = ("target u_tgt", "JVP term (t - r) du/dt", "error u - u_tgt")
    for label, exact, low in zip(names, results["fp32"], results["bf16"]):
        rel = ((low - exact).norm() / exact.norm()).item()
        per_sample = ((low - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1)).max().item()
        print(f"   {label:<24s} relative L2 difference {rel:.2e} (worst sample {per_sample:.2e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of part 1 (the spread is shown)")
    parser.add_argument("--quick", action="store_true",
                        help="part 1 without the guided rows, on a SiT-S/2-wide model of depth 4, 16x16 latents")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parts", default=None,
                        help="which parts to run, e.g. 12 (default 1234; compiling is slow on a CPU; --quick: 14)")
    args = parser.parse_args()
    if args.quick:
        args.depth, args.input_size = 4, 16
    args.parts = args.parts or ("14" if args.quick else "1234")
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
    if "4" in args.parts:
        measure_precision(backbone, x0, labels)


if __name__ == "__main__":
    main()

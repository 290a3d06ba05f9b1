"""Throughput of the batched spatial metrics against a straightforward per-image, per-anchor loop.

    python benchmarks/spatial_metrics.py [--batch 64] [--grid 16] [--dim 768] [--threads 1]

Both paths compute LDS, CDS, SRSS and RMSC on the same tokens; the script prints images/s of each,
their ratio and the largest difference between the two results.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from irepa.metrics import compute_metrics


def loop_metrics(
    tokens: torch.Tensor,
    H: int,
    W: int,
    masks: torch.Tensor,
    far_dist: int = 6,
    dmax: int = 8,
    d_pos: int = 1,
    d_neg: int = 6,
) -> dict[str, torch.Tensor]:
    """The direct implementation: a Python loop over images and, inside, over anchor tokens."""
    T = H * W
    ys, xs = torch.arange(T) // W, torch.arange(T) % W
    out: dict[str, list[float]] = {"lds": [], "cds": [], "srss": [], "rmsc": []}
    for b in range(tokens.shape[0]):
        u = F.normalize(tokens[b].float(), dim=-1)
        fg = masks[b]
        near_sum = far_sum = 0.0
        near_n = far_n = 0
        by_d_sum = [0.0] * (dmax + 1)
        by_d_n = [0] * (dmax + 1)
        srss_vals = []
        for i in range(T):
            cos = u @ u[i]
            d = (ys - ys[i]).abs() + (xs - xs[i]).abs()
            near_sum += cos[d == 1].sum().item()
            near_n += int((d == 1).sum())
            far_sum += cos[d >= far_dist].sum().item()
            far_n += int((d >= far_dist).sum())
            for k in range(1, dmax + 1):
                by_d_sum[k] += cos[d == k].sum().item()
                by_d_n[k] += int((d == k).sum())
            if fg[i]:
                pos = cos[fg & (d >= 1) & (d <= d_pos)]
                neg = cos[~fg & (d >= d_neg)]
                if len(pos) and len(neg):
                    srss_vals.append(pos.mean().item() - neg.mean().item())
        out["lds"].append(near_sum / near_n - far_sum / far_n)
        means = torch.tensor([by_d_sum[k] / by_d_n[k] for k in range(1, dmax + 1)], dtype=torch.float64)
        dist = torch.arange(1, dmax + 1, dtype=torch.float64)
        dc = dist - dist.mean()
        out["cds"].append(-float(((means - means.mean()) * dc).sum() / (dc * dc).sum()))
        out["srss"].append(sum(srss_vals) / len(srss_vals) if srss_vals else math.nan)
        out["rmsc"].append((u - u.mean(dim=0)).pow(2).sum(dim=-1).mean().sqrt().item())
    return {k: torch.tensor(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loop-images", type=int, default=8, help="images timed for the loop (it is slow)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    H = W = args.grid
    tokens = torch.randn(args.batch, H * W, args.dim, generator=g) + torch.randn(args.batch, 1, args.dim, generator=g)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    blob = (((ys - H / 2) ** 2 + (xs - W / 2) ** 2) < (H / 3) ** 2).reshape(-1)
    masks = blob.expand(args.batch, -1).clone()

    names = ["lds", "cds", "srss", "rmsc"]
    compute_metrics(tokens[:2], H, W, names, masks=masks[:2])  # warm-up
    t0 = time.perf_counter()
    batched = compute_metrics(tokens, H, W, names, masks=masks)
    t_batched = time.perf_counter() - t0

    n_loop = min(args.loop_images, args.batch)
    t0 = time.perf_counter()
    looped = loop_metrics(tokens[:n_loop], H, W, masks[:n_loop])
    t_loop = time.perf_counter() - t0

    ips_batched, ips_loop = args.batch / t_batched, n_loop / t_loop
    diff = max((batched[k][:n_loop].double() - looped[k]).abs().max().item() for k in names)
    print(f"tokens {H}x{W} x {args.dim} dims, batch {args.batch}, {args.threads} thread(s), metrics {','.join(names)}")
    print(f"batched (Gram blocks):        {ips_batched:10.1f} images/s  ({t_batched:.3f} s for {args.batch})")
    print(f"per-image, per-anchor loop:   {ips_loop:10.1f} images/s  ({t_loop:.3f} s for {n_loop})")
    print(f"speed-up: {ips_batched / ips_loop:.1f}x   max |difference|: {diff:.2e}")


if __name__ == "__main__":
    main()

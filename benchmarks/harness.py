"""What the benchmarks here share: device, timed windows taken in turns, peak FLOP/s, memory, tables, JSON.

Timing rule: each candidate runs its warm-up steps first; then ``reps`` rounds, and in every round
each candidate runs one timed window of ``window`` steps, the order rotating from round to round
(A B C, B C A, ...), so the slow and fast phases of a shared machine fall on all candidates alike.
A window starts and ends with a device synchronisation; the figure reported is the median over
windows, with the range beside it.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from irepa.utils.io import atomic_write_json

# Dense peak throughput in TFLOP/s, from the vendors' data sheets (no structured sparsity).
# "fp32": plain fp32 on the CUDA cores; "tf32": fp32 tensors with TF32 tensor-core matmuls.
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [  # matched in order against torch.cuda.get_device_name()
    ("H200", {"bf16": 989.0, "tf32": 494.5, "fp32": 66.9}),
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 NVL", {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("H100", {"bf16": 989.0, "tf32": 494.5, "fp32": 66.9}),  # SXM: "NVIDIA H100 80GB HBM3"
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
]
PRECISIONS = ("fp32", "tf32", "bf16")


def pick_device(name: str | None) -> torch.device:
    """``cuda`` when one is visible unless told otherwise; a clear exit when CUDA is asked for and absent."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible here; use --device cpu --quick")
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def use_precision(precision: str, device: torch.device) -> str:
    """Set the matmul mode for ``precision`` and return the run's ``train.mixed_precision`` for it.

    ``tf32`` is fp32 training with TF32 matmuls and convolutions (CUDA only); ``fp32`` turns them off
    (PyTorch's default); ``bf16`` is bf16 autocast with fp32 weights.
    """
    if precision not in PRECISIONS:
        raise SystemExit(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "tf32" and device.type != "cuda":
        raise SystemExit("tf32 exists on CUDA GPUs only; use fp32 on the CPU")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
    return "bf16" if precision == "bf16" else "fp32"


# ---------------------------------------------------------------------------------------------- timing


class Candidate(Protocol):
    """Something to time: ``step()`` does one unit of work; ``end_window()`` closes a timed window
    (e.g. reads back the window's logged scalars, as a training loop does at its log step)."""

    def step(self) -> None: ...

    def end_window(self) -> None: ...


@dataclass
class Timing:
    seconds: list[float]  # per step, one value per timed window
    items_per_step: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        """Items (images) per second at the median step time."""
        return self.items_per_step / self.median

    @property
    def rate_range(self) -> tuple[float, float]:
        return self.items_per_step / max(self.seconds), self.items_per_step / min(self.seconds)

    def as_dict(self) -> dict[str, Any]:
        lo, hi = self.rate_range
        return {"images_per_s": self.rate, "images_per_s_min": lo, "images_per_s_max": hi,
                "ms_per_step": 1e3 * self.median, "window_seconds_per_step": self.seconds}


def time_in_turns(
    candidates: dict[str, Candidate],
    items_per_step: dict[str, int] | int,
    device: torch.device,
    warmup: int,
    window: int,
    reps: int,
    say: Callable[[str], None] = print,
) -> dict[str, Timing]:
    """Warm every candidate up, then time ``reps`` windows of each, taking turns in a rotating order."""
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name].step()
        candidates[name].end_window()
        synchronize(device)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            c = candidates[name]
            synchronize(device)
            start = time.perf_counter()
            for _ in range(window):
                c.step()
            c.end_window()
            synchronize(device)
            seconds[name].append((time.perf_counter() - start) / window)
        say("  round {}/{}: {}".format(rep + 1, reps, ", ".join(f"{n} {1e3 * seconds[n][-1]:.0f} ms" for n in names)))
    per = items_per_step if isinstance(items_per_step, dict) else {n: items_per_step for n in names}
    return {n: Timing(seconds[n], per[n]) for n in names}


# ---------------------------------------------------------------------------------------------- peaks


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """Best FLOP/s of ``size``-cubed matmuls measured now (the machine's attainable peak)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # first call: allocation, kernel choice
    synchronize(device)
    best, spent = 0.0, 0.0
    while spent < seconds:
        start = time.perf_counter()
        for _ in range(4 if device.type == "cpu" else 50):
            a @ b
        synchronize(device)
        took = time.perf_counter() - start
        spent += took
        best = max(best, (4 if device.type == "cpu" else 50) * 2 * size**3 / took)
    return best


def peak_flops(device: torch.device, precision: str, cache: dict | None = None,
               remeasure: bool = False) -> tuple[float, str]:
    """(FLOP/s, where the number comes from) for MFU: a data-sheet value on known GPUs, else measured.

    Measured peaks are kept in ``cache``; ``remeasure`` measures again and keeps the best, so a peak
    taken while a shared machine was busy does not stay the reference for the whole run.
    """
    cache = {} if cache is None else cache
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAKS:
            if key in name:
                return peaks[precision] * 1e12, f"{name}: data-sheet dense {precision} peak"
    size = 2048 if device.type == "cpu" else 8192
    if precision not in cache or remeasure:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        cache[precision] = max(cache.get(precision, 0.0), matmul_peak(device, dtype, size, seconds=1.0))
    where = "this CPU" if device.type == "cpu" else torch.cuda.get_device_name(device)
    return cache[precision], f"{where}: best {precision} {size}x{size} matmul, measured between the settings"


# ---------------------------------------------------------------------------------------------- memory


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory over a stretch of work.

    CUDA: ``torch.cuda.max_memory_allocated`` (everything allocated at the peak: weights, optimiser
    state, EMA, encoder, activations). CPU: the process's peak resident set (``VmHWM``, reset through
    ``/proc/self/clear_refs``) — it includes the interpreter and libraries and whatever the allocator
    keeps; ``None`` where the peak cannot be reset. ``step_delta_mb``: the peak minus what was resident
    (CUDA: allocated) when the stretch began.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else "cpu peak RSS (VmHWM)"

    def __enter__(self) -> PeakMemory:
        self.ok = True
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.ok = False
            rss = _proc_status_kb("VmRSS")
            self.start_mb = rss / 1024 if rss is not None else None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            hwm = _proc_status_kb("VmHWM")
            self.peak_mb = hwm / 1024 if (self.ok and hwm is not None) else None
        # what the step itself added on top of what was resident when it began (activations, temporaries)
        self.step_delta_mb = None if self.peak_mb is None or self.start_mb is None else self.peak_mb - self.start_mb


# ---------------------------------------------------------------------------------------------- reporting


def say(*parts: Any) -> None:
    """Print at once (benchmarks run for minutes; the output should not wait in a buffer)."""
    print(*parts, flush=True)


def start(device_name: str | None, threads: int | None) -> tuple[torch.device, dict[str, Any]]:
    """Set the torch thread count, pick the device and print one line describing the machine."""
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(device_name)
    info = machine_info(device)
    say(f"device: {info['device']} | torch {info['torch']} | threads {info['torch_threads']} | "
        f"load {info.get('load_average_1m_at_start', '-')}")
    return device, info


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1m_at_start"] = os.getloadavg()[0]
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> None:
    """Columns are (key, header, format spec); missing values print as '-'."""
    cells = [[fmt(r.get(k), spec) for k, _, spec in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(columns)]
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, ((_, h, _), w) in enumerate(zip(columns, widths))))
    for c in cells:
        print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(c, widths))))


def save_result(args: Any, benchmark: str, info: dict[str, Any], rows: list[dict[str, Any]], **extra: Any) -> None:
    """Write ``rows`` with the command, the machine and the settings to ``args.out`` (if given), atomically:
    a crash never leaves half a file where an old result was."""
    if not args.out:
        return
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    payload = {"benchmark": benchmark, "command": " ".join(sys.argv), "machine": info, "settings": settings,
               "rows": rows, **extra}
    atomic_write_json(args.out, payload, default=str, sort_keys=False)
    say(f"wrote {args.out}")

"""Shared pieces of the fault-injection suite (helpers and session fixtures; ``conftest.py`` exposes the fixtures).

Every scenario drives the ``irepa`` command line (in a subprocess where it gets killed, in-process
otherwise), so the suite checks what a user sees, whatever the library does inside.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from irepa.cli import main
from irepa.utils.io import LOCK_FILE, file_digest, is_temp_file

# A SiT of depth 2 and width 32 on 8-px synthetic images, aligned at block 1 with weight-free HOG
# targets: the whole training pipeline (model, EMA, projector, optimizer, RNG, logs) in about a second.
TINY_TRAIN = [
    "train", "--smoke", "--model.depth", "2", "--model.hidden_size", "32", "--model.num_heads", "2",
    "--model.input_size", "8", "--data.resolution", "8", "--data.synthetic_size", "64",
    "--align.encoders", "hog", "--align.depth", "1", "--train.steps", "12", "--train.ckpt_every", "4",
    "--train.sample_every", "0", "--train.keep_checkpoints", "0",
]  # fmt: skip
FINAL_STEP = 12
# How many random kill moments each SIGKILL scenario tries (IREPA_FAULT_SEEDS=10 for a longer soak).
SEEDS = list(range(int(os.environ.get("IREPA_FAULT_SEEDS", "2"))))


def cli(*args: str | Path) -> int:
    """``irepa ARGS`` in this process; returns the exit code."""
    return main([str(a) for a in args])


def spawn(*args: str | Path, log: Path) -> subprocess.Popen:
    """``irepa ARGS`` in a child process (same interpreter, same thread count, offline)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(torch.get_num_threads()))
    src = str(Path(__file__).parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "irepa.cli", *map(str, args)], stdout=out, stderr=out, env=env)


def kill_at_random_moment(proc: subprocess.Popen, started: Callable[[], bool], window_s: float, seed: int) -> bool:
    """SIGKILL ``proc`` a random time (uniform in ``[0, window_s]``, from ``seed``) after ``started()``
    holds; returns whether it was still running when killed."""
    deadline = time.monotonic() + 300
    while not started() and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the command never started its work")
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0.0, window_s))
    running = proc.poll() is None
    proc.kill()
    proc.wait()
    return running


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    t0 = time.perf_counter()
    code = fn()
    return code, time.perf_counter() - t0


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if is_temp_file(p)]


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_bit(path: Path, where: float = 0.6) -> None:
    """Flip one bit inside the file (at a relative position), as a bad disk or copy would."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x10
    path.write_bytes(bytes(data))


def checkpoint_tensors(path: Path, step: int = FINAL_STEP) -> dict[str, torch.Tensor]:
    """Every tensor that defines the training state (model, EMA, projector, optimizer), flattened."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value) -> None:
        if torch.is_tensor(value):
            out[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)

    for key in ("model", "ema", "aligner", "optimizer"):
        walk(key, ckpt[key])
    assert ckpt["step"] == step
    return out


def assert_same_state(a: Path, b: Path, step: int = FINAL_STEP) -> None:
    ta, tb = checkpoint_tensors(a, step), checkpoint_tensors(b, step)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> tuple[Path, float]:
    """The tiny training run, uninterrupted, and how long its command took in-process."""
    run = tmp_path_factory.mktemp("reference") / "run"
    code, seconds = timed(lambda: cli(*TINY_TRAIN, "--out", run))
    assert code == 0
    return run, seconds


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory) -> Path:
    """A diffusers AutoencoderKL with 2x downsampling and random weights, saved to a folder."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


def prepare_args(vae: Path, out: Path) -> list:
    """``irepa prepare-latents`` of 48 synthetic 16-px images in 12 shards."""
    return ["prepare-latents", "--source", "synthetic", "--num-classes", "4", "--limit", "48", "--resolution", "16",
            "--vae", vae, "--out", out, "--shard-size", "4", "--batch-size", "4", "--num-workers", "0"]


@pytest.fixture(scope="session")
def reference_latents(tiny_vae, tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("latents") / "cache"
    code, seconds = timed(lambda: cli(*prepare_args(tiny_vae, out)))
    assert code == 0
    return out, seconds


def sample_args(ckpt: Path, out: Path) -> list:
    """``irepa sample`` of 24 images in 6 shards."""
    return ["sample", "--ckpt", ckpt, "--num-samples", "24", "--shard-size", "4", "--batch-size", "4",
            "--sampler", "ode-euler", "--steps", "4", "--out", out, "--no-progress"]


@pytest.fixture(scope="session")
def reference_samples(reference_run, tmp_path_factory) -> tuple[Path, float]:
    ckpt = reference_run[0] / "checkpoints"
    out = tmp_path_factory.mktemp("samples") / "out"
    code, seconds = timed(lambda: cli(*sample_args(ckpt, out)))
    assert code == 0
    return out, seconds


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` by relative path: what "nothing already written changed" compares.

    A folder's empty lock file (:data:`irepa.utils.io.LOCK_FILE`, taken by the command that owns it) holds no
    data and is left out."""
    return {p.relative_to(folder).as_posix(): file_digest(p).sha256 for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def one_error_line(capsys) -> str:
    """The single ``irepa <command>: ...`` line of a failed command; fails on a traceback or several lines."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("irepa ")]
    assert len(lines) == 1, err
    return lines[0]


@contextlib.contextmanager
def small_disk(folder: Path, size: int) -> Iterator[Path]:
    """A real tmpfs of ``size`` bytes mounted at ``folder`` (made if needed); skips the test unless it can
    mount one (root on Linux)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    folder.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_up(folder: Path) -> Path:
    """Write a file into ``folder`` until its file system is full; returns it (delete it to free the space)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for chunk in (1 << 16, 1):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
    return filler

"""One writer per folder: a second ``irepa train`` (or ``--resume``) on a live run, or a second
``irepa sample`` into a folder being filled, is refused at once; a SIGKILLed holder leaves nothing
that blocks the next command (the kernel drops its lock)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from faultkit import TINY_TRAIN, cli, sample_args, spawn

from irepa.errors import FolderInUseError
from irepa.train.checkpoint import checkpoint_damage, checkpoint_path, checkpoint_steps
from irepa.utils.io import LOCK_FILE

LONG_STEPS = 40  # long enough that the first run is still alive while the second one is tried


def _wait_until_held(folder: Path, proc) -> None:
    """Until ``proc`` holds ``folder`` (its pid is in the lock file)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        lock = folder / LOCK_FILE
        if lock.is_file() and lock.read_text().split()[:1] == [str(proc.pid)]:
            return
        time.sleep(0.02)
    raise AssertionError(f"the first command never took the folder (exit {proc.poll()})")


def _refusal(capsys, *args) -> str:
    """The one error line of a refused command (``irepa sample`` may say which checkpoint it read first)."""
    capsys.readouterr()
    assert cli(*args) == FolderInUseError.exit_code
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith(f"irepa {args[0]}:")]
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


def test_a_second_training_on_a_live_run_is_refused_and_the_first_finishes_intact(tmp_path, capsys):
    run = tmp_path / "run"
    first = [*TINY_TRAIN, "--train.steps", str(LONG_STEPS), "--train.ckpt_every", "10", "--out", run]
    proc = spawn(*first, log=tmp_path / "first.log")
    try:
        _wait_until_held(run, proc)
        err = _refusal(capsys, *TINY_TRAIN, "--train.lr", "0.5", "--out", run)
        assert f"pid {proc.pid}" in err and "--resume" in err and "another --out" in err
        assert proc.poll() is None, "the first run ended before the second was tried; raise LONG_STEPS"
        assert f"pid {proc.pid}" in _refusal(capsys, *TINY_TRAIN, "--out", run, "--resume")
    finally:
        code = proc.wait(timeout=600)
    assert code == 0, (tmp_path / "first.log").read_text()[-2000:]
    ckpts = run / "checkpoints"
    assert checkpoint_steps(ckpts) == [10, 20, 30, 40]
    assert all(checkpoint_damage(checkpoint_path(ckpts, s)) is None for s in checkpoint_steps(ckpts))
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] != 0.5  # the first run's settings
    steps = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, LONG_STEPS + 1))  # one writer: each step once, in order


def test_a_killed_training_leaves_a_folder_the_next_run_takes(tmp_path):
    run = tmp_path / "run"
    proc = spawn(*TINY_TRAIN, "--train.steps", str(LONG_STEPS), "--out", run, log=tmp_path / "killed.log")
    _wait_until_held(run, proc)
    proc.kill()
    proc.wait()
    assert (run / LOCK_FILE).is_file()  # left behind, and harmless: nobody holds it
    resume = ["--resume"] if checkpoint_steps(run / "checkpoints") else []
    assert cli(*TINY_TRAIN, "--out", run, *resume) == 0
    assert checkpoint_steps(run / "checkpoints")[-1] == 12


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("owned") / "run"
    assert cli(*TINY_TRAIN, "--train.steps", "2", "--train.ckpt_every", "2", "--out", run) == 0
    return run / "checkpoints"


def test_a_second_sampling_into_a_folder_being_filled_is_refused_until_the_first_is_gone(checkpoint, tmp_path, capsys):
    out = tmp_path / "samples"
    many = [*sample_args(checkpoint, out)]
    many[many.index("--num-samples") + 1] = "4000"
    proc = spawn(*many, log=tmp_path / "first.log")
    try:
        _wait_until_held(out, proc)
        err = _refusal(capsys, *sample_args(checkpoint, out))
        assert f"pid {proc.pid}" in err and "another --out" in err
        assert proc.poll() is None, "the first sampling ended before the second was tried"
    finally:
        proc.kill()
        proc.wait()
    assert cli(*sample_args(checkpoint, out)) == 0  # the killed holder's lock went with it
    assert (out / "samples_24.npz").is_file()

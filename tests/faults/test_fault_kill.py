"""SIGKILL at random moments, then the same command again: the results equal an uninterrupted run.

Training, latent preparation and sampling each run as a child process that is killed a random
time after it started its work (several seeds); the rerun happens in this process.
"""

from __future__ import annotations

import numpy as np
import pytest
from faultkit import (
    FINAL_STEP,
    SEEDS,
    TINY_TRAIN,
    assert_same_state,
    cli,
    files,
    kill_at_random_moment,
    prepare_args,
    sample_args,
    spawn,
    temp_files,
)

from irepa.train.checkpoint import checkpoint_damage, checkpoint_path, checkpoint_steps


@pytest.mark.parametrize("seed", SEEDS)
def test_training_killed_then_resumed_equals_uninterrupted(reference_run, tmp_path, seed):
    reference, seconds = reference_run
    run = tmp_path / "run"
    proc = spawn(*TINY_TRAIN, "--out", run, log=tmp_path / "killed.log")
    kill_at_random_moment(proc, lambda: (run / "config.yaml").is_file(), seconds, seed)

    ckpts = run / "checkpoints"
    for step in checkpoint_steps(ckpts):  # whatever was written is whole
        assert checkpoint_damage(checkpoint_path(ckpts, step)) is None
    resume = ["--resume"] if checkpoint_steps(ckpts) else []
    assert cli(*TINY_TRAIN, "--out", run, *resume) == 0
    assert temp_files(run) == []  # a checkpoint cut off by the kill is cleaned up on resume
    assert_same_state(checkpoint_path(ckpts, FINAL_STEP), checkpoint_path(reference / "checkpoints", FINAL_STEP))
    assert _losses(run) == _losses(reference)  # the log holds each step once, as if never interrupted


def _losses(run) -> list[list[str]]:
    rows = [r.split(",") for r in (run / "metrics.csv").read_text().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name == "step" or name.startswith(("loss", "align", "grad_norm"))]
    return [[r[i] for i in keep] for r in rows]


@pytest.mark.parametrize("seed", SEEDS)
def test_latent_preparation_killed_then_rerun_is_byte_identical(reference_latents, tiny_vae, tmp_path, seed):
    reference, seconds = reference_latents
    out = tmp_path / "cache"
    proc = spawn(*prepare_args(tiny_vae, out), log=tmp_path / "killed.log")
    kill_at_random_moment(proc, lambda: (out / "index.json").is_file(), seconds, seed)
    assert cli(*prepare_args(tiny_vae, out)) == 0
    assert files(out) == files(reference)  # shards, statistics, checksums: same bytes
    assert temp_files(out) == []


@pytest.mark.parametrize("seed", SEEDS)
def test_sampling_killed_then_rerun_equals_uninterrupted(reference_run, reference_samples, tmp_path, seed):
    reference, seconds = reference_samples
    ckpt = reference_run[0] / "checkpoints"
    out = tmp_path / "out"
    proc = spawn(*sample_args(ckpt, out), log=tmp_path / "killed.log")
    kill_at_random_moment(proc, lambda: (out / "run.json").is_file(), seconds, seed)
    assert cli(*sample_args(ckpt, out)) == 0
    for key in ("arr_0", "labels"):
        np.testing.assert_array_equal(np.load(out / "samples_24.npz")[key], np.load(reference / "samples_24.npz")[key])
    assert temp_files(out) == []

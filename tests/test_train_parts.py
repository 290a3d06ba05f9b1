"""The trainer's parts that decide what happens on a GPU, checked on the CPU: overflow handling,
device-side scalars, the learning-rate schedule, parameter groups, and start-up checks."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_overrides, with_random_encoders

from irepa.config import load_config
from irepa.errors import TrainingDiverged
from irepa.train.divergence import OverflowGuard, check_finite
from irepa.train.logger import StepLog
from irepa.train.optim import build_optimizer, learning_rate
from irepa.train.run import step_generator


def test_fp16_overflows_are_skipped_until_too_many_in_a_row(tmp_path):
    guard = OverflowGuard(limit=3, checkpoints=tmp_path)
    for step, skipped in enumerate([True, True, False, True, True, False, True], start=1):
        guard.record(skipped, step)  # never three in a row: the scaler recovers each time
    assert guard.in_a_row == 1
    guard.record(True, 8)
    with pytest.raises(TrainingDiverged, match="3 steps in a row up to step 9"):
        guard.record(True, 9)


def test_step_log_reads_back_what_was_recorded_and_finds_the_first_bad_step():
    log = StepLog()
    values = [(1.5, 0.25), (1.25, float("nan")), (float("inf"), 0.5)]
    for step, (loss, norm) in enumerate(values, start=10):
        log.add(step, 1e-4 * step, {"loss": torch.tensor(loss, dtype=torch.float64),
                                     "grad_norm": torch.tensor(norm, dtype=torch.float64)})
    steps, rows = log.flush()
    assert steps == [10, 11, 12] and log.rows == []
    assert rows[0] == {"loss": 1.5, "grad_norm": 0.25, "lr": 1e-3}
    with pytest.raises(TrainingDiverged, match="gradient norm at step 11"):
        check_finite(steps, rows, "the last good checkpoint (x)")
    check_finite(steps[:1], rows[:1], "x")  # a finite window passes


def test_learning_rate_warms_up_linearly_then_follows_a_half_cosine():
    cfg = load_config(None, {"train.lr": 1e-3, "train.min_lr": 1e-4, "train.warmup_steps": 4, "train.steps": 14,
                             "train.lr_schedule": "cosine"}).train
    lrs = [learning_rate(cfg, s) for s in range(14)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    for s in range(4, 14):
        p = (s - 4) / 10
        assert lrs[s] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * p)))
    constant = load_config(None, {"train.lr": 2e-4}).train
    assert {learning_rate(constant, s) for s in (0, 10, 10_000)} == {2e-4}


def test_no_weight_decay_on_one_dimensional_parameters_when_asked():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    cfg = load_config(None, {"train.weight_decay": 0.1, "train.decay_1d_params": False}).train
    opt = build_optimizer(cfg, model, torch.device("cpu"))
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert by_decay[0.1] == {id(model[0].weight)}
    assert by_decay[0.0] == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    all_decay = build_optimizer(load_config(None, {"train.weight_decay": 0.1}).train, model, torch.device("cpu"))
    assert len(all_decay.param_groups) == 1  # the default decays everything, as the SiT reference


def test_step_generator_depends_only_on_seed_step_and_rank():
    a = torch.randn(5, generator=step_generator(3, 17, 1))
    assert torch.equal(a, torch.randn(5, generator=step_generator(3, 17, 1)))
    for other in (step_generator(4, 17, 1), step_generator(3, 18, 1), step_generator(3, 17, 0)):
        assert not torch.equal(a, torch.randn(5, generator=other))


class _LatentsOfAMissingVAE(torch.utils.data.Dataset):
    """A latent dataset whose VAE is not on this machine (nor reachable: the tests run offline)."""

    num_classes = 4
    vae = "nobody/no-such-vae"
    latent_stats = (torch.zeros(4), torch.ones(4))

    def __len__(self):
        return 16

    def __getitem__(self, key):
        raise AssertionError("no batch may be drawn before the start-up checks pass")


def test_a_missing_vae_fails_at_start_up_not_at_the_first_sample_grid(tmp_path, monkeypatch):
    from irepa.train.trainer import train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(None, {"model.name": "SiT-S/2", "model.depth": 1, "model.hidden_size": 32,
                             "model.num_heads": 2, "model.input_size": 8, "model.num_classes": 4,
                             "align.enabled": False, "train.steps": 10_000, "train.sample_every": 5_000,
                             "train.batch_size": 4, "train.report_to": ["none"], "out": str(tmp_path / "run")})
    with pytest.raises(FileNotFoundError, match="no-such-vae"):
        train(cfg, dataset=_LatentsOfAMissingVAE())
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cached_targets_train_like_targets_encoded_every_step(tmp_path, monkeypatch):
    """align.cache_targets encodes the training set once; the run matches one that encodes every step."""
    from irepa.train.trainer import train

    monkeypatch.setenv("IREPA_HOME", str(tmp_path / "home"))

    def cfg(name, **extra):
        overrides = {"data.synthetic_size": 32, "data.flip": False, "align.projector": "conv", "align.norm": "zscore",
                     "train.steps": 6, "train.ckpt_every": 100, **extra}
        return with_random_encoders(load_config(None, tiny_overrides(tmp_path / name, **overrides)))

    live = train(cfg("live")).losses
    cached = train(cfg("cached", **{"align.cache_targets": True})).losses
    assert cached == pytest.approx(live, rel=1e-5)  # batched vs per-step encoding: float rounding only
    assert len(list((tmp_path / "home" / "targets").glob("tokens-*.pt"))) == 1
    again = train(cfg("again", **{"align.cache_targets": True})).losses  # read back, not encoded again
    assert again == cached
    with pytest.raises(ValueError, match="data.flip"):
        train(cfg("flip", **{"align.cache_targets": True, "data.flip": True}))

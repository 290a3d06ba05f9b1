"""End-to-end training behaviour on CPU: learning, exact resume, atomic checkpoints, bad input."""

import math
from pathlib import Path

import pytest
import torch
from tiny import tiny_overrides, with_random_encoders

from irepa.config import load_config
from irepa.train import checkpoint as ckpt_mod
from irepa.train.checkpoint import atomic_torch_save, latest_checkpoint, load_checkpoint
from irepa.train.trainer import TrainingDiverged, train


def tiny_config(out: Path, align: bool = True, **extra):
    overrides = {
        "data.synthetic_size": 64,
        "align.enabled": align,
        "align.projector": "conv",
        "align.norm": "zscore",
        "align.coeff": 0.5,
        "train.steps": 6,
        "train.log_every": 1,
        "train.ckpt_every": 3,
        "train.ema_decay": 0.9,
        **extra,
    }
    return with_random_encoders(load_config(None, tiny_overrides(out, **overrides)))


def test_resumed_run_reproduces_uninterrupted_losses(tmp_path):
    full = train(tiny_config(tmp_path / "full"))
    first = train(tiny_config(tmp_path / "split"), stop_after=3)
    assert first.step == 3 and latest_checkpoint(tmp_path / "split" / "checkpoints").name == "step_0000003.pt"
    second = train(tiny_config(tmp_path / "split"), resume=True)
    assert second.step == 6
    assert first.losses + second.losses == full.losses  # bit-exact on CPU
    a = load_checkpoint(tmp_path / "full" / "checkpoints")
    b = load_checkpoint(tmp_path / "split" / "checkpoints")
    for key in a["ema"]:
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=0, atol=0)
    rows = (tmp_path / "split" / "metrics.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3, 4, 5, 6]


def test_tiny_model_learns(tmp_path):
    cfg = tiny_config(
        tmp_path / "learn",
        align=False,
        **{"train.steps": 200, "train.ckpt_every": 1000, "train.batch_size": 16, "data.resolution": 8},
    )
    result = train(cfg)
    early, late = sum(result.losses[:20]) / 20, sum(result.losses[-20:]) / 20
    assert late < 0.7 * early, (early, late)


def test_refuses_to_overwrite_and_to_resume_with_a_different_config(tmp_path):
    train(tiny_config(tmp_path / "run"), stop_after=3)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(tmp_path / "run"))
    with pytest.raises(ValueError) as err:
        train(tiny_config(tmp_path / "run", **{"align.norm": "none", "train.lr": 5e-4}), resume=True)
    assert "align.norm" in str(err.value) and "train.lr" in str(err.value)


def test_resume_accepts_a_checkpoint_written_before_a_config_field_existed(tmp_path):
    train(tiny_config(tmp_path / "run"), stop_after=3)
    path = latest_checkpoint(tmp_path / "run" / "checkpoints")
    old = torch.load(path, map_location="cpu", weights_only=False)
    del old["config"]["align"]["encoder_resolution"]  # as written by an earlier release
    atomic_torch_save(old, path)
    assert train(tiny_config(tmp_path / "run"), resume=True).step == 6  # missing field = its default

    train(tiny_config(tmp_path / "other"), stop_after=3)
    with pytest.raises(ValueError, match="align.encoder_resolution"):
        train(tiny_config(tmp_path / "other", **{"align.encoder_resolution": 56}), resume=True)


def test_encoder_resolution_feeds_the_encoder_and_resamples_to_the_model_grid(tmp_path, caplog):
    from irepa.train.aligned_model import build_aligner, build_backbone

    cfg = tiny_config(tmp_path / "run", **{"align.encoder_resolution": 112})
    backbone = build_backbone(cfg)
    with caplog.at_level("WARNING"):
        _, encoders = build_aligner(cfg, backbone, "cpu", torch.float32)
    encoder = encoders["dinov2-vit-s"]
    assert tuple(encoder.resolution) == (112, 112) and "resampling" in caplog.text
    tokens = encoder.encode(torch.rand(2, 3, 8, 8))
    assert tokens.shape[1] == backbone.grid[0] * backbone.grid[1]  # 8x8 tokens resampled to 4x4
    default = build_aligner(tiny_config(tmp_path / "d"), backbone, "cpu", torch.float32)[1]["dinov2-vit-s"]
    assert tuple(default.resolution) == (56, 56)  # grid x patch when unset


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    train(tiny_config(tmp_path / "run"), stop_after=3)
    good = latest_checkpoint(tmp_path / "run" / "checkpoints")
    before = good.read_bytes()
    import irepa.objectives.flow as flow

    calls = {"n": 0}
    real = flow.squared_error

    def poisoned(pred, target):
        calls["n"] += 1
        return real(pred, target) * (math.nan if calls["n"] == 2 else 1.0)

    monkeypatch.setattr(flow, "squared_error", poisoned)
    with pytest.raises(TrainingDiverged, match="step 5"):
        train(tiny_config(tmp_path / "run"), resume=True)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") == good
    assert good.read_bytes() == before


def test_checkpoint_write_killed_midway_leaves_previous_loadable(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "step_0000001.pt"
    atomic_torch_save({"model": {"w": torch.ones(3)}, "step": 1, "config": {}}, path)

    def dying_save(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"model": {"w": torch.zeros(3)}, "step": 1, "config": {}}, path)
    monkeypatch.undo()
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["step_0000001.pt", "step_0000001.pt.manifest.json"]


def test_alignment_depth_and_encoder_errors(tmp_path):
    with pytest.raises(ValueError, match="1..2"):
        train(tiny_config(tmp_path / "a", **{"align.depth": 5}))
    with pytest.raises((KeyError, ValueError), match="dinov2-vit-s"):
        train(tiny_config(tmp_path / "b", **{"align.encoders": "not-an-encoder"}))


def test_ema_matches_the_recurrence_with_and_without_warmup():
    from irepa.train.ema import EMA

    model = torch.nn.Linear(3, 2)
    for warmup in (False, True):
        ema = EMA(model, decay=0.9, warmup=warmup)
        expected = [p.detach().clone() for p in model.parameters()]
        for step in range(1, 6):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p))
            d = min(0.9, (1 + step) / (10 + step)) if warmup else 0.9
            expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
            ema.update(model, step)
        for e, s in zip(expected, ema.shadow.parameters()):
            torch.testing.assert_close(s, e)

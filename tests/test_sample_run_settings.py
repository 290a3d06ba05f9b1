"""``irepa sample --ckpt RUN`` starts from the run's own recorded sampler; ``--sample.FIELD`` changes it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from irepa.cli import main
from irepa.diffusion.samplers import SamplerConfig
from irepa.sample.pipeline import load_generator

# recipe -> (what its run records: sampler kind, the objective's prediction)
RECIPES = {"jit-irepa": ("ode-heun", "x"), "meanflow-irepa": ("meanflow", "velocity")}


@pytest.fixture(scope="module", params=sorted(RECIPES))
def tiny_run(request, tmp_path_factory):
    run = tmp_path_factory.mktemp(request.param) / "run"
    # one large step moves JiT's zero-initialised output layer, so the images depend on the sampler
    argv = ["train", "--recipe", request.param, "--smoke", "--train.steps", "1", "--train.ckpt_every", "1",
            "--train.lr", "0.01", "--train.ema_decay", "0", "--train.sample_every", "0", "--model.depth", "2",
            "--align.enabled", "false", "--out", str(run)]
    assert main(argv) == 0
    return request.param, run


def _sample(run, out, *extra: str) -> tuple[dict, np.lib.npyio.NpzFile]:
    argv = ["sample", "--ckpt", str(run), "--num-samples", "2", "--seed", "5", "--precision", "fp32",
            "--out", str(out), "--no-progress", *extra]
    assert main(argv) == 0
    return json.loads((out / "samples_2.json").read_text()), np.load(out / "samples_2.npz")


def _independent(run, sampler: SamplerConfig, labels: np.ndarray) -> np.ndarray:
    gen = load_generator(run / "checkpoints", precision="fp32")
    return gen.generate(torch.from_numpy(labels), [5 + i for i in range(len(labels))], sampler).numpy()


def test_sample_uses_the_runs_recorded_sampler_and_takes_overrides(tiny_run, tmp_path):
    recipe, run = tiny_run
    kind, prediction = RECIPES[recipe]
    recorded = yaml.safe_load((run / "config.yaml").read_text())["sample"]
    assert recorded["kind"] == kind and recorded["steps"] != 4
    if recipe.startswith("jit"):  # the JiT recipe guides inside (0, 0.9) by JiT's own rule
        assert (recorded["guidance_rule"], recorded["guidance_high"]) == ("jit", 0.9)
    sampler = {k: v for k, v in recorded.items() if k != "labels"}  # the labels are recorded as label_mode

    info, npz = _sample(run, tmp_path / "as-recorded")
    assert info["sampler"] == sampler  # not the library's SDE with 250 steps
    assert info["label_mode"] == recorded["labels"]
    objective = yaml.safe_load((run / "config.yaml").read_text())["objective"]
    assert info["objective"]["path"] == objective["path"] and info["objective"]["prediction"] == prediction
    np.testing.assert_array_equal(npz["arr_0"], _independent(run, SamplerConfig(**recorded), npz["labels"]))

    info, npz = _sample(run, tmp_path / "four-steps", "--sample.steps", "4", "--cfg-scale", "1.5")
    assert info["sampler"] == {**sampler, "steps": 4, "cfg_scale": 1.5}
    want = _independent(run, SamplerConfig(**{**recorded, "steps": 4, "cfg_scale": 1.5}), npz["labels"])
    np.testing.assert_array_equal(npz["arr_0"], want)
    other = _independent(run, SamplerConfig(**recorded), npz["labels"])
    assert not np.array_equal(npz["arr_0"], other)  # the override changed the images

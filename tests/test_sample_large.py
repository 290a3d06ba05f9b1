"""Large-scale sampling: balanced labels, per-index seeds, process-count invariance, resuming, merging, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from irepa.codecs import PixelCodec
from irepa.diffusion.samplers import SamplerConfig
from irepa.objectives import ObjectiveConfig, build_objective
from irepa.sample.large_scale import (
    SamplingPlan,
    class_grid,
    generate_shards,
    merge_shards,
    resolve_classes,
    run_sampling,
    shard_path,
)
from irepa.sample.pipeline import Generator

NUM_CLASSES = 3


class TinyVelocity(nn.Module):
    """``v = a * x + t * e_y``: elementwise only, so a sample never depends on its batch neighbours."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.7))
        self.emb = nn.Embedding(NUM_CLASSES + 1, 3)
        with torch.no_grad():
            self.emb.weight.copy_(torch.linspace(-1, 1, 3 * (NUM_CLASSES + 1)).view(NUM_CLASSES + 1, 3))

    def forward(self, x, t, y):
        return self.a * x + t[:, None, None, None] * self.emb(y)[:, :, None, None]


def tiny_generator(info: dict | None = None) -> Generator:
    """Velocity prediction on the linear path, in pixel space: what a SiT checkpoint rebuilds."""
    return Generator(TinyVelocity(), build_objective(ObjectiveConfig(), NUM_CLASSES), PixelCodec(3), 8, info)


def make_generate(kind: str = "sde", calls: list | None = None, fail_after: int | None = None):
    generator = tiny_generator()
    cfg = SamplerConfig(kind=kind, steps=3)

    def generate(labels, seeds):
        if fail_after is not None and len(calls) >= fail_after:
            raise RuntimeError("simulated crash")
        if calls is not None:
            calls.append(list(seeds))
        return generator.generate(labels, seeds, cfg)

    return generate


def plan(n: int = 10, shard: int = 4, seed: int = 5) -> SamplingPlan:
    return SamplingPlan(n, resolve_classes(NUM_CLASSES), seed=seed, shard_size=shard)


SETTINGS = {"sampler": {"kind": "sde", "steps": 3}, "checkpoint": "tiny"}


def test_plan_labels_are_balanced_and_seeds_follow_the_index():
    p = SamplingPlan(12, [0, 1, 2], seed=100, shard_size=5)
    np.testing.assert_array_equal(p.labels(0, 12), np.arange(12) % 3)
    assert np.bincount(p.labels(0, 12)).tolist() == [4, 4, 4]
    assert p.seeds(3, 6) == [103, 104, 105]
    assert p.shards() == [(0, 5), (5, 10), (10, 12)]
    sub = SamplingPlan(6, [7, 9], shard_size=4)
    assert sub.labels(0, 6).tolist() == [7, 9, 7, 9, 7, 9]


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_of_all_processes_are_disjoint_and_cover_the_range(world):
    p = SamplingPlan(23, [0], shard_size=4)
    covered = [i for r in range(world) for s, e in p.shards_for(r, world) for i in range(s, e)]
    assert sorted(covered) == list(range(23))


def test_resolve_classes():
    assert resolve_classes(4) == [0, 1, 2, 3]
    assert resolve_classes(4, [2, 0]) == [2, 0]
    assert resolve_classes(4, unconditional=True) == [4]  # the null label
    with pytest.raises(ValueError, match=r"\[5\] are outside"):
        resolve_classes(4, [1, 5])


def test_two_processes_give_the_same_images_as_one(tmp_path):
    single = run_sampling(make_generate(), plan(), tmp_path / "one", SETTINGS, progress=False).samples
    # two simulated ranks on one CPU: rank 1 first (it only generates), then rank 0 (generates and merges)
    r1 = run_sampling(make_generate(), plan(), tmp_path / "two", SETTINGS, rank=1, world_size=2, progress=False)
    assert r1.samples is None and r1.generated == [(4, 8)]
    r0 = run_sampling(make_generate(), plan(), tmp_path / "two", SETTINGS, rank=0, world_size=2, batch_size=3,
                      progress=False)
    assert r0.generated == [(0, 4), (8, 10)]
    a, b = np.load(single), np.load(r0.samples)
    assert a["arr_0"].shape == (10, 8, 8, 3) and a["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
    np.testing.assert_array_equal(a["labels"], np.arange(10) % NUM_CLASSES)
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert len({a["arr_0"][i].tobytes() for i in range(10)}) == 10  # different seeds, different images


def test_each_image_comes_from_its_own_seed_and_label(tmp_path):
    out = run_sampling(make_generate(), plan(seed=5), tmp_path, SETTINGS, progress=False).samples
    images = np.load(out)["arr_0"]
    generate = make_generate()
    alone = generate(torch.tensor([7 % NUM_CLASSES]), [5 + 7])
    np.testing.assert_array_equal(images[7], alone[0].numpy())


def test_an_interrupted_run_resumes_without_redoing_finished_shards(tmp_path):
    reference = run_sampling(make_generate(), plan(), tmp_path / "ref", SETTINGS, batch_size=4, progress=False)
    calls: list = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_sampling(make_generate(calls=calls, fail_after=1), plan(), tmp_path / "run", SETTINGS, batch_size=4,
                     progress=False)
    assert shard_path(tmp_path / "run", 0, 4).is_file()  # the first shard survived the crash
    assert not shard_path(tmp_path / "run", 4, 8).exists()
    assert not list((tmp_path / "run" / "shards").glob(".*tmp*"))  # no half-written files
    calls.clear()
    resumed = run_sampling(make_generate(calls=calls), plan(), tmp_path / "run", SETTINGS, batch_size=4,
                           progress=False)
    assert resumed.generated == [(4, 8), (8, 10)]
    assert sorted(s for batch in calls for s in batch) == [5 + i for i in range(4, 10)]  # seeds of indices 4..9 only
    np.testing.assert_array_equal(np.load(reference.samples)["arr_0"], np.load(resumed.samples)["arr_0"])
    # a finished run regenerates nothing
    calls.clear()
    run_sampling(make_generate(calls=calls), plan(), tmp_path / "run", SETTINGS, progress=False)
    assert calls == []


def test_resuming_with_other_settings_is_refused(tmp_path):
    run_sampling(make_generate(), plan(n=4), tmp_path, SETTINGS, progress=False)
    other = {**SETTINGS, "sampler": {"kind": "ode-euler", "steps": 3}}
    with pytest.raises(ValueError, match="other settings.*sampler"):
        run_sampling(make_generate(), plan(n=4), tmp_path, other, progress=False)
    with pytest.raises(ValueError, match="seed"):
        run_sampling(make_generate(), plan(n=4, seed=6), tmp_path, SETTINGS, progress=False)
    # more samples with the same settings is fine: existing full shards are reused
    calls: list = []
    run_sampling(make_generate(calls=calls), plan(n=8), tmp_path, SETTINGS, progress=False)
    assert sorted(s for batch in calls for s in batch) == [5 + i for i in range(4, 8)]


def test_merge_refuses_missing_shards_and_records_settings(tmp_path):
    p = plan()
    generate_shards(make_generate(), p, tmp_path, rank=0, world_size=2, progress=False)
    with pytest.raises(RuntimeError, match=r"1 shard\(s\) not finished: \[4, 8\)"):
        merge_shards(p, tmp_path, progress=False)
    out = run_sampling(make_generate(), p, tmp_path / "full", SETTINGS, progress=False).samples
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["seed"] == 5 and settings["num_samples"] == 10 and settings["sampler"]["kind"] == "sde"
    assert settings["classes"] == "all 3 classes" and "i % len(classes)" in settings["label_scheme"]


def test_generator_output_is_checked(tmp_path):
    def bad(labels, seeds):
        return torch.zeros(len(seeds), 3, 8, 8, dtype=torch.uint8)  # NCHW

    with pytest.raises(ValueError, match="transpose"):
        generate_shards(bad, plan(), tmp_path, progress=False)


def test_class_grid_has_one_row_per_class():
    images = np.stack([np.full((4, 4, 3), 10 * i, np.uint8) for i in range(7)])
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    grid = class_grid(images, labels, per_class=16, pad=1).numpy()
    assert grid.shape == (3 * 5 + 1, 3 * 5 + 1, 3)  # 3 classes x 3 columns of 4 px tiles, 1 px padding
    tile = lambda r, c: grid[1 + 5 * r: 5 + 5 * r, 1 + 5 * c: 5 + 5 * c]  # noqa: E731
    assert (tile(0, 2) == 60).all()  # class 0: images 0, 3, 6
    assert (tile(1, 1) == 40).all()  # class 1: images 1, 4
    assert (tile(1, 2) == 255).all()  # class 1 has no third image: blank
    capped = class_grid(images, labels, per_class=2, max_rows=2, pad=1).numpy()
    assert capped.shape == (2 * 5 + 1, 2 * 5 + 1, 3)  # 2 classes x 2 images
    # one image per class (a quick 7-image run over many classes): a near-square block in index order
    square = class_grid(images, np.arange(7), pad=1).numpy()
    assert square.shape == (3 * 5 + 1, 3 * 5 + 1, 3)
    assert (square[1 + 5:5 + 5, 1:5] == 30).all()  # image 3 starts the second row


def test_sample_command_end_to_end(tmp_path, monkeypatch):
    from irepa.cli import main
    from irepa.sample import pipeline

    def fake_load_generator(ckpt, use_ema=True, device="cpu", vae=None):
        info = {"checkpoint": str(ckpt), "step": 42, "model": "tiny", "ema": use_ema, "vae": None, "space": "pixel"}
        return tiny_generator(info)

    monkeypatch.setattr(pipeline, "load_generator", fake_load_generator)
    out = tmp_path / "out"
    code = main(["sample", "--ckpt", str(tmp_path / "step_0000042.pt"), "--num-samples", "7", "--out", str(out),
                 "--sampler", "ode-heun", "--steps", "2", "--cfg-scale", "1.5", "--guidance-high", "0.7", "--no-ema",
                 "--seed", "3", "--batch-size", "2", "--shard-size", "4", "--no-progress"])
    assert code == 0
    data = np.load(out / "samples_7.npz")
    assert data["arr_0"].shape == (7, 8, 8, 3) and data["labels"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    settings = json.loads((out / "samples_7.json").read_text())
    assert settings["sampler"] == {**settings["sampler"], "kind": "ode-heun", "steps": 2, "cfg_scale": 1.5,
                                   "guidance_low": 0.0, "guidance_high": 0.7}
    assert settings["ema"] is False and settings["seed"] == 3 and settings["checkpoint_step"] == 42
    assert settings["image_size"] == 8 and settings["num_samples"] == 7 and settings["shard_size"] == 4
    assert (out / "samples_7_grid.png").is_file()  # small runs always get a picture
    # same command again: everything is on disk, the result is unchanged
    before = (out / "samples_7.npz").read_bytes()
    assert main(["sample", "--ckpt", str(tmp_path / "step_0000042.pt"), "--num-samples", "7", "--out", str(out),
                 "--sampler", "ode-heun", "--steps", "2", "--cfg-scale", "1.5", "--guidance-high", "0.7", "--no-ema",
                 "--seed", "3", "--no-progress"]) == 0
    assert (out / "samples_7.npz").read_bytes() == before

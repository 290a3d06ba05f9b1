"""Large-scale sampling: labels and seeds per index, balanced work, file-based waiting, resuming, merging, CLI."""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

from irepa.codecs import PixelCodec
from irepa.diffusion.samplers import SamplerConfig
from irepa.errors import CheckpointError, ConfigError
from irepa.objectives import ObjectiveConfig, build_objective
from irepa.sample.labels import LABEL_STREAM
from irepa.sample.large_scale import (
    SamplingPlan,
    assign_work,
    class_grid,
    coverage,
    finished_processes,
    generate_ranges,
    generate_shards,
    merge_shards,
    resolve_classes,
    run_sampling,
    samples_path,
    shard_path,
    wait_for_samples,
    write_marker,
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


def tiny_generator(info: dict | None = None, precision: str = "auto") -> Generator:
    """Velocity prediction on the linear path, in pixel space: what a SiT checkpoint rebuilds."""
    return Generator(TinyVelocity(), build_objective(ObjectiveConfig(), NUM_CLASSES), PixelCodec(3), 8, info,
                     precision)


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


def plan(n: int = 10, shard: int = 4, seed: int = 5, label_mode: str = "random") -> SamplingPlan:
    return SamplingPlan(n, resolve_classes(NUM_CLASSES), seed=seed, shard_size=shard, label_mode=label_mode)


SETTINGS = {"sampler": {"kind": "sde", "steps": 3}, "checkpoint": "tiny"}


def run_processes(out, world: int, n: int = 10, shard: int = 4, batch_size: int = 3, **kwargs) -> list:
    """``world`` simulated processes as threads of this one, with a real barrier before sampling."""
    barrier = threading.Barrier(world)
    results: list = [None] * world
    errors: list = []

    def process(rank: int) -> None:
        try:
            results[rank] = run_sampling(make_generate(), plan(n, shard), out, SETTINGS, rank=rank, world_size=world,
                                         batch_size=batch_size, barrier=barrier.wait, progress=False, poll_s=0.01,
                                         **kwargs)
        except BaseException as err:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=process, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------- labels and seeds


def test_balanced_labels_cycle_and_seeds_follow_the_index():
    p = SamplingPlan(12, [0, 1, 2], seed=100, shard_size=5, label_mode="balanced")
    np.testing.assert_array_equal(p.labels(0, 12), np.arange(12) % 3)
    assert np.bincount(p.labels(0, 12)).tolist() == [4, 4, 4]
    assert p.seeds(3, 6) == [103, 104, 105]
    assert p.shards() == [(0, 5), (5, 10), (10, 12)]
    sub = SamplingPlan(6, [7, 9], shard_size=4, label_mode="balanced")
    assert sub.labels(0, 6).tolist() == [7, 9, 7, 9, 7, 9]


def test_random_labels_are_an_independent_uniform_draw_per_index():
    k, n, seed = 10, 3000, 11
    p = SamplingPlan(n, list(range(k)), seed=seed)
    assert p.label_mode == "random"  # the default, as the reference protocol
    labels = p.labels(0, n)
    # the documented draw, done here one index at a time
    expected = [np.random.default_rng([LABEL_STREAM, seed, i]).integers(k) for i in range(n)]
    np.testing.assert_array_equal(labels, expected)
    counts = np.bincount(labels, minlength=k)
    assert len(set(counts.tolist())) > 1  # not balanced by construction (n is a multiple of k)
    assert not np.array_equal(labels[:k], np.arange(k))
    chi2 = float(((counts - n / k) ** 2 / (n / k)).sum())
    assert chi2 < 27.88  # uniform: below the 99.9% quantile of chi-square with 9 degrees of freedom
    # an independent draw of the same size from another generator looks alike (two-sample chi-square)
    other = np.bincount(np.random.default_rng(2024).integers(k, size=n), minlength=k)
    two_sample = float(((counts - other) ** 2 / (counts + other)).sum())
    assert two_sample < 27.88
    # consecutive labels are independent: a repeat of the previous label about 1 time in k
    assert abs(np.mean(labels[1:] == labels[:-1]) - 1 / k) < 0.03
    # a subset of classes: drawn among those only; another seed: another sequence
    sub = SamplingPlan(600, [7, 3, 9], seed=seed).labels(0, 600)
    assert set(sub.tolist()) == {3, 7, 9}
    assert not np.array_equal(SamplingPlan(n, list(range(k)), seed=seed + 1).labels(0, n), labels)
    # the label of index i depends on (seed, i) only, not on which range it is asked in
    np.testing.assert_array_equal(p.labels_of([2999, 5, 17]), labels[[2999, 5, 17]])


def test_plan_rejects_bad_values():
    with pytest.raises(ConfigError, match="label mode 'cyclic'.*random, balanced"):
        SamplingPlan(4, [0], label_mode="cyclic")
    with pytest.raises(ConfigError, match="seed must be >= 0"):
        SamplingPlan(4, [0], seed=-1)


def test_resolve_classes():
    assert resolve_classes(4) == [0, 1, 2, 3]
    assert resolve_classes(4, [2, 0]) == [2, 0]
    assert resolve_classes(4, unconditional=True) == [4]  # the null label
    with pytest.raises(ValueError, match=r"\[5\] are outside"):
        resolve_classes(4, [1, 5])


# ---------------------------------------------------------------- splitting the work


def assigned_indices(ranges) -> list[int]:
    return [i for s, e in ranges for i in range(s, e)]


@pytest.mark.parametrize(
    ("n", "world", "shard", "done"),
    [
        (10, 2, 4, []),
        (23, 3, 4, []),
        (5, 8, 2, []),  # more processes than images
        (257, 4, 256, [(0, 256)]),  # the round-robin split gave one process 256 images and another 1
        (1000, 3, 64, [(0, 64), (64, 100), (500, 640)]),
        (50_000, 7, 256, [(s, s + 256) for s in range(0, 49_920, 768)]),
        (50_000, 8, 256, []),
    ],
)
def test_work_is_balanced_over_processes(n, world, shard, done):
    # what is missing, computed here from index sets
    held = set(assigned_indices(done))
    missing = sorted(set(range(n)) - held)
    cover = coverage(done, n)
    assert assigned_indices(cover.missing) == missing
    parts = assign_work(cover.missing, world, shard)
    assert len(parts) == world
    per_process = [assigned_indices(p) for p in parts]
    flat = [i for part in per_process for i in part]
    assert sorted(flat) == missing and len(flat) == len(set(flat))  # disjoint and covering
    sizes = [len(part) for part in per_process]
    assert max(sizes) - min(sizes) <= 1  # at most one image, so at most one batch apart
    for batch in (1, 7, 32, 128):
        passes = [math.ceil(size / batch) for size in sizes]
        assert max(passes) - min(passes) <= 1
    for part in parts:
        for s, e in part:
            assert s < e and s // shard == (e - 1) // shard  # no file crosses a shard block


def test_coverage_reads_overlapping_files_once():
    cover = coverage([(0, 4), (2, 6), (8, 12), (9, 10)], 11)
    assert cover.pieces == [((0, 4), (0, 4)), ((2, 6), (4, 6)), ((8, 12), (8, 11))]
    assert cover.missing == [(6, 8)] and cover.num_missing == 2


# ---------------------------------------------------------------- processes, waiting, resuming


def test_simulated_processes_give_the_same_images_as_one(tmp_path):
    single = run_sampling(make_generate(), plan(), tmp_path / "one", SETTINGS, progress=False).samples
    results = run_processes(tmp_path / "three", world=3)
    assert results[0].samples is not None and results[1].samples is None and results[2].samples is None
    made = sorted(r for result in results for r in result.generated)
    assert assigned_indices(made) == list(range(10))
    assert [sum(e - s for s, e in result.generated) for result in results] == [3, 3, 4]
    assert finished_processes(tmp_path / "three") == {1, 2}  # markers of the processes that did not merge
    a, b = np.load(single), np.load(results[0].samples)
    assert a["arr_0"].shape == (10, 8, 8, 3) and a["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
    np.testing.assert_array_equal(a["labels"], plan().labels(0, 10))
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert len({a["arr_0"][i].tobytes() for i in range(10)}) == 10  # different seeds, different images


def test_each_image_comes_from_its_own_seed_and_label(tmp_path):
    out = run_sampling(make_generate(), plan(seed=5), tmp_path, SETTINGS, progress=False).samples
    images = np.load(out)["arr_0"]
    alone = make_generate()(torch.from_numpy(plan(seed=5).labels(7, 8)), [5 + 7])
    np.testing.assert_array_equal(images[7], alone[0].numpy())


def test_the_main_process_waits_for_the_files_of_a_slower_one(tmp_path):
    p = plan()
    barrier = threading.Barrier(2)
    main_done = threading.Event()
    main_result: list = []

    def main_process():
        main_result.append(run_sampling(make_generate(), p, tmp_path, SETTINGS, rank=0, world_size=2,
                                        barrier=barrier.wait, progress=False, poll_s=0.01))
        main_done.set()

    thread = threading.Thread(target=main_process)
    thread.start()
    slow_generate, main_was_done = make_generate(), []

    def slow(labels, seeds):
        time.sleep(0.05)
        main_was_done.append(main_done.is_set())
        return slow_generate(labels, seeds)

    result = run_sampling(slow, p, tmp_path, SETTINGS, rank=1, world_size=2, batch_size=1, barrier=barrier.wait,
                          progress=False)
    thread.join(timeout=60)
    assert main_was_done == [False] * 5  # the main process was still waiting while process 1 sampled
    assert result.generated == [(5, 8), (8, 10)] and main_result[0].generated == [(0, 4), (4, 5)]
    reference = run_sampling(make_generate(), p, tmp_path / "ref", SETTINGS, progress=False).samples
    np.testing.assert_array_equal(np.load(main_result[0].samples)["arr_0"], np.load(reference)["arr_0"])


def test_waiting_times_out_with_a_clear_error_and_keeps_the_files(tmp_path):
    p = plan()
    with pytest.raises(CheckpointError, match=r"process\(es\) \[1\].*\[5, 10\).*Run the same command again"):
        run_sampling(make_generate(), p, tmp_path, SETTINGS, rank=0, world_size=2, progress=False,
                     wait_timeout=0.2, poll_s=0.02)  # process 1 never comes
    assert shard_path(tmp_path, 0, 4).is_file() and shard_path(tmp_path, 4, 5).is_file()
    assert not samples_path(tmp_path, 10).exists()
    calls: list = []
    resumed = run_sampling(make_generate(calls=calls), p, tmp_path, SETTINGS, progress=False)  # now alone
    assert sorted(s for batch in calls for s in batch) == [5 + i for i in range(5, 10)]
    reference = run_sampling(make_generate(), p, tmp_path / "ref", SETTINGS, progress=False).samples
    np.testing.assert_array_equal(np.load(resumed.samples)["arr_0"], np.load(reference)["arr_0"])


class FakeClock:
    """A clock that advances only when the waiter sleeps; ``on_sleep`` may write files meanwhile."""

    def __init__(self, on_sleep=None):
        self.now, self.sleeps, self.on_sleep = 0.0, 0, on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        if self.on_sleep:
            self.on_sleep(self)


def test_the_wait_restarts_its_timeout_while_images_keep_arriving(tmp_path):
    p = plan()
    assignment = assign_work([(0, 10)], 2, 4)
    generate_ranges(make_generate(), p, tmp_path, assignment[0], progress=False)
    pending = list(assignment[1])  # [(5, 8), (8, 10)]: one file every 8 s, timeout 10 s

    def write_next(clock):
        if pending and clock.now % 8 == 0:
            generate_ranges(make_generate(), p, tmp_path, [pending.pop(0)], progress=False)

    clock = FakeClock(write_next)
    wait_for_samples(p, tmp_path, assignment, timeout_s=10, poll_s=1, clock=clock, sleep=clock.sleep)
    assert clock.now == 16 and not pending  # waited 16 s in all, longer than the timeout, and returned
    assert merge_shards(p, tmp_path, progress=False).is_file()


def test_the_wait_gives_up_when_a_finished_process_left_images_missing(tmp_path):
    p = plan()
    assignment = assign_work([(0, 10)], 2, 4)
    generate_ranges(make_generate(), p, tmp_path, assignment[0], progress=False)
    write_marker(tmp_path, 1, 2, assignment[1])  # says it is done, but [5, 10) never appears
    clock = FakeClock()
    with pytest.raises(CheckpointError, match=r"\[5, 10\).*process\(es\) \[1\] reported finished"):
        wait_for_samples(p, tmp_path, assignment, timeout_s=1e9, poll_s=1, grace_s=30, clock=clock,
                         sleep=clock.sleep)
    assert clock.now == 30  # gave the file system the grace period, not the (huge) timeout


def test_markers_of_an_earlier_run_are_cleared_before_sampling(tmp_path):
    write_marker(tmp_path, 1, 2, [])
    with pytest.raises(CheckpointError, match="without a new image"):
        run_sampling(make_generate(), plan(), tmp_path, SETTINGS, world_size=2, progress=False, wait_timeout=0.1,
                     poll_s=0.02)
    assert finished_processes(tmp_path) == set()


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


def test_resuming_with_another_number_of_processes_gives_the_same_samples(tmp_path):
    reference = run_sampling(make_generate(), plan(n=23), tmp_path / "ref", SETTINGS, progress=False).samples
    out = tmp_path / "run"
    calls: list = []
    with pytest.raises(RuntimeError, match="simulated crash"):  # two processes, the first dies after 2 batches
        run_sampling(make_generate(calls=calls, fail_after=2), plan(n=23), out, SETTINGS, rank=0, world_size=2,
                     batch_size=3, progress=False)
    assert assign_work([(0, 23)], 2, 4)[1] == [(11, 12), (12, 16), (16, 20), (20, 23)]
    generate_ranges(make_generate(), plan(n=23), out, [(11, 12), (12, 16), (16, 20), (20, 23)], progress=False)
    results = run_processes(out, world=3, n=23)  # resumed on three processes: [4, 11) is left
    made = sorted(r for result in results for r in result.generated)
    assert assigned_indices(made) == list(range(4, 11))
    sizes = [sum(e - s for s, e in result.generated) for result in results]
    assert max(sizes) - min(sizes) <= 1
    after = np.load(results[0].samples)
    np.testing.assert_array_equal(after["arr_0"], np.load(reference)["arr_0"])
    np.testing.assert_array_equal(after["labels"], plan(n=23).labels(0, 23))


def test_resuming_with_other_settings_is_refused(tmp_path):
    run_sampling(make_generate(), plan(n=4), tmp_path, SETTINGS, progress=False)
    other = {**SETTINGS, "sampler": {"kind": "ode-euler", "steps": 3}}
    with pytest.raises(ValueError, match="other settings.*sampler"):
        run_sampling(make_generate(), plan(n=4), tmp_path, other, progress=False)
    with pytest.raises(ValueError, match="seed"):
        run_sampling(make_generate(), plan(n=4, seed=6), tmp_path, SETTINGS, progress=False)
    with pytest.raises(ConfigError, match="label_mode: 'random' there, 'balanced' now"):
        run_sampling(make_generate(), plan(n=4, label_mode="balanced"), tmp_path, SETTINGS, progress=False)
    with pytest.raises(ConfigError, match="precision: 'fp32' there, 'bf16' now"):
        run_sampling(make_generate(), plan(n=4), tmp_path, {**SETTINGS, "precision": "bf16"}, progress=False)
    # more samples with the same settings is fine: existing full shards are reused
    calls: list = []
    run_sampling(make_generate(calls=calls), plan(n=8), tmp_path, SETTINGS, progress=False)
    assert sorted(s for batch in calls for s in batch) == [5 + i for i in range(4, 8)]


def test_a_run_recorded_before_labels_and_precision_existed_resumes_as_balanced_fp32(tmp_path):
    p = plan(n=8, label_mode="balanced")
    generate_shards(make_generate(), p, tmp_path, progress=False)
    legacy = {**SETTINGS, "num_samples": 8, "classes": "all 3 classes", "seed": 5, "shard_size": 4,
              "label_scheme": "cyclic: sample i gets classes[i % len(classes)]"}  # no label_mode, no precision
    (tmp_path / "run.json").write_text(json.dumps(legacy))
    result = run_sampling(make_generate(), p, tmp_path, {**SETTINGS, "precision": "fp32"}, progress=False)
    assert result.generated == [] and np.load(result.samples)["labels"].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    with pytest.raises(ConfigError, match="label_mode: 'balanced' there.*--labels balanced --precision fp32"):
        run_sampling(make_generate(), plan(n=8), tmp_path, SETTINGS, progress=False)


def test_merge_refuses_missing_images_and_foreign_labels_and_records_settings(tmp_path):
    p = plan()
    generate_shards(make_generate(), p, tmp_path, rank=0, world_size=2, progress=False)
    with pytest.raises(CheckpointError, match=r"5 image\(s\) are not generated yet \(\[5, 10\)\)"):
        merge_shards(p, tmp_path, progress=False)
    generate_shards(make_generate(), p, tmp_path, rank=0, world_size=1, progress=False)
    with pytest.raises(CheckpointError, match="other labels.*delete it"):
        merge_shards(plan(label_mode="balanced"), tmp_path, progress=False)
    assert not samples_path(tmp_path, 10).exists()  # nothing half-written
    out = run_sampling(make_generate(), p, tmp_path / "full", SETTINGS, progress=False).samples
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["seed"] == 5 and settings["num_samples"] == 10 and settings["sampler"]["kind"] == "sde"
    assert settings["classes"] == "all 3 classes" and settings["label_mode"] == "random"
    assert str(LABEL_STREAM) in settings["label_scheme"]


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


def fake_loader(calls: list | None = None):
    def fake_load_generator(ckpt, use_ema=True, device="cpu", vae=None, precision="auto"):
        if calls is not None:
            calls.append(precision)
        info = {"checkpoint": str(ckpt), "step": 42, "model": "tiny", "ema": use_ema, "vae": None, "space": "pixel"}
        return tiny_generator(info, precision)

    return fake_load_generator


def test_sample_command_end_to_end(tmp_path, monkeypatch):
    from irepa.cli import main
    from irepa.sample import pipeline

    monkeypatch.setattr(pipeline, "load_generator", fake_loader())
    out = tmp_path / "out"
    args = ["sample", "--ckpt", str(tmp_path / "step_0000042.pt"), "--num-samples", "7", "--out", str(out),
            "--sampler", "ode-heun", "--steps", "2", "--cfg-scale", "1.5", "--guidance-high", "0.7", "--no-ema",
            "--seed", "3", "--labels", "balanced", "--no-progress"]
    assert main([*args, "--batch-size", "2", "--shard-size", "4"]) == 0
    data = np.load(out / "samples_7.npz")
    assert data["arr_0"].shape == (7, 8, 8, 3) and data["labels"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    settings = json.loads((out / "samples_7.json").read_text())
    assert settings["sampler"] == {**settings["sampler"], "kind": "ode-heun", "steps": 2, "cfg_scale": 1.5,
                                   "guidance_low": 0.0, "guidance_high": 0.7}
    assert settings["ema"] is False and settings["seed"] == 3 and settings["checkpoint_step"] == 42
    assert settings["image_size"] == 8 and settings["num_samples"] == 7 and settings["shard_size"] == 4
    assert settings["label_mode"] == "balanced" and settings["precision"] == "fp32"  # auto on a CPU
    assert (out / "samples_7_grid.png").is_file()  # small runs always get a picture
    # same command again: everything is on disk, the result is unchanged
    before = (out / "samples_7.npz").read_bytes()
    assert main(args) == 0
    assert (out / "samples_7.npz").read_bytes() == before


def test_sample_command_defaults_to_random_labels_and_names_the_folder_after_them(tmp_path, monkeypatch):
    from irepa.cli import main
    from irepa.sample import cli as sample_cli
    from irepa.sample import pipeline

    precisions: list = []
    monkeypatch.setattr(pipeline, "load_generator", fake_loader(precisions))
    ckpt = tmp_path / "step_0000042.pt"
    args = ["sample", "--ckpt", str(ckpt), "--num-samples", "30", "--sampler", "ode-euler", "--steps", "2",
            "--no-progress"]
    assert main([*args, "--precision", "bf16"]) == 0
    cfg = SamplerConfig(kind="ode-euler", steps=2)
    out = sample_cli.default_out_dir(ckpt, cfg, True, 0, "random", "bf16")
    assert out.name == "step_0000042-ode-euler2-cfg1-ema-seed0-random-labels-bf16" and precisions == ["bf16"]
    settings = json.loads((out / "samples_30.json").read_text())
    assert settings["label_mode"] == "random" and settings["precision"] == "bf16"
    labels = np.load(out / "samples_30.npz")["labels"]
    np.testing.assert_array_equal(labels, SamplingPlan(30, [0, 1, 2], seed=0).labels(0, 30))
    assert not np.array_equal(labels, np.arange(30) % 3)
    # the names runs had before --labels and --precision existed stay theirs
    assert sample_cli.default_out_dir(ckpt, cfg, True, 0).name == "step_0000042-ode-euler2-cfg1-ema-seed0"
    with pytest.raises(SystemExit):
        main([*args, "--precision", "fp8"])

"""Checkpoint selection and verification, RNG states on fewer GPUs, memory-mapped loading (CPU, fast)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from irepa.errors import CheckpointError, CheckpointNotFoundError, DamagedFileError, RunExistsError
from irepa.train import checkpoint as ck
from irepa.utils.io import manifest_path


def write(folder, step: int) -> None:
    ck.atomic_torch_save({"model": {"w": torch.full((64,), float(step))}, "step": step, "config": {}},
                         ck.checkpoint_path(folder, step))


def cut(path) -> None:
    path.write_bytes(path.read_bytes()[:100])


@pytest.fixture
def folder(tmp_path):
    for step in (10, 20, 30):
        write(tmp_path, step)
    return tmp_path


def test_every_checkpoint_has_a_manifest_that_matches(folder):
    for step in (10, 20, 30):
        path = ck.checkpoint_path(folder, step)
        assert manifest_path(path).is_file() and ck.checkpoint_damage(path) is None


def test_resume_rules(folder, caplog):
    latest, older = ck.checkpoint_path(folder, 30), ck.checkpoint_path(folder, 20)
    with pytest.raises(RunExistsError, match="--resume"):
        ck.resolve_resume(folder, None)
    assert ck.resolve_resume(folder, True) == latest == ck.resolve_resume(folder, "latest")
    assert ck.resolve_resume(folder, str(older)) == older
    cut(latest)
    with pytest.raises(DamagedFileError, match="step_0000030.pt.*truncated.*--resume auto"):
        ck.resolve_resume(folder, "latest")
    with pytest.raises(DamagedFileError, match="step_0000030.pt"):
        ck.resolve_resume(folder, str(latest))  # an explicit path never falls back
    with caplog.at_level(logging.WARNING):
        assert ck.resolve_resume(folder, "auto") == older
    assert "step_0000030.pt is damaged" in caplog.text and "step_0000020.pt" in caplog.text


def test_no_intact_checkpoint_lists_every_damaged_one(folder, tmp_path_factory):
    for step in (10, 20, 30):
        cut(ck.checkpoint_path(folder, step))
    with pytest.raises(CheckpointError, match="step_0000030.pt.*step_0000020.pt.*step_0000010.pt"):
        ck.resolve_resume(folder, "auto")
    with pytest.raises(CheckpointNotFoundError, match="drop --resume"):
        ck.resolve_resume(tmp_path_factory.mktemp("empty"), "auto")


def test_find_checkpoint_accepts_a_run_folder_and_skips_damage(folder, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for step in (10, 20):
        write(run / "checkpoints", step)
    assert ck.find_checkpoint(run) == ck.checkpoint_path(run / "checkpoints", 20)
    ck.checkpoint_path(run / "checkpoints", 20).write_bytes(b"\0" * 10)
    assert ck.find_checkpoint(run) == ck.checkpoint_path(run / "checkpoints", 10)
    with pytest.raises(DamagedFileError, match="give its run folder"):
        ck.find_checkpoint(ck.checkpoint_path(run / "checkpoints", 20))


def test_prune_removes_manifests_with_their_checkpoints(folder):
    ck.prune_checkpoints(folder, keep=1)
    assert sorted(p.name for p in folder.iterdir()) == ["step_0000030.pt", "step_0000030.pt.manifest.json"]


def mapped_from(tensor: torch.Tensor, path) -> bool:
    """Whether the tensor's memory lies in a mapping of ``path`` (Linux /proc/self/maps)."""
    ptr = tensor.untyped_storage().data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(v, 16) for v in fields[0].split("-"))
        if len(fields) == 6 and fields[5] == str(path.resolve()) and start <= ptr < end:
            return True
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs /proc/self/maps")
def test_load_maps_the_file_instead_of_reading_it(folder):
    path = ck.checkpoint_path(folder, 20)
    w = ck.load_checkpoint(path)["model"]["w"]
    assert torch.equal(w, torch.full((64,), 20.0)) and mapped_from(w, path)
    copy = ck.load_checkpoint(path, mmap=False)["model"]["w"]
    assert torch.equal(copy, w) and not mapped_from(copy, path)


def test_rng_state_of_more_gpus_restores_what_fits(monkeypatch):
    """A state saved on 8 GPUs, resumed where 2 (or none) are visible: no IndexError, the first ones restored."""
    state = ck.rng_state()
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.__setitem__(device, s))
    random.seed(1)
    expected = random.random()
    random.seed(1)
    state = {**state, "python": random.getstate()}
    random.seed(2)
    ck.set_rng_state(state)
    assert random.random() == expected
    assert sorted(restored) == [0, 1] and all(int(restored[i][0]) == i for i in range(2))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    restored.clear()
    ck.set_rng_state(state)  # CPU only: the CUDA states are skipped
    assert restored == {}
    np.random.seed(0)

"""A full disk (ENOSPC) injected into every atomic writer: the previous file stays intact, no temp file
is left behind, and the error names the file being written."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from faultkit import TINY_TRAIN, cli, digests, fill_up, one_error_line, small_disk, temp_files

from irepa.train.checkpoint import checkpoint_damage, checkpoint_path, checkpoint_steps
from irepa.utils import io


def _torch_checkpoint(path: Path, v: int) -> None:
    from irepa.train.checkpoint import atomic_torch_save

    atomic_torch_save({"model": {"w": torch.full((4,), float(v))}, "step": v, "config": {}}, path)


def _config(path: Path, v: int) -> None:
    from irepa.config import load_config, save_config

    save_config(load_config(None, {"train.lr": 1e-3 * v}), path)


def _png(path: Path, v: int) -> None:
    from irepa.sample.pipeline import save_png

    save_png(torch.full((4, 4, 3), 40 * v, dtype=torch.uint8), path)


def _npz(path: Path, v: int) -> None:
    from irepa.evaluate import save_npz

    save_npz(path, arr_0=np.full((2, 4, 4, 3), v, np.uint8))


def _latent_shard(path: Path, v: int) -> None:
    from irepa.data.latent_cache import save_shard

    save_shard(path, {"moments": np.full((1, 2, 2, 2), v, np.float32)}, {"version": v})


def _csv(path: Path, v: int) -> None:
    from irepa.metrics.tables import write_csv

    write_csv(path, [{"a": v, "b": 2 * v}])


def _figure(path: Path, v: int) -> None:
    from irepa.viz.figures import new_figure, save_figure

    fig = new_figure(1, 1)
    fig.text(0.5, 0.5, str(v))
    save_figure(fig, path)


def _weights(path: Path, v: int) -> None:
    from irepa.encoders.weights import save_state_dict

    save_state_dict({"w": torch.full((3,), float(v))}, path)


def _reference_stats(path: Path, v: int) -> None:
    from irepa.evaluate import ReferenceStats

    ReferenceStats(np.full(2, float(v)), np.eye(2) * v).save(path)


def _metrics_log(path: Path, v: int) -> None:
    from irepa.train.logger import ScalarLogger

    logger = ScalarLogger(path.parent, ["none"])
    if v == 1:
        for step in (1, 2, 3):
            logger.log(step, {"loss": float(step)})
    else:  # a resume rewrites the log without the rows after its checkpoint
        logger.truncate_after(1)


def _run_summary(path: Path, v: int) -> None:
    from irepa.experiments.small_scale import write_json

    write_json(path, {"fid": float(v)})


def _json_with_manifest(path: Path, v: int) -> None:
    io.atomic_write_json(path, {"version": v}, manifest=True)


WRITERS: dict[str, tuple[str, Callable[[Path, int], None]]] = {
    "checkpoint": ("step_0000001.pt", _torch_checkpoint),
    "config": ("config.yaml", _config),
    "png": ("grid.png", _png),
    "npz": ("samples.npz", _npz),
    "latent shard": ("shard-00000.safetensors", _latent_shard),
    "csv table": ("table.csv", _csv),
    "figure": ("figure.png", _figure),
    "encoder weights": ("model.safetensors", _weights),
    "reference statistics": ("ref.npz", _reference_stats),
    "training log": ("metrics.csv", _metrics_log),
    "run summary": ("metrics.json", _run_summary),
    "json + manifest": ("index.json", _json_with_manifest),
}


def _fail_fsync(monkeypatch, target: Path) -> None:
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)


def _fail_rename(monkeypatch, target: Path) -> None:
    real = os.replace

    def full(src, dst):
        if Path(dst) == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", full)


def _fail_write(monkeypatch, target: Path) -> None:
    """ENOSPC from ``write()`` into the temp file of ``target``, for the files irepa opens itself."""
    real_open = open

    class FullDisk:
        def __init__(self, fh):
            self._fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._fh.close()

    def opener(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return FullDisk(fh) if "w" in mode and io.is_temp_file_of(file, target) else fh

    monkeypatch.setattr(io, "open", opener, raising=False)


# writers that hand a temp file name to another library (PIL, matplotlib, zipfile) instead of writing
# through irepa's own file object; a write() failing inside them is checked on a real full disk below
WRITE_THEMSELVES = {"png", "npz", "figure", "encoder weights", "reference statistics"}


@pytest.mark.parametrize("inject", [_fail_fsync, _fail_write, _fail_rename], ids=["fsync", "write", "rename"])
@pytest.mark.parametrize("writer", WRITERS)
def test_full_disk_keeps_the_previous_file(writer, inject, tmp_path, monkeypatch):
    if inject is _fail_write and writer in WRITE_THEMSELVES:
        pytest.skip("this writer opens the temp file itself: see the real full disk")
    name, write = WRITERS[writer]
    path = tmp_path / name
    write(path, 1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with monkeypatch.context() as m:
        inject(m, path)
        with pytest.raises(OSError) as err:
            write(path, 2)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old file and manifest, no temp file
    assert io.check_file(path) is None
    write(path, 2)  # space again: the write goes through
    assert path.read_bytes() != before[name]


def test_train_on_a_full_disk_stops_with_one_line_and_keeps_its_checkpoints(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    target = checkpoint_path(run / "checkpoints", 8)
    _fail_rename(monkeypatch, target)
    assert cli(*TINY_TRAIN, "--out", run) == 7
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("irepa ")]
    assert err == [f"irepa train: no space left on the device writing {target} — free space or write elsewhere "
                   "(--out), then rerun; files written before are intact"]
    assert checkpoint_steps(run / "checkpoints") == [4]
    assert checkpoint_damage(checkpoint_path(run / "checkpoints", 4)) is None
    assert temp_files(run) == []


@pytest.mark.parametrize("writer", WRITERS)
def test_a_really_full_disk_fails_inside_write_and_keeps_the_previous_file(writer, tmp_path):
    name, write = WRITERS[writer]
    with small_disk(tmp_path / "disk", 4 << 20) as disk:
        path = disk / name
        write(path, 1)
        before = digests(disk)
        filler = fill_up(disk)
        with pytest.raises(OSError) as err:
            write(path, 2)
        assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
        filler.unlink()
        assert digests(disk) == before  # the old file and its manifest, no temp file
        assert io.check_file(path) is None
        write(path, 2)  # space again: the write goes through
        assert digests(disk)[name] != before[name]


def test_train_fills_a_real_disk_inside_torch_save(reference_run, tmp_path, capsys):
    """``torch.save`` reports a failed write() as ``RuntimeError: ... unexpected pos``; the user still gets
    exit 7 naming the checkpoint, and the checkpoint before it is untouched."""
    size = checkpoint_path(reference_run[0] / "checkpoints", 4).stat().st_size
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    with small_disk(ckpts, size + size // 2 + 8192):  # room for one checkpoint and half of the next
        assert cli(*TINY_TRAIN, "--out", run) == 7
        target = checkpoint_path(ckpts, 8)
        assert one_error_line(capsys) == (
            f"irepa train: no space left on the device writing {target} — free space or write elsewhere (--out), "
            "then rerun; files written before are intact")
        assert checkpoint_steps(ckpts) == [4] and temp_files(run) == []
        assert checkpoint_damage(checkpoint_path(ckpts, 4)) is None
        before = digests(ckpts) | {"config.yaml": digests(run)["config.yaml"]}
        assert cli(*TINY_TRAIN, "--out", run, "--resume") == 7  # still full: the same line, nothing changed
        assert str(target) in one_error_line(capsys)
        assert digests(ckpts) | {"config.yaml": digests(run)["config.yaml"]} == before
        assert temp_files(run) == []

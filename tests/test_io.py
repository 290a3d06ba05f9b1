"""irepa.utils.io: atomic writes, manifests and damage checks, the cache home and offline mode."""

from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pytest

from irepa.utils import io


def test_atomic_write_with_manifest_records_size_and_sha256(tmp_path):
    path = tmp_path / "a.bin"
    data = bytes(range(256)) * 40
    io.atomic_write_bytes(path, data, manifest=True)
    assert path.read_bytes() == data
    assert io.read_manifest(path) == io.FileDigest(len(data), hashlib.sha256(data).hexdigest())
    assert io.check_file(path) is None


def test_streamed_digest_equals_a_second_read(tmp_path):
    path = tmp_path / "t.pt"
    import torch

    io.atomic_torch_save({"x": torch.arange(1000)}, path, manifest=True)
    assert io.read_manifest(path) == io.file_digest(path)


def test_check_file_names_truncation_and_bit_damage(tmp_path):
    path = tmp_path / "a.bin"
    io.atomic_write_bytes(path, b"x" * 1000, manifest=True)
    path.write_bytes(b"x" * 600)
    assert io.check_file(path) == "truncated: 600 of 1000 bytes"
    path.write_bytes(b"x" * 999 + b"y")
    assert "SHA-256" in io.check_file(path)
    io.manifest_path(path).write_text("{broken")
    assert "manifest" in io.check_file(path)


def test_zip_files_without_manifest_are_checked_by_crc(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, arr_0=np.arange(5000))
    assert io.check_file(path) is None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    assert "CRC" in io.check_file(path)
    path.write_bytes(bytes(data[: len(data) // 3]))
    assert "zip" in io.check_file(path)
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:
        zf.writestr("a", "b")
    assert io.check_file(tmp_path / "ok.zip") is None


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.txt"
    io.atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), io.atomic_open(path, "w") as fh:
        fh.write("half of the new")
        raise RuntimeError("writer crashed")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_remove_stale_temps_only_removes_temps(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("x")
    stale = io.temp_path(tmp_path / "cut.pt")
    stale.write_bytes(b"partial")
    assert stale.suffix == ".pt" and io.is_temp_file(stale)
    assert io.remove_stale_temps(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_cache_home_and_offline_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("IREPA_HOME", str(tmp_path))
    assert io.cache_home() == tmp_path
    monkeypatch.delenv("IREPA_HOME")
    assert str(io.cache_home()).endswith(".cache/irepa")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "IREPA_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert not io.is_offline() and io.offline_reason() == ""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "IREPA_OFFLINE"):
        monkeypatch.setenv(name, "yes")
        assert io.is_offline() and io.offline_reason() == f"{name} is set"
        monkeypatch.setenv(name, "0")
    assert not io.is_offline()
    monkeypatch.setenv("IREPA_OFFLINE", "1")
    assert not io.hub_reachable()  # offline answers at once, without a probe


def test_a_held_folder_refuses_a_second_holder_and_is_free_again_after(tmp_path):
    """Two holders in two processes: the second is refused naming the first's pid; a forked child of the
    holder (a data-loader worker) does not keep the folder once the holder lets go."""
    import multiprocessing
    import os

    from irepa.errors import FolderInUseError
    from irepa.utils.io import hold_folder

    def try_to_hold(folder, result):
        try:
            with hold_folder(folder, "a test", "wait"):
                result.put("held")
        except FolderInUseError as err:
            result.put(str(err))

    ctx = multiprocessing.get_context("fork")
    result = ctx.Queue()
    with hold_folder(tmp_path, "a test", "wait"):
        worker = ctx.Process(target=lambda: __import__("time").sleep(30), daemon=True)
        worker.start()  # forked while the folder is held
        other = ctx.Process(target=try_to_hold, args=(tmp_path, result))
        other.start()
        other.join()
        message = result.get(timeout=10)
        assert f"in use by a test (pid {os.getpid()}" in message and message.endswith("— wait")
    try:
        other = ctx.Process(target=try_to_hold, args=(tmp_path, result))
        other.start()
        other.join()
        assert result.get(timeout=10) == "held"  # the still running child held nothing
    finally:
        worker.kill()

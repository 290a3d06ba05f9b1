"""Image batches as ``.npz`` files: checked reads (memory-mapped when stored uncompressed) and streamed writes.

A 50,000-image batch at 256 px is ~10 GB, so neither side holds it in memory: the writer streams
chunks into the zip member, and the reader maps an uncompressed member straight from disk.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from irepa.errors import DataError
from irepa.utils.io import AtomicFile

_LOCAL_HEADER_SIZE = 30  # fixed part of a zip local file header
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def check_images(images: np.ndarray, what: str = "samples") -> None:
    """Raise a ValueError saying how to fix ``images`` unless they are uint8 ``(N, H, W, 3)``."""
    shape, dtype = tuple(images.shape), images.dtype
    if len(shape) == 3:
        raise ValueError(f"{what}: shape {shape} has no channel axis; for grayscale use "
                         "np.repeat(x[..., None], 3, axis=-1) to get (N, H, W, 3)")
    if len(shape) != 4:
        raise ValueError(f"{what}: expected uint8 images (N, H, W, 3), got shape {shape}")
    if shape[-1] != 3:
        if shape[1] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
            raise ValueError(f"{what}: shape {shape} looks channels-first (NCHW); use x.transpose(0, 2, 3, 1)")
        if shape[-1] == 1:
            raise ValueError(f"{what}: single-channel images {shape}; use np.repeat(x, 3, axis=-1)")
        if shape[-1] == 4:
            raise ValueError(f"{what}: RGBA images {shape}; drop alpha with x[..., :3]")
        raise ValueError(f"{what}: expected 3 channels last (N, H, W, 3), got shape {shape}")
    if dtype != np.uint8:
        hint = ("np.clip(np.round(x * 255), 0, 255).astype(np.uint8) for [0, 1] floats, or "
                "np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8) for [-1, 1]")
        if np.issubdtype(dtype, np.integer):
            hint = "np.clip(x, 0, 255).astype(np.uint8) if the values are 0..255"
        raise ValueError(f"{what}: dtype {dtype}, expected uint8 in 0..255; convert with {hint}")
    if shape[0] == 0:
        raise ValueError(f"{what}: no images")


def _member_offset(fh, info: zipfile.ZipInfo) -> int:
    fh.seek(info.header_offset)
    header = fh.read(_LOCAL_HEADER_SIZE)
    if header[:4] != b"PK\x03\x04":
        raise ValueError("corrupt zip local header")
    name_len = int.from_bytes(header[26:28], "little")
    extra_len = int.from_bytes(header[28:30], "little")
    return info.header_offset + _LOCAL_HEADER_SIZE + name_len + extra_len


def _not_npz(path: str | os.PathLike, err: BaseException) -> DataError:
    return DataError(f"{path} is not a readable .npz file ({' '.join(str(err).split())})",
                     fix="give a file written by np.savez or irepa sample (samples_<N>.npz), or re-create it")


def npz_keys(path: str | os.PathLike) -> list[str]:
    """Array names in an ``.npz`` file."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, EOFError) as err:
        raise _not_npz(path, err) from err


def open_npz_array(path: str | os.PathLike, key: str = "arr_0") -> np.ndarray:
    """Array ``key`` of an ``.npz``: a read-only memmap when stored uncompressed, else loaded."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            name = f"{key}.npy"
            if name not in zf.namelist():
                raise KeyError(f"{path} has no array {key!r}; it holds {', '.join(npz_keys(path)) or 'nothing'}")
            info = zf.getinfo(name)
    except (zipfile.BadZipFile, EOFError) as err:
        raise _not_npz(path, err) from err
    try:
        return _read_member(path, key, info)
    except (ValueError, EOFError, zipfile.BadZipFile) as err:
        if isinstance(err, DataError):
            raise
        raise _not_npz(path, err) from err


def _read_member(path: Path, key: str, info: zipfile.ZipInfo) -> np.ndarray:
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as fh:
            start = _member_offset(fh, info)
            fh.seek(start)
            version = np.lib.format.read_magic(fh)
            reader = _HEADER_READERS.get(version)
            if reader is not None:
                shape, fortran, dtype = reader(fh)
                offset = fh.tell()
        if reader is None or dtype.hasobject:
            with np.load(path, allow_pickle=False) as data:
                return data[key]
        if int(np.prod(shape)) == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    with np.load(path, allow_pickle=False) as data:
        return data[key]


class NpzWriter:
    """Write arrays chunk by chunk into an uncompressed ``.npz``, atomically (temp file, then rename)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._target = AtomicFile(self.path)
        self.tmp = self._target.tmp
        try:
            self.zf = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        except OSError as err:
            self._target.discard()
            self._target.raise_named(err)

    def write(self, key: str, shape: tuple[int, ...], dtype: np.dtype | str, chunks: Iterable[np.ndarray]) -> None:
        """Store array ``key`` of ``shape``/``dtype`` whose C-order contents are the concatenated ``chunks``."""
        try:
            self._write(key, shape, np.dtype(dtype), chunks)
        except OSError as err:
            self._target.raise_named(err)

    def _write(self, key: str, shape: tuple[int, ...], dtype: np.dtype, chunks: Iterable[np.ndarray]) -> None:
        expected = int(np.prod(shape))
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        written = 0
        with self.zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_2_0(fh, header)
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=dtype)
                written += chunk.size
                if written > expected:
                    raise ValueError(f"{key}: chunks hold more than the declared shape {shape}")
                fh.write(chunk.tobytes())
        if written != expected:
            raise ValueError(f"{key}: chunks held {written} values, the declared shape {shape} needs {expected}")

    def close(self) -> Path:
        """Finish the zip, fsync and move it into place."""
        try:
            self.zf.close()
        except OSError as err:
            self._target.discard()
            self._target.raise_named(err)
        return self._target.commit()

    def abort(self) -> None:
        try:
            self.zf.close()
        except OSError:
            pass
        self._target.discard()

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Atomically write small arrays as an uncompressed ``.npz``."""
    with NpzWriter(path) as writer:
        for key, value in arrays.items():
            value = np.asarray(value)
            writer.write(key, value.shape, value.dtype, [value])
    return Path(path)

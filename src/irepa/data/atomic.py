"""Crash-safe file writes: write a temp file in the same folder, fsync, then ``os.replace``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def temp_path(path: Path) -> Path:
    """Hidden per-process temp name next to ``path`` (``.<name>.tmp-<pid>``)."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` all at once: readers see the old file or the whole new one."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON (stable bytes for equal content)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temp files left by killed writers in ``folder``; returns what was removed."""
    removed = []
    for entry in Path(folder).iterdir():
        if entry.name.startswith(".") and TMP_MARK in entry.name and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed

"""Checkpoints written atomically, found again for resuming, and loaded for sampling."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``.

    A crash at any point leaves either the previous file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_steps(folder: str | Path) -> list[int]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := STEP_FILE.match(p.name)))


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete ``step_*.pt`` in ``folder`` (temp files are never considered)."""
    steps = checkpoint_steps(folder)
    return Path(folder) / f"step_{steps[-1]:07d}.pt" if steps else None


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest step checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return
    for step in checkpoint_steps(folder)[:-keep]:
        (Path(folder) / f"step_{step:07d}.pt").unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path) or latest_checkpoint(path / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"no step_*.pt checkpoint in {path}")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    for key in ("model", "step", "config"):
        if key not in ckpt:
            raise ValueError(f"{path} is not an irepa checkpoint (missing {key!r})")
    ckpt["path"] = str(path)
    return ckpt

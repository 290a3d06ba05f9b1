"""Checkpoints that verify themselves: written atomically, found again for resuming, loaded for sampling.

``step_NNNNNNN.pt`` is written atomically and followed by ``step_NNNNNNN.pt.manifest.json`` (its
size and SHA-256). Loading checks the file against the manifest (or, for a checkpoint without one,
against the CRC of every zip member), so a truncated copy or a file damaged on a shared file
system is named instead of failing deep inside ``torch.load``.

Which checkpoint a command uses:

* ``train --resume`` / ``resume=True`` / ``"latest"``: the newest checkpoint; damaged -> error.
* ``train --resume auto``: the newest *usable* checkpoint, with a warning naming every newer one
  that is damaged or that ``torch.load`` cannot read (left in place, for inspection, until the run
  writes that step again).
* ``train --resume PATH``: exactly that file (a folder: its newest checkpoint); never another.
* ``sample --ckpt RUN`` (a folder): the newest usable checkpoint, and it says which.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from irepa.errors import CheckpointError, CheckpointNotFoundError, DamagedFileError, RunExistsError
from irepa.utils import io

log = logging.getLogger(__name__)

STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
REQUIRED_KEYS = ("model", "step", "config")
LATEST, AUTO = "latest", "auto"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write a checkpoint atomically, then its manifest (size + SHA-256, hashed while writing).

    A crash at any point leaves the previous file or the new one, never a torn file.
    """
    io.atomic_torch_save(obj, path, manifest=True)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global generators. CUDA states are restored for the devices visible now: a run
    saved on 8 GPUs resumes on 4 (or on ``CUDA_VISIBLE_DEVICES=0``, or a CPU) with the states of
    the first devices. Training noise does not depend on them (it comes from per-step generators)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    saved = list(state.get("cuda") or [])
    if not saved or not torch.cuda.is_available():
        return
    visible = torch.cuda.device_count()
    for device, device_state in enumerate(saved[:visible]):
        torch.cuda.set_rng_state(device_state, device)
    if len(saved) != visible:
        log.info("checkpoint holds CUDA RNG states of %d devices, %d visible now: restored %d",
                 len(saved), visible, min(len(saved), visible))


# ---------------------------------------------------------------------------------------------
# finding checkpoints


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step_{step:07d}.pt"


def checkpoint_steps(folder: str | Path) -> list[int]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := STEP_FILE.match(p.name)))


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest ``step_*.pt`` in ``folder`` by step (temp files are never considered), intact or not."""
    steps = checkpoint_steps(folder)
    return checkpoint_path(folder, steps[-1]) if steps else None


def checkpoint_damage(path: str | Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be used, or None when it is intact."""
    return io.check_file(path)


def _damaged(path: Path, reason: str, fix: str) -> DamagedFileError:
    return DamagedFileError(path, reason, fix=fix, what="checkpoint")


def newest_intact_checkpoint(folder: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint in ``folder`` that passes its check, and the newer damaged ones with why."""
    damaged = []
    for step in reversed(checkpoint_steps(folder)):
        path = checkpoint_path(folder, step)
        reason = checkpoint_damage(path)
        if reason is None:
            return path, damaged
        damaged.append((path, reason))
    return None, damaged


def _warn_skipped(damaged: list[tuple[Path, str]], chosen: Path) -> None:
    for path, reason in damaged:
        log.warning("checkpoint %s is damaged (%s); using %s, the newest usable checkpoint", path, reason,
                    chosen.name)


def last_good_checkpoint_note(folder: str | Path) -> str:
    """What a failed run leaves to continue from, for its error message: the newest checkpoint, or that
    there is none yet."""
    latest = latest_checkpoint(folder)
    if latest is None:
        return "no checkpoint was written yet (a rerun starts from step 0)"
    return f"the last good checkpoint ({latest}) is untouched"


def _checkpoint_folder(path: Path) -> Path:
    """A run folder's ``checkpoints/``, or the folder itself."""
    return path / "checkpoints" if not checkpoint_steps(path) and (path / "checkpoints").is_dir() else path


def resolve_resume(ckpt_dir: str | Path, resume: bool | str | Path | None) -> Path | None:
    """The verified checkpoint a training run continues from (None: a new run).

    ``resume``: None/False starts a new run (refused when ``ckpt_dir`` already holds checkpoints);
    True/``"latest"`` the newest checkpoint, which must be intact; ``"auto"`` the newest intact one,
    warning about damaged newer ones; a path exactly that checkpoint (a folder: its newest).
    """
    ckpt_dir = Path(ckpt_dir)
    for stale in io.remove_stale_temps(ckpt_dir):  # left by a run killed while writing a checkpoint
        log.info("removed the unfinished checkpoint file %s", stale)
    existing = latest_checkpoint(ckpt_dir)
    if resume is None or resume is False:
        if existing is not None:
            raise RunExistsError(
                f"{ckpt_dir} already holds checkpoints (latest {existing.name}); nothing was overwritten",
                fix="pass --resume to continue that run, or choose another --out",
            )
        return None
    if resume is True or resume in (LATEST, AUTO):
        if existing is None:
            raise CheckpointNotFoundError(
                f"--resume: no checkpoint in {ckpt_dir}", fix="drop --resume to start a new run, or check --out"
            )
        if resume == AUTO:
            chosen, damaged = newest_intact_checkpoint(ckpt_dir)
            if chosen is None:
                listed = "; ".join(f"{p.name}: {r}" for p, r in damaged)
                raise CheckpointError(
                    f"no intact checkpoint in {ckpt_dir} ({listed})",
                    fix="restore a good copy of one of them, or start a new run in another --out",
                )
            _warn_skipped(damaged, chosen)
            return chosen
        reason = checkpoint_damage(existing)
        if reason is not None:
            raise _damaged(existing, reason, "resume from the newest intact checkpoint with --resume auto, "
                                             "or name one with --resume PATH")
        return existing
    path = Path(resume)
    if path.is_dir():
        found = latest_checkpoint(_checkpoint_folder(path))
        if found is None:
            raise CheckpointNotFoundError(f"--resume {path}: no step_*.pt checkpoint in that folder",
                                          fix="give a checkpoint file or a run folder")
        path = found
    if not path.is_file():
        raise CheckpointNotFoundError(f"--resume {path}: the checkpoint does not exist",
                                      fix="give an existing step_*.pt file, or --resume auto")
    reason = checkpoint_damage(path)
    if reason is not None:
        raise _damaged(path, reason, "give another checkpoint with --resume PATH, or use --resume auto")
    return path


def load_resume_checkpoint(ckpt_dir: str | Path, resume: bool | str | Path | None) -> dict[str, Any] | None:
    """The checkpoint a training run continues from, loaded (None: a new run); see :func:`resolve_resume`.

    With ``"auto"`` a checkpoint that passes its checksum but that ``torch.load`` cannot read is
    skipped like a damaged one (with a warning); every other choice loads exactly the file it names.
    """
    path = resolve_resume(ckpt_dir, resume)
    if path is None:
        return None
    if resume == AUTO:  # newer damaged checkpoints were named by resolve_resume; go on from its choice
        return _load_newest_usable(Path(ckpt_dir), up_to=path)
    return load_checkpoint(path, fix="resume from the newest usable checkpoint with --resume auto, "
                                     "or name one with --resume PATH")


def _load_newest_usable(folder: Path, map_location: str | torch.device = "cpu", mmap: bool = True,
                        given: Path | None = None, up_to: Path | None = None) -> dict[str, Any]:
    """The newest checkpoint in ``folder`` (``up_to`` that one) that passes its check and loads; warns
    about the newer ones. ``given``: the folder as the user named it (for the message when it holds none)."""
    skipped: list[tuple[Path, str]] = []
    steps = checkpoint_steps(folder)
    if up_to is not None:
        steps = [s for s in steps if s <= int(STEP_FILE.match(up_to.name).group(1))]
    for step in reversed(steps):
        path = checkpoint_path(folder, step)
        reason = checkpoint_damage(path)
        if reason is None:
            try:
                ckpt = _load_file(path, map_location, mmap, fix="")
            except CheckpointError as err:
                reason = getattr(err, "reason", "") or err.message
            else:
                _warn_skipped(skipped, path)
                return ckpt
        skipped.append((path, reason))
    if not skipped:
        raise CheckpointNotFoundError(f"no step_*.pt checkpoint in {given or folder}",
                                      fix="give a checkpoint file or a run folder that holds checkpoints/")
    listed = "; ".join(f"{p.name}: {r}" for p, r in skipped)
    raise CheckpointError(f"no usable checkpoint in {folder} ({listed})", fix="restore a good copy of one of them")


def find_checkpoint(path: str | Path) -> Path:
    """A verified checkpoint file from a file or a folder (a run folder or its ``checkpoints/``).

    A folder gives its newest intact checkpoint (damaged newer ones are named in a warning); a
    file must itself be intact.
    """
    path = Path(path)
    if path.is_dir():
        folder = _checkpoint_folder(path)
        chosen, damaged = newest_intact_checkpoint(folder)
        if chosen is None:
            if damaged:
                listed = "; ".join(f"{p.name}: {r}" for p, r in damaged)
                raise CheckpointError(f"no intact checkpoint in {folder} ({listed})",
                                      fix="restore a good copy of one of them")
            raise CheckpointNotFoundError(f"no step_*.pt checkpoint in {path}",
                                          fix="give a checkpoint file or a run folder that holds checkpoints/")
        _warn_skipped(damaged, chosen)
        return chosen
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist",
                                      fix="give a step_*.pt file or a run folder (its newest intact checkpoint)")
    reason = checkpoint_damage(path)
    if reason is not None:
        raise _damaged(path, reason, f"give its run folder ({path.parent}) to use the newest intact checkpoint")
    return path


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest step checkpoints and their manifests (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return
    for step in checkpoint_steps(folder)[:-keep]:
        path = checkpoint_path(folder, step)
        path.unlink(missing_ok=True)
        io.manifest_path(path).unlink(missing_ok=True)


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _torch_load(path: Path, map_location: str | torch.device, mmap: bool) -> Any:
    if mmap:
        try:
            return torch.load(path, map_location=map_location, weights_only=False, mmap=True)
        except (RuntimeError, TypeError):  # the legacy format cannot be mapped; torch < 2.1 has no mmap
            pass
    return torch.load(path, map_location=map_location, weights_only=False)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = True,
                    fix: str | None = None) -> dict[str, Any]:
    """Load a verified checkpoint: a file exactly, a folder its newest usable one (intact and readable
    by ``torch.load``; newer ones are named in a warning), see :func:`find_checkpoint`.

    ``mmap=True`` maps the tensors from the file instead of reading them into memory, so a resumed
    run does not hold a second copy of its state; drop the returned dict once it is restored.
    ``fix`` replaces the advice given when the file cannot be loaded.
    """
    path = Path(path)
    if path.is_dir():
        return _load_newest_usable(_checkpoint_folder(path), map_location, mmap, given=path)
    path = find_checkpoint(path)
    return _load_file(path, map_location, mmap,
                      fix or f"give its run folder ({path.parent}) to use the newest usable checkpoint")


def _load_file(path: Path, map_location: str | torch.device, mmap: bool, fix: str) -> dict[str, Any]:
    """``torch.load`` of a verified checkpoint file, checked to be an irepa checkpoint."""
    try:
        ckpt = _torch_load(path, map_location, mmap)
    except Exception as err:  # verified but unreadable: a format torch cannot read, or damage it found itself
        raise _damaged(path, f"torch.load failed: {one_line(err)}", fix) from err
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        raise CheckpointError(f"{path} is not an irepa checkpoint (missing {', '.join(missing)})",
                              fix="give a step_*.pt file written by irepa train")
    ckpt["path"] = str(path)
    return ckpt

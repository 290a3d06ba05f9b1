"""Fine-tuning from a run: its weights, EMAs and projectors into freshly built modules (the optimiser starts anew)."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from irepa.errors import ConfigError

from .checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def run_config_of(run: str | Path | None) -> Path | None:
    """``config.yaml`` of the run that ``--init-from`` names (a run folder, its ``checkpoints/`` or a step file)."""
    if run is None:
        return None
    path = Path(run)
    folder = path.parent if path.is_file() else path
    folder = folder.parent if folder.name == "checkpoints" else folder
    return folder / "config.yaml"


def _load(module: nn.Module, state: dict, what: str, run: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"--init-from {run}: its {what} do not fit the model this config builds "
                          f"({' '.join(str(err).split())[:300]})",
                          fix="train with the run's own model and align settings (omit --config to use RUN/config.yaml)"
                          ) from err


def init_from_run(run: str | Path, backbone: nn.Module, aligner: nn.Module | None, emas: list) -> int:
    """Load ``run``'s newest intact checkpoint into ``backbone``, ``aligner`` and the EMAs; returns its step.

    The EMA shadows take the run's EMA weights (further EMAs the run lacks start from its first EMA);
    projectors load when both sides have them (a run without them leaves the new projectors as built).
    """
    ckpt = load_checkpoint(run)
    _load(backbone, ckpt["model"], "weights", str(run))
    ema_states = [ckpt.get("ema") or ckpt["model"], *(ckpt.get("extra_ema") or [])]
    for index, ema in enumerate(emas):
        _load(ema.shadow, ema_states[min(index, len(ema_states) - 1)], "EMA weights", str(run))
    if aligner is not None and ckpt.get("aligner") is not None:
        _load(aligner, ckpt["aligner"], "projectors", str(run))
    elif aligner is not None:
        log.info("--init-from %s: the run has no projectors; the new ones start from their initialisation", run)
    log.info("initialised from %s (step %d): weights, EMA%s; fresh optimiser", ckpt["path"], int(ckpt["step"]),
             " and projectors" if aligner is not None and ckpt.get("aligner") is not None else "")
    return int(ckpt["step"])

"""Stopping a run that diverged: a non-finite loss or gradient norm, or an fp16 loss scale that never recovers.

Either stops the run with :class:`~irepa.errors.TrainingDiverged`, naming the step and the last good
checkpoint, which is left untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from irepa.errors import TrainingDiverged

from .checkpoint import last_good_checkpoint_note


def check_finite(steps: list[int], rows: list[dict[str, float]], where: str) -> None:
    """Raise :class:`TrainingDiverged` naming the first step whose loss or gradient norm is not finite."""
    for step, row in zip(steps, rows):
        for key in ("loss", "grad_norm"):
            if key in row and not math.isfinite(row[key]):
                what = "loss" if key == "loss" else "gradient norm"
                parts = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k.startswith("loss"))
                raise TrainingDiverged(
                    f"non-finite {what} at step {step} ({parts}); the run stopped and {where}. "
                    "Fix: lower train.lr, keep train.grad_clip on, or use bf16 instead of fp16"
                )


@dataclass
class OverflowGuard:
    """fp16 training: the loss scaler skips a step whose gradients overflowed and lowers its scale.

    That is normal and is let be; only ``limit`` skips in a row (a scale that never recovers) stop the
    run. ``record`` takes whether the step just taken was skipped.
    """

    limit: int
    checkpoints: Path  # named in the message: the newest checkpoint there is the last good one
    in_a_row: int = 0

    def record(self, skipped: bool, step: int) -> None:
        self.in_a_row = self.in_a_row + 1 if skipped else 0
        if self.in_a_row >= self.limit:
            raise TrainingDiverged(
                f"the fp16 loss scaler skipped {self.in_a_row} steps in a row up to step {step}; "
                f"{last_good_checkpoint_note(self.checkpoints)}. Fix: use bf16, or lower train.lr"
            )

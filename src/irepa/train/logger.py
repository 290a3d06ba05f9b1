"""Scalar logging: a CSV file always, TensorBoard and wandb when asked for."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class ScalarLogger:
    """Appends one row per logged step to ``metrics.csv``; mirrors to TensorBoard / wandb."""

    def __init__(self, folder: str | Path, report_to: list[str], config: dict | None = None, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(folder) / "metrics.csv"
        self.tb = None
        self.wandb = None
        self._columns: list[str] | None = None
        if not enabled:
            return
        unknown = set(report_to) - {"tensorboard", "wandb", "none"}
        if unknown:
            raise ValueError(f"unknown report_to {sorted(unknown)}; valid: tensorboard, wandb, none")
        if self.path.exists():
            with open(self.path) as f:
                header = next(csv.reader(f), None)
            self._columns = header
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(folder) / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed: logging to metrics.csv only")
        if "wandb" in report_to:
            import wandb  # optional dependency; an ImportError here names the package to install

            self.wandb = wandb.init(project="irepa", config=config, dir=str(folder), resume="allow")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **scalars}
        if self._columns is None:
            self._columns = list(row)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self._columns)
        extra = [k for k in row if k not in self._columns]
        if extra:  # a new scalar appeared: rewrite the header, keep the rows
            self._columns += extra
            with open(self.path) as f:
                rows = list(csv.reader(f))[1:]
            with open(self.path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(self._columns)
                w.writerows(rows)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self._columns])
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (used when a run resumes from an earlier checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        with open(self.path) as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()

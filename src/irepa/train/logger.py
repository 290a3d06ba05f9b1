"""Scalar logging: per-step scalars kept on the device (:class:`StepLog`), then a CSV file always,
TensorBoard and wandb when asked for (:class:`ScalarLogger`)."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from irepa.utils.io import atomic_open

log = logging.getLogger(__name__)


UNDECODABLE = "\ufffd"  # what bytes that are not UTF-8 decode to


def _is_header(row: list[str] | None) -> bool:
    return bool(row) and row[0] == "step" and not any(UNDECODABLE in cell for cell in row)


@dataclass
class StepLog:
    """Per-step scalars kept on the device and read back only at log and checkpoint time.

    The hot loop never waits on the host: loss parts and the gradient norm stay tensors until
    :meth:`flush`, which makes one transfer for the whole window.
    """

    rows: list[dict[str, torch.Tensor]] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)

    def add(self, step: int, lr: float, scalars: dict[str, torch.Tensor]) -> None:
        self.rows.append(scalars)
        self.steps.append(step)
        self.lrs.append(lr)

    def flush(self) -> tuple[list[int], list[dict[str, float]]]:
        """All rows as floats (one host transfer), and clear the window."""
        if not self.rows:
            return [], []
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        nan = self.rows[0]["loss"].new_tensor(math.nan)
        table = torch.stack([torch.stack([r[k].reshape(()) if k in r else nan for k in keys]) for r in self.rows])
        rows = [{**dict(zip(keys, values)), "lr": lr} for values, lr in zip(table.cpu().tolist(), self.lrs)]
        steps = self.steps
        self.rows, self.steps, self.lrs = [], [], []
        return steps, rows


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
            with open(self.path, "rb") as f:
                header = next(csv.reader([f.readline().decode("utf-8", errors="replace")]), None)
            if not _is_header(header):  # damaged: set aside by the full read
                header = (self._read_rows() or [None])[0]
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
            self._rewrite([self._columns])
        extra = [k for k in row if k not in self._columns]
        if extra:  # a new scalar appeared: rewrite the header, keep the rows
            self._columns += extra
            rows = self._read_rows()[1:]
            self._rewrite([self._columns, *rows])
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self._columns])
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` and rows torn by a kill (used when a run resumes)."""
        if not self.enabled or not self.path.exists():
            return
        rows = self._read_rows()
        if not rows:
            return
        kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= step]
        self._rewrite(kept)

    def _read_rows(self) -> list[list[str]]:
        """The header and the whole rows of the log. A damaged log never stops a run: a row cut off by a
        kill, or with undecodable bytes (disk damage) or no step number, is dropped with a warning; a
        damaged header sets the whole file aside (``metrics.csv.damaged``) and the log starts again."""
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):  # the last row was cut off by a kill while it was appended
            data = data[: data.rfind(b"\n") + 1]
        text = data.decode("utf-8", errors="replace")
        rows = [r for r in csv.reader(text.splitlines()) if r]
        if not rows:
            return []
        header, body = rows[0], rows[1:]
        if not _is_header(header):
            aside = self.path.with_name(self.path.name + ".damaged")
            self.path.replace(aside)
            log.warning("training log %s has a damaged header: moved it to %s and started a new log", self.path, aside)
            return []
        kept = [r for r in body if r[0].isdigit() and not any(UNDECODABLE in cell for cell in r)]
        if len(kept) < len(body):
            log.warning("training log %s: dropped %d damaged row(s) (undecodable bytes or no step number)",
                        self.path, len(body) - len(kept))
        return [header, *kept]

    def _rewrite(self, rows: list[list]) -> None:
        """Replace the whole file at once (a row torn by a kill while appending is dropped on resume)."""
        with atomic_open(self.path, "w") as f:
            csv.writer(f).writerows(rows)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()

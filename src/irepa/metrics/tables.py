"""Small CSV utilities: atomic writes, typed reads and a plain-text table for the terminal."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from irepa.utils.io import atomic_open


def format_value(v: Any, digits: int = 4) -> str:
    """Floats to ``digits`` significant places (NaN as ``nan``), anything else via ``str``."""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}g}"
    return str(v)


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Write ``rows`` (dicts) as CSV atomically; floats keep full precision."""
    columns = list(columns or (rows[0].keys() if rows else []))
    with atomic_open(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})


def _parse(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a CSV file as dicts, numbers parsed; a clear error when the file is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table {path} does not exist")
    with open(path, newline="") as fh:
        rows = [{k.strip(): _parse(v.strip()) for k, v in row.items() if k is not None} for row in csv.DictReader(fh)]
    if not rows:
        raise ValueError(f"table {path} has no rows")
    return rows


def render_table(rows: Iterable[dict[str, Any]], columns: Sequence[str], digits: int = 4) -> str:
    """A left-aligned plain-text table of ``columns``."""
    cells = [[str(c) for c in columns]]
    cells += [[format_value(row.get(c, ""), digits) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

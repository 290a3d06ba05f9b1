"""Evaluation results as JSON (everything) and one-row CSV (the numbers), written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from irepa.utils.io import atomic_write_bytes, atomic_write_json

METRIC_ORDER = ("fid", "fd_dinov2", "sfid", "inception_score", "inception_score_std", "precision", "recall")


def metric_names(result: dict[str, Any]) -> list[str]:
    """Every metric the result mentions (computed, skipped or failed), known ones in the usual order."""
    seen = [*result["metrics"], *result["skipped"], *result["errors"]]
    return [m for m in METRIC_ORDER if m in seen] + [m for m in dict.fromkeys(seen) if m not in METRIC_ORDER]


def csv_row(result: dict[str, Any]) -> dict[str, Any]:
    """The flat row of a result: metrics (empty when skipped or failed), counts and the network."""
    metrics = result["metrics"]
    row: dict[str, Any] = {"samples": result.get("samples"), "reference": result.get("reference"),
                           "features": result["extractor"]["name"]}
    for name in metric_names(result):
        value = metrics.get(name)
        row[name] = "" if value is None else f"{value:.6g}"
    row.update(num_samples=result["num_samples"], num_ref=result["num_ref"] if result["num_ref"] is not None else "",
               eps=result["eps"], weights_sha256=result["extractor"].get("sha256") or "")
    return row


def write_results(result: dict[str, Any], out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.csv`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / f"{stem}.json", out / f"{stem}.csv"
    atomic_write_json(json_path, result)
    row = csv_row(result)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(row))
    writer.writeheader()
    writer.writerow(row)
    atomic_write_bytes(csv_path, buf.getvalue().encode())
    return json_path, csv_path


def format_summary(result: dict[str, Any]) -> str:
    """Human-readable lines: each metric, then what was skipped, failed or warned about."""
    lines = [f"features: {result['extractor']['name']}  samples: {result['num_samples']}  "
             f"reference: {result['num_ref'] if result['num_ref'] is not None else 'precomputed statistics'}"]
    for name in metric_names(result):
        if result["metrics"].get(name) is not None:
            lines.append(f"  {name:>20s}: {result['metrics'][name]:.4f}")
    for name, why in result["skipped"].items():
        lines.append(f"  {name:>20s}: skipped ({why})")
    for name, why in result["errors"].items():
        lines.append(f"  {name:>20s}: FAILED ({why})")
    for warning in result["warnings"]:
        lines.append(f"  WARNING: {warning}")
    return "\n".join(lines)

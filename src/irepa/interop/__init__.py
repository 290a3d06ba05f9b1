"""Released checkpoints of the reference code bases, imported as ordinary irepa runs.

``import_checkpoint("repa", "last.pt", "runs/repa-xl")`` (or ``irepa import --from repa last.pt --out
runs/repa-xl``) writes ``config.yaml`` and a verified ``checkpoints/step_*.pt`` that ``irepa sample``,
``irepa eval``, ``irepa diagnose`` and ``irepa train --init-from`` read like any run. One module per
source converts its weights and arguments; :mod:`irepa.interop.base` writes the run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from irepa.errors import ConfigError

from .base import ImportedRun, write_run

SOURCES: dict[str, str] = {
    "repa": "sihyun-yu/REPA: latent SiT, MLP projector ({model, ema, opt, args, steps} or the released EMA state dict)",
    "irepa-ldm": "End2End-Diffusion/iREPA ldm/: latent SiT, MLP / linear / conv projector",
    "irepa-jit": "End2End-Diffusion/iREPA jit/: pixel-space JiT with projectors",
    "jit": "LTH14/JiT: pixel-space JiT ({model, model_ema1, model_ema2, optimizer, epoch, args})",
    "repa-e": "End2End-Diffusion/REPA-E: latent SiT with batch-norm latent statistics, on its end-to-end-tuned VAE",
    "meanflow": "Gsunshine/py-meanflow, the MeanFlow authors' PyTorch port: its CIFAR-10 DDPM++ U-Net",
}


def _importer(source: str) -> Callable[[str, Any, dict[str, Any]], ImportedRun]:
    if source in ("repa", "irepa-ldm", "repa-e"):
        from .sit_sources import import_sit

        return import_sit
    if source in ("jit", "irepa-jit"):
        from .jit import import_jit

        return import_jit
    if source == "meanflow":
        from .meanflow import import_meanflow

        return import_meanflow
    raise ConfigError(f"unknown --from {source!r}; valid: {', '.join(SOURCES)}")


def convert_checkpoint(source: str, path: str | Path, **options: Any) -> ImportedRun:
    """A released file as irepa state dicts and settings, without writing anything."""
    return _importer(source)(source, path, options)


def import_checkpoint(source: str, path: str | Path, out: str | Path, **options: Any) -> Path:
    """Import a released checkpoint as the run folder ``out``; returns the checkpoint written.

    ``options``: ``vae`` (a diffusers folder or hub id decoding the latents), ``latent_stats`` (iREPA
    ldm/'s statistics file), ``encoders`` (``a,b``), ``num_heads``, ``in_context_start`` and
    ``align_depth`` for what a file does not say itself.
    """
    return write_run(convert_checkpoint(source, path, **options), out)


__all__ = ["SOURCES", "ImportedRun", "convert_checkpoint", "import_checkpoint"]

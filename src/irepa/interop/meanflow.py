"""``meanflow``: the MeanFlow authors' PyTorch port (Gsunshine/py-meanflow), its checkpoint format.

The port saves ``{"model", "optimizer", "lr_schedule", "epoch", "args"}`` where ``model`` is its
``MeanFlow`` module: the network under ``net.``, its EMAs under ``net_ema.`` / ``net_ema<i>.``. The
network it ships (``args.arch == "unet"``) is EDM's SongUNet for CIFAR-10, a backbone irepa does not
have, so such a file is recognised and refused with that reason rather than half-imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import ImportedRun, arg, read_released, refuse


def import_meanflow(source: str, path: str | Path, options: dict[str, Any]) -> ImportedRun:
    from .sit_sources import describe_file

    obj = read_released(path, source)
    model = obj.get("model") if isinstance(obj, Mapping) else None
    if not isinstance(model, Mapping) or not any(str(k).startswith("net.") for k in model) or "epoch" not in obj:
        raise refuse(source, f"the file is {describe_file(obj)}, not a checkpoint of the MeanFlow PyTorch port",
                     "give its checkpoint-*.pth ({model: net / net_ema, optimizer, lr_schedule, epoch, args})")
    arch = arg(obj.get("args"), "arch", "unknown")
    unet = arch == "unet" or any(".enc." in str(k) or ".dec." in str(k) for k in model)
    if unet:
        raise refuse(source, f"the port's network is EDM's SongUNet (args.arch={arch!r}, CIFAR-10), a backbone irepa "
                     "does not provide", "irepa imports transformer (SiT / JiT) MeanFlow models only")
    raise refuse(source, f"the port's network {arch!r} is not one irepa can rebuild",
                 "irepa imports transformer (SiT / JiT) MeanFlow models only")

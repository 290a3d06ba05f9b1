"""Encoders built with transformers: the Web-SSL DINO family (``Dinov2Model`` checkpoints).

The model is built from the repository's ``config.json`` when it sits beside the weights (hub
download or a local folder), else from the spec's built-in config. ``last_hidden_state`` is already
layer-normed; the CLS (and any register) tokens are dropped. Position embeddings are resampled by
transformers itself on every call (bicubic, no antialias), so any grid works; the paper's code uses
the same model, so there is no other rule to follow.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from irepa.encoders.base import SpecEncoder
from irepa.encoders.spec import REPA_POS, EncoderSpec, PosResample
from irepa.encoders.weights import WeightsMismatchError, read_state_dict, resolve_weights, save_state_dict


def _config(spec: EncoderSpec, weights_path: Path | None):
    from transformers import Dinov2Config

    if spec.arch != "dinov2":
        raise ValueError(f"{spec.name}: transformers arch {spec.arch!r} is not supported (only 'dinov2')")
    if weights_path is not None and (weights_path.parent / "config.json").is_file():
        config = Dinov2Config.from_json_file(str(weights_path.parent / "config.json"))
        if config.hidden_size != spec.embed_dim or config.patch_size != spec.patch_size:
            raise ValueError(f"{spec.name}: {weights_path.parent / 'config.json'} describes width "
                             f"{config.hidden_size} / patch {config.patch_size}, the spec "
                             f"{spec.embed_dim} / {spec.patch_size}")
        return config
    return Dinov2Config(**dict(spec.arch_kwargs))


class HFDinov2Encoder(SpecEncoder):
    """A transformers ``Dinov2Model``; patch tokens of the final layer norm."""

    def __init__(self, spec: EncoderSpec, model: nn.Module, resolution: tuple[int, int],
                 output_grid: tuple[int, int] | None = None) -> None:
        super().__init__(spec, model, resolution, output_grid)
        prefix = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
        if prefix != spec.num_prefix_tokens:
            raise ValueError(
                f"{spec.name}: the spec says {spec.num_prefix_tokens} prefix tokens, the model has {prefix}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        hidden = self.model(pixel_values=x).last_hidden_state
        return self.finish(hidden[:, self.spec.num_prefix_tokens:], (h, w))


def create(spec: EncoderSpec, resolution: tuple[int, int], output_grid: tuple[int, int] | None,
           weights: str | None, meta: bool = False, pos: PosResample = REPA_POS) -> HFDinov2Encoder:
    """Build the encoder; ``weights`` is ``None`` (cache / hub), ``"random"`` or a file path."""
    from transformers import Dinov2Model

    path = None
    if not meta and weights != "random":
        path = Path(weights) if weights is not None else resolve_weights(spec)
    config = _config(spec, path)
    if meta:
        with torch.device("meta"):
            model = Dinov2Model(config)
    elif path is None:
        model = Dinov2Model(config)
    else:
        model = _load_pretrained(config, path, spec)
    return HFDinov2Encoder(spec, model.eval(), resolution, output_grid)


def _load_pretrained(config, path: Path, spec: EncoderSpec) -> nn.Module:
    """transformers' own loader (it knows its checkpoint key layouts), made strict."""
    from transformers import Dinov2Model

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model.safetensors"
        if path.suffix == ".safetensors":
            try:
                os.symlink(path.resolve(), target)
            except OSError:  # no symlinks on this filesystem
                shutil.copyfile(path, target)
        else:
            save_state_dict(read_state_dict(path), target)
        model, info = Dinov2Model.from_pretrained(tmp, config=config, output_loading_info=True)
    problems = []
    for label, key in (("missing", "missing_keys"), ("unexpected", "unexpected_keys"),
                       ("wrong shape", "mismatched_keys"), ("errors", "error_msgs")):
        items = [str(k) for k in info.get(key) or []]
        if items:
            more = f" ... (+{len(items) - 8})" if len(items) > 8 else ""
            problems.append(f"{label} {len(items)}: {', '.join(sorted(items)[:8])}{more}")
    if problems:
        raise WeightsMismatchError(f"{spec.name} weights {path} do not fit the architecture: " + "; ".join(problems))
    return model

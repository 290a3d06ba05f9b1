"""User encoders registered with :func:`irepa.encoders.register_encoder`.

The user's factory returns any ``nn.Module`` that maps normalised images ``(B, 3, H, W)`` to either
tokens ``(B, P + T, D)`` (``P = num_prefix_tokens`` leading tokens, dropped here) or a feature map
``(B, D, h, w)``. This wrapper adds the zoo's preprocessing, prefix stripping and grid handling.
"""

from __future__ import annotations

import torch
from torch import nn

from irepa.encoders.base import SpecEncoder
from irepa.encoders.spec import REPA_POS, EncoderSpec, PosResample


class CustomEncoder(SpecEncoder):
    """Wraps a user module so it follows the :class:`Encoder` contract."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        out = self.model(x)
        if out.ndim == 4:  # (B, D, h, w) feature map
            if out.shape[1] != self.embed_dim:
                raise ValueError(
                    f"{self.name}: feature map has {out.shape[1]} channels, the spec says {self.embed_dim}"
                )
            h, w = out.shape[-2:]
            tokens = out.flatten(2).transpose(1, 2)
        elif out.ndim == 3:
            tokens = out[:, self.spec.num_prefix_tokens:]
            if tokens.shape[-1] != self.embed_dim:
                raise ValueError(f"{self.name}: tokens have width {tokens.shape[-1]}, the spec says {self.embed_dim}")
        else:
            raise ValueError(f"{self.name}: the model returned shape {tuple(out.shape)}; expected (B, T, D) or "
                             "(B, D, h, w)")
        if tokens.shape[1] != h * w:
            raise ValueError(f"{self.name}: {tokens.shape[1]} patch tokens do not fill the {h}x{w} grid of a "
                             f"{tuple(x.shape[-2:])} input at patch {self.patch_size}")
        return self.finish(tokens, (h, w))


def create(spec: EncoderSpec, resolution: tuple[int, int], output_grid: tuple[int, int] | None,
           weights: str | None, meta: bool = False, pos: PosResample = REPA_POS) -> CustomEncoder:
    """Call the user's factory with ``weights`` (``None``, ``"random"`` or a path); its positions are its own."""
    if meta:
        with torch.device("meta"):
            model = spec.factory(weights)
    else:
        model = spec.factory(weights)
    if not isinstance(model, nn.Module):
        raise TypeError(f"the factory of {spec.name} returned {type(model).__name__}, not an nn.Module")
    return CustomEncoder(spec, model, resolution, output_grid)

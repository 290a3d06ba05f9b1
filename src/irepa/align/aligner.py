"""The alignment head: one projector per encoder, and the weighted alignment loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .loss import alignment_loss
from .normalize import normalize_target
from .projectors import build_projector
from .targets import match_grid


@dataclass
class AlignOutput:
    loss: torch.Tensor  # weighted alignment loss, (1/n) * sum_i coeff_i * L_i
    parts: dict[str, torch.Tensor]  # unweighted loss per encoder


def _key(name: str) -> str:
    return name.replace(".", "_")


class Aligner(nn.Module):
    """Projects a backbone hidden state into each encoder's space and scores it against the targets.

    The encoders themselves are *not* submodules: they are frozen, shared, and never checkpointed.
    Attach to any backbone that exposes its hidden state ``(B, T, C)`` after block ``k``.

    The defaults are iREPA on latent SiT: a 3x3 conv projector and z-scored targets with
    ``alpha = 0.6`` (the paper's pixel-space JiT recipe uses 0.8); pass ``projector="mlp",
    norm="none"`` for REPA.
    """

    def __init__(
        self,
        hidden_dim: int,
        encoder_dims: dict[str, int],
        grid: tuple[int, int],
        coeffs: dict[str, float] | None = None,
        projector: str = "conv",
        kernel_size: int = 3,
        projector_hidden_dim: int = 2048,
        norm: str = "zscore",
        alpha: float = 0.6,
        eps: float = 1e-6,
    ):
        super().__init__()
        if not encoder_dims:
            raise ValueError("Aligner needs at least one encoder")
        self.names = list(encoder_dims)
        self.grid = tuple(grid)
        self.coeffs = {n: float((coeffs or {}).get(n, 1.0)) for n in self.names}
        self.norm, self.alpha, self.eps = norm, alpha, eps
        normalize_target(torch.zeros(1, 2, 1), norm)  # validate the name early
        self.projectors = nn.ModuleDict(
            {
                _key(n): build_projector(
                    projector, hidden_dim, d, kernel_size=kernel_size, hidden_dim=projector_hidden_dim
                )
                for n, d in encoder_dims.items()
            }
        )

    def prepare_target(self, tokens: torch.Tensor, name: str, src_grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Encoder tokens -> float32 target on the model grid, spatially normalised if configured."""
        if src_grid is not None:
            tokens = match_grid(tokens, src_grid, self.grid, name)
        elif tokens.shape[1] != self.grid[0] * self.grid[1]:
            raise ValueError(
                f"{name} gives {tokens.shape[1]} tokens but the model grid {self.grid} has "
                f"{self.grid[0] * self.grid[1]}; load the encoder with grid={self.grid} or pass src_grid to resample"
            )
        return normalize_target(tokens, self.norm, self.alpha, self.eps)

    @torch.no_grad()
    def encode_targets(
        self,
        images: torch.Tensor | None,
        encoders: dict[str, nn.Module],
        cached: dict[str, torch.Tensor] | None = None,
        batch_size: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each encoder's prepared target for ``[0, 1]`` images.

        ``cached``: tokens already on the model grid (name -> ``(B, T, D)``, e.g. from a token cache)
        that replace running that encoder; ``images`` may then be None. ``batch_size`` runs the
        encoders in chunks to bound their memory.
        """
        cached = cached or {}
        out = {}
        for name in self.names:
            if name in cached:
                out[name] = self.prepare_target(cached[name].float(), name)
                continue
            if images is None:
                raise ValueError(f"no images to encode and no cached tokens for {name}")
            enc = encoders[name]
            chunks = images.split(batch_size) if batch_size else [images]
            tokens = torch.cat([enc.encode(c) for c in chunks])
            out[name] = self.prepare_target(tokens, name, tuple(enc.grid))
        return out

    def forward(self, hidden: torch.Tensor, targets: dict[str, torch.Tensor]) -> AlignOutput:
        parts = {}
        for name in self.names:
            pred = self.projectors[_key(name)](hidden, self.grid)
            parts[name] = alignment_loss(pred, targets[name])
        loss = sum(self.coeffs[n] * parts[n] for n in self.names) / len(self.names)
        return AlignOutput(loss=loss, parts=parts)

"""Controlled encoders: any encoder's tokens with one property taken away.

A transformed encoder is named ``BASE+TRANSFORM[=VALUE][+TRANSFORM[=VALUE]...]`` and works wherever an
encoder name does (``--align.encoders``, ``irepa metrics``, ``irepa compare --encoder``)::

    dinov2-vit-s+shuffle          same tokens, positions permuted per image
    dinov2-vit-s+global=0.1       mean token + 0.1 x the spatial residual
    dinov2-vit-s+blur=1.0         Gaussian low-pass over the token grid, sigma in tokens
    dinov2-vit-s+noise=1.0        residual mixed with projected noise at SNR 1 (power ratio)
    dinov2-vit-s+random           the same architecture with seeded random weights
    dinov2-vit-s+blur=2+shuffle   transforms apply left to right

With ``m`` the image's mean token and ``r_t = y_t - m`` the spatial residual of token ``t``:

* ``+shuffle[=SEED]``: ``y'_t = y_{pi(t)}`` with ``pi`` a permutation fixed per image (drawn from a hash of
  the encoder's input image and ``SEED``, so the cached and the live targets of an image agree). Keeps
  every token, the mean token and so the mean-pooled feature and its linear probe exactly; removes where
  each token is, i.e. the spatial structure (LDS, CDS go to about 0).
* ``+global=A``: ``y'_t = m + A r_t`` (``A >= 0``, default 0.1). Keeps the mean token exactly, scales the
  residual (the spatial contrast) by ``A``.
* ``+blur=SIGMA``: a normalised Gaussian over the ``H x W`` grid (``SIGMA`` in tokens, default 1.0, taps to
  ``round(3 SIGMA)``, weights renormalised at the border). Keeps a constant grid and low spatial
  frequencies; removes high ones (fine local structure). The mean token changes slightly at the border.
* ``+noise=SNR``: ``y'_t = m + r_t + e_t`` where ``e = c (z P - mean_t(z P))``, ``z`` i.i.d. Gaussian per
  token (seeded per image as for ``+shuffle``), ``P`` a fixed random ``D x D`` projection and ``c`` such
  that ``sum_t |r_t|^2 / sum_t |e_t|^2 = SNR`` per image (default 1.0). Keeps the mean token exactly;
  buries the spatial signal under spatially white noise.
* ``+random[=SEED]``: not a token transform but a load option: the base architecture with weights drawn
  by its own initialiser under ``torch.manual_seed(SEED)`` (default 0), the same on every load.

What iREPA's spatial z-score (``y_hat = (y - alpha m) / std_t(y)``, per channel) does to them: the
z-score removes (part of) the per-image mean and divides by the residual's std. ``+shuffle`` commutes
with it (the same normalised tokens, permuted). ``+global=A`` scales the residual and its std by ``A``,
so under iREPA it equals the base encoder with a z-score of ``alpha' = 1 - (1 - alpha) / A``: it differs
from its base only through ``alpha < 1`` (at ``alpha = 1`` the two targets are identical); under REPA
(no normalisation) the residual is simply ``A`` times weaker against the mean. Compare ``+global``
under REPA too. ``+blur`` and ``+noise`` change the residual's shape, which the z-score keeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from irepa.encoders.base import Encoder


@dataclass(frozen=True)
class TransformDef:
    """One transform: its default parameter, what the parameter means and the function on tokens."""

    name: str
    default: float
    parameter: str
    keeps: str
    removes: str
    check: Callable[[float], str | None]


def _nonneg(v: float) -> str | None:
    return None if v >= 0 and math.isfinite(v) else "must be a finite number >= 0"


def _positive(v: float) -> str | None:
    return None if v > 0 and math.isfinite(v) else "must be a finite number > 0"


def _seed(v: float) -> str | None:
    return None if v >= 0 and float(v).is_integer() else "must be an integer seed >= 0"


TRANSFORMS: dict[str, TransformDef] = {
    t.name: t
    for t in (
        TransformDef("shuffle", 0, "seed of the per-image permutation", "every token, the mean token, the linear probe",
                     "token positions (spatial structure)", _seed),
        TransformDef("global", 0.1, "factor A on the spatial residual", "the mean token, the linear probe",
                     "a fraction 1 - A of the spatial contrast", _nonneg),
        TransformDef("blur", 1.0, "Gaussian sigma in tokens", "constant grids, low spatial frequencies",
                     "high spatial frequencies (fine local structure)", _positive),
        TransformDef("noise", 1.0, "signal-to-noise power ratio of residual to noise",
                     "the mean token, the linear probe", "spatial signal, buried in white noise", _positive),
        TransformDef("random", 0, "seed of the random initialisation", "the architecture",
                     "everything learnt (weights drawn by the initialiser)", _seed),
    )
}


def parse_name(name: str) -> tuple[str, list[tuple[str, float]]]:
    """``"dinov2-vit-s+blur=2+shuffle"`` -> ``("dinov2-vit-s", [("blur", 2.0), ("shuffle", 0.0)])``."""
    base, *parts = name.split("+")
    steps = []
    for part in parts:
        key, sep, value = part.partition("=")
        if key not in TRANSFORMS:
            raise KeyError(f"{name!r}: unknown encoder transform {key!r}; valid: {', '.join(TRANSFORMS)} "
                           f"(e.g. {base}+global=0.1)")
        t = TRANSFORMS[key]
        if sep:
            try:
                v = float(value)
            except ValueError:
                raise KeyError(f"{name!r}: +{key}={value!r} needs a number ({t.parameter})") from None
        else:
            v = float(t.default)
        problem = t.check(v)
        if problem:
            raise KeyError(f"{name!r}: +{key}={value} {problem} ({t.parameter})")
        steps.append((key, v))
    if not base or not steps:
        raise KeyError(f"{name!r} is not of the form ENCODER+TRANSFORM[=VALUE]")
    if sum(k == "random" for k, _ in steps) > 1:
        raise KeyError(f"{name!r}: +random given twice")
    return base, steps


def is_transformed(name: str) -> bool:
    return "+" in name


def describe(name: str) -> str:
    """One line per transform of ``name``: what it keeps and removes."""
    _, steps = parse_name(name)
    return "; ".join(f"+{k}={v:g}: keeps {TRANSFORMS[k].keeps}, removes {TRANSFORMS[k].removes}" for k, v in steps)


# ---------------------------------------------------------------- the token maps
def image_seeds(x: torch.Tensor, salt: str) -> list[int]:
    """A 63-bit seed per image of ``x (B, ...)`` from its content (quantised to 1/1024) and ``salt``.

    The same image always gets the same seed, whichever batch it comes in and whether its tokens are
    cached or computed live.
    """
    q = torch.round(x.detach().float() * 1024).to(torch.int32).cpu().numpy()
    out = []
    for row in q:
        h = hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=8, person=b"irepa-tf")
        h.update(salt.encode())
        out.append(int.from_bytes(h.digest(), "little") & (2**63 - 1))
    return out


def shuffle_tokens(tokens: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """Each image's tokens at positions permuted by ``randperm`` seeded with its seed."""
    b, t, _ = tokens.shape
    perms = torch.stack([torch.randperm(t, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return tokens.gather(1, perms.to(tokens.device)[:, :, None].expand_as(tokens))


def global_tokens(tokens: torch.Tensor, factor: float) -> torch.Tensor:
    """``mean + factor * (tokens - mean)`` per image (mean over tokens)."""
    mean = tokens.mean(dim=1, keepdim=True)
    return mean + factor * (tokens - mean)


def gaussian_matrix(n: int, sigma: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(n, n)`` row-normalised Gaussian weights with taps up to ``int(3 sigma + 0.5)`` (rows sum to 1)."""
    radius = int(3.0 * sigma + 0.5)
    i = torch.arange(n, dtype=torch.float64)
    d = i[:, None] - i[None, :]
    w = torch.exp(-0.5 * (d / sigma) ** 2) * (d.abs() <= radius)
    return (w / w.sum(dim=1, keepdim=True)).to(dtype)


def blur_tokens(tokens: torch.Tensor, grid: tuple[int, int], sigma: float) -> torch.Tensor:
    """Separable normalised Gaussian over the row-major ``grid`` of each image's tokens."""
    b, t, d = tokens.shape
    h, w = grid
    if t != h * w:
        raise ValueError(f"{t} tokens do not fill a {h}x{w} grid")
    ay = gaussian_matrix(h, sigma, tokens.dtype).to(tokens.device)
    ax = gaussian_matrix(w, sigma, tokens.dtype).to(tokens.device)
    out = torch.einsum("ih,jw,bhwd->bijd", ay, ax, tokens.reshape(b, h, w, d))
    return out.reshape(b, t, d)


def projection(dim: int, seed: int = 0) -> torch.Tensor:
    """The fixed random ``(dim, dim)`` Gaussian projection of ``+noise``."""
    return torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)) / math.sqrt(dim)


def noise_tokens(tokens: torch.Tensor, snr: float, seeds: list[int], proj: torch.Tensor) -> torch.Tensor:
    """Tokens plus centred projected noise whose energy is the residual's divided by ``snr`` (per image)."""
    b, t, d = tokens.shape
    z = torch.stack([torch.randn(t, d, generator=torch.Generator().manual_seed(s)) for s in seeds])
    e = z.to(tokens.device, tokens.dtype) @ proj.to(tokens.device, tokens.dtype)
    e = e - e.mean(dim=1, keepdim=True)
    resid = tokens - tokens.mean(dim=1, keepdim=True)
    signal = resid.square().sum(dim=(1, 2), keepdim=True)
    power = e.square().sum(dim=(1, 2), keepdim=True).clamp_min(1e-30)
    return tokens + e * torch.sqrt(signal / (snr * power))


# ---------------------------------------------------------------- the encoder
class TransformedEncoder(Encoder):
    """A base encoder followed by token transforms (in float32); same grid, width and preprocessing."""

    def __init__(self, name: str, base: Encoder, steps: list[tuple[str, float]]):
        super().__init__()
        self.base = base
        self.name = name
        self.steps = [(k, v) for k, v in steps if k != "random"]
        for attr in ("embed_dim", "patch_size", "resolution", "mean", "std", "interpolation", "antialias",
                     "output_grid", "supports_autocast", "autocast_dtype"):
            setattr(self, attr, getattr(base, attr))
        if hasattr(base, "spec"):
            from dataclasses import replace

            self.spec = replace(base.spec, name=name, notes=describe(name))
        if any(k == "noise" for k, _ in self.steps):
            self.register_buffer("proj", projection(self.embed_dim), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return self.base.preprocess(images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.base(x)
        ctx = torch.autocast(x.device.type, enabled=False) if torch.amp.is_autocast_available(x.device.type) \
            else contextlib.nullcontext()
        with ctx:  # the transforms' sums and norms in float32 whatever the encoder's precision
            out = tokens.float()
            for i, (kind, value) in enumerate(self.steps):
                salt = f"{i}:{kind}:{value!r}"
                if kind == "shuffle":
                    out = shuffle_tokens(out, image_seeds(x, salt))
                elif kind == "global":
                    out = global_tokens(out, value)
                elif kind == "blur":
                    out = blur_tokens(out, self.grid, value)
                elif kind == "noise":
                    out = noise_tokens(out, value, image_seeds(x, salt), self.proj)
        return out.to(tokens.dtype)


def load_transformed(name: str, load_encoder: Callable[..., nn.Module], weights: str | None = None,
                     **kwargs) -> TransformedEncoder:
    """``load_encoder`` for a transformed name: load the base with ``load_encoder`` (``+random``: seeded
    random weights), wrap it."""
    base_name, steps = parse_name(name)
    seeds = [int(v) for k, v in steps if k == "random"]
    if seeds:
        if weights not in (None, "random"):
            raise ValueError(f"{name}: +random draws its own weights; weights={weights!r} cannot be used with it")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeds[0])
            base = load_encoder(base_name, weights="random", **kwargs)
    else:
        base = load_encoder(base_name, weights=weights, **kwargs)
    enc = TransformedEncoder(name, base, steps)
    ref = next(base.parameters(), None)
    if ref is not None and ref.device.type != "meta":
        enc.to(ref.device)
    return enc.freeze()

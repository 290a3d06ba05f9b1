"""Name -> :class:`EncoderSpec` lookup, plus :func:`register_encoder` for user encoders."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any, overload

from irepa.encoders.catalog import BUILTIN
from irepa.encoders.spec import EncoderSpec

_REGISTRY: dict[str, EncoderSpec] = {spec.name: spec for spec in BUILTIN}
_HOG_NAME = re.compile(r"^hog-c(\d+)-o(\d+)$")


def list_encoders() -> list[str]:
    """Every registered name, in registration order."""
    return list(_REGISTRY)


def _parametric(name: str) -> EncoderSpec | None:
    """Specs for names that carry their own settings, e.g. ``hog-c4-o8`` (4x4 cells, 8 bins: D=128)."""
    m = _HOG_NAME.match(name)
    if m:
        cells, bins = int(m.group(1)), int(m.group(2))
        if not (1 <= cells <= 16 and 2 <= bins <= 64):
            raise ValueError(f"{name}: cells must be 1..16 and bins 2..64")
        base = _REGISTRY["hog"]
        return replace(base, name=name, embed_dim=cells * cells * bins, options=dict(cells=cells, bins=bins),
                       notes=f"HOG with {cells}x{cells} cells per token, {bins} unsigned bins, L2-Hys")
    return None


def get_spec(name: str) -> EncoderSpec:
    """The spec registered under ``name``; unknown names raise with the valid ones listed."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    spec = _parametric(name)
    if spec is not None:
        return spec
    if "+" in name:  # a controlled variant such as dinov2-vit-s+shuffle: the base's spec under the new name
        from irepa.encoders.transforms import describe, parse_name

        base, steps = parse_name(name)
        return replace(get_spec(base), name=name, notes=describe(name))
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise KeyError(
        f"unknown encoder {name!r}.{hint} Valid names: {', '.join(_REGISTRY)} (and hog-c<cells>-o<bins>; any "
        "name may be followed by +shuffle, +global=A, +blur=SIGMA, +noise=SNR or +random). "
        "Register your own with irepa.encoders.register_encoder."
    )


@overload
def register_encoder(spec: EncoderSpec, *, overwrite: bool = False) -> EncoderSpec: ...


@overload
def register_encoder(spec: str, *, overwrite: bool = False, **fields: Any) -> Callable[[Callable], Callable]: ...


def register_encoder(spec, *, overwrite: bool = False, **fields):
    """Add an encoder to the zoo.

    Two forms:

    * ``register_encoder(EncoderSpec(...))`` registers a spec (e.g. a variant of a built-in one made
      with ``dataclasses.replace``);
    * ``@register_encoder("name", embed_dim=..., patch_size=..., native_resolution=...)`` decorates a
      factory ``factory(weights) -> nn.Module``. ``weights`` is ``None``, ``"random"`` or a path.
      The module takes normalised images ``(B, 3, H, W)`` and returns tokens ``(B, P + T, D)``
      (``P = num_prefix_tokens`` leading tokens are dropped) or a feature map ``(B, D, h, w)``.

    Re-registering an existing name raises unless ``overwrite=True``.
    """
    if isinstance(spec, EncoderSpec):
        if fields:
            raise TypeError("pass either an EncoderSpec or a name with fields, not both")
        return _add(spec, overwrite)
    if not isinstance(spec, str):
        raise TypeError(f"register_encoder takes an EncoderSpec or a name, got {type(spec).__name__}")
    name = spec

    def decorator(factory: Callable) -> Callable:
        _add(EncoderSpec(name=name, source="custom", factory=factory, **{"family": "custom", **fields}), overwrite)
        return factory

    return decorator


def _add(spec: EncoderSpec, overwrite: bool) -> EncoderSpec:
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"an encoder named {spec.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_encoder(name: str) -> None:
    """Remove a registered encoder (built-in ones included)."""
    if name not in _REGISTRY:
        raise KeyError(f"no encoder named {name!r} is registered")
    del _REGISTRY[name]

"""The alignment recipes as config overrides (the same values as ``configs/{vanilla,repa,irepa}.yaml``)."""

from __future__ import annotations

RECIPES: dict[str, dict] = {
    "vanilla": {"align.enabled": False},
    "repa": {"align.enabled": True, "align.projector": "mlp", "align.coeff": 0.5, "align.norm": "none"},
    "irepa": {
        "align.enabled": True,
        "align.projector": "conv",
        "align.kernel_size": 3,
        "align.coeff": 1.0,
        "align.norm": "zscore",
        "align.zscore_alpha": 0.6,
    },
}


def recipe_overrides(spec: str, common: dict | None = None) -> dict:
    """A named recipe, optionally with config changes: ``irepa`` or ``irepa+align.depth=3+align.coeff=0.5``.

    ``common`` (changes for every recipe) overrides the named recipe; the spec's own changes override both.
    """
    from irepa.config import _parse_scalar

    name, *changes = spec.split("+")
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r} in {spec!r}; valid: {', '.join(RECIPES)} (then +key=value ...)")
    out = {**RECIPES[name], **(common or {})}
    for change in changes:
        key, sep, value = change.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"{spec!r}: expected +section.field=value after the recipe name, got {change!r}")
        out[key] = _parse_scalar(value)
    return out

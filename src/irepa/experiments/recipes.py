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


def recipe_overrides(name: str) -> dict:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}")
    return dict(RECIPES[name])

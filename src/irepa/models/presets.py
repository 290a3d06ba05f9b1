"""Small backbones of each family at one shape: CPU-sized runs (smoke runs, the quickstart, ``irepa
compare``, GPU checks) take theirs from this one table, as dotted ``model.*`` config overrides.

Depth 6, width 256, 4 px patches: an 8x8 token grid on 32 px inputs.
"""

from __future__ import annotations

from typing import Any

SMALL_MODELS: dict[str, dict[str, Any]] = {
    "sit": {"model.name": "SiT-S/4", "model.depth": 6, "model.hidden_size": 256, "model.num_heads": 4},
    "jit": {
        "model.name": "JiT-B/16",
        "model.patch_size": 4,
        "model.depth": 6,
        "model.hidden_size": 256,
        "model.num_heads": 4,
        "model.bottleneck_dim": 16,
        "model.in_context_start": 2,
        "model.in_context_len": 16,
    },
}
BACKBONE_FAMILY = {"sit": "sit", "jit": "jit", "meanflow": "sit", "repa-e": "sit"}  # recipe family -> backbone


def small_model(family: str, **changes: Any) -> dict[str, Any]:
    """The small backbone of a recipe ``family`` as ``model.*`` overrides, with ``changes`` (``depth=4``) on top."""
    base = SMALL_MODELS[BACKBONE_FAMILY.get(family, family)]
    return {**base, **{f"model.{k}": v for k, v in changes.items()}}

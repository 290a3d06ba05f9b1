from pathlib import Path

import pytest
import torch

from irepa.config import load_config
from irepa.data import DataConfig, build_dataset
from irepa.encoders.base import Encoder
from irepa.experiments.compare import markdown_table
from irepa.experiments.recipes import RECIPES, recipe_overrides
from irepa.experiments.token_cache import TokenCachedDataset, cached_tokens


class CountingEncoder(Encoder):
    """Mean colour of each 4x4 patch: cheap, deterministic, and counts its calls."""

    def __init__(self):
        super().__init__()
        self.embed_dim, self.patch_size, self.resolution = 3, 4, (8, 8)
        self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.nn.functional.avg_pool2d(x, 4).flatten(2).transpose(1, 2)


def test_cached_tokens_equal_direct_encoding_and_are_reused(tmp_path):
    ds = build_dataset(DataConfig(source="synthetic", resolution=8, synthetic_size=10, num_classes=2, flip=False))
    enc = CountingEncoder()
    key = {"encoder": "count", "n": 10}
    tokens = cached_tokens(ds, enc, tmp_path, key, batch_size=4)
    direct = enc.encode(torch.stack([ds[i]["image"] for i in range(10)]))
    torch.testing.assert_close(tokens.float(), direct, atol=1e-3, rtol=1e-3)
    calls = enc.calls
    again = cached_tokens(ds, enc, tmp_path, key, batch_size=4)
    assert enc.calls == calls and torch.equal(again, tokens)
    wrapped = TokenCachedDataset(ds, {"count": tokens})
    assert torch.equal(wrapped[3]["target.count"], tokens[3])


def test_cached_tokens_refuse_flipped_items(tmp_path):
    ds = build_dataset(DataConfig(source="synthetic", resolution=8, synthetic_size=4, num_classes=2, flip=True))
    wrapped = TokenCachedDataset(ds, {"c": torch.zeros(4, 4, 3)})
    with pytest.raises(ValueError, match="flip"):
        wrapped[(1, True)]
    with pytest.raises(ValueError, match="4 items"):
        TokenCachedDataset(ds, {"c": torch.zeros(3, 4, 3)})


def test_recipes_agree_with_shipped_configs():
    configs = Path(__file__).resolve().parents[1] / "configs"
    for name in RECIPES:
        from_yaml = load_config(configs / f"{name}.yaml")
        from_recipe = load_config(configs / "vanilla.yaml", recipe_overrides(name))
        if from_yaml.align.enabled:
            for key in ("projector", "kernel_size", "coeff", "norm", "zscore_alpha"):
                assert getattr(from_recipe.align, key) == getattr(from_yaml.align, key), (name, key)
        assert from_recipe.align.enabled == from_yaml.align.enabled
    with pytest.raises(ValueError, match="vanilla, repa, irepa"):
        recipe_overrides("repa-e")


def test_markdown_table_layout():
    rows = [
        {"recipe": "repa", "step": "100", "fid": "50.5"},
        {"recipe": "irepa", "step": "100", "fid": "40.25"},
        {"recipe": "irepa", "step": "200", "fid": "30"},
    ]
    table = markdown_table(rows, ["repa", "irepa"]).splitlines()
    assert table[0] == "| recipe | FID @ 100 | FID @ 200 |"
    assert table[2] == "| repa | 50.50 |  |" and table[3] == "| irepa | 40.25 | 30.00 |"

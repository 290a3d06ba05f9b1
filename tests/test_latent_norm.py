"""The latent normalisation a run trains with, and how its checkpoint decodes: per-channel statistics (iREPA)
or the constant SD-VAE scale z * 0.18215 (REPA, MeanFlow), checked against the formulas written here."""

from __future__ import annotations

import pytest
import torch

from irepa.codecs import CachedLatentCodec, codec_for_dataset, codec_from_state, sample_posterior
from irepa.config import load_config
from irepa.data.config import DataConfig
from irepa.recipes import recipe_overrides


class LatentDataset:
    vae = "some/vae"
    latent_stats = (torch.tensor([0.5, -0.2, 0.1, 0.0]), torch.tensor([2.0, 1.5, 0.5, 1.0]))


def moments(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([3 * torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen) - 4], 1)


@pytest.mark.parametrize("norm", ["per-channel", "constant"])
def test_codec_normalises_latents_and_its_checkpoint_decodes_the_same_way(norm):
    codec = codec_for_dataset(LatentDataset(), 4, norm)
    m = moments()
    z = sample_posterior(m, torch.Generator().manual_seed(1))
    got = codec.encode({"moments": m}, torch.Generator().manual_seed(1))
    mean, std = LatentDataset.latent_stats
    want = z * 0.18215 if norm == "constant" else (z - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    state = codec.checkpoint_state()
    assert state["norm"] == norm
    rebuilt = codec_from_state(state)
    assert rebuilt.norm == norm
    torch.testing.assert_close(rebuilt.denormalize(got), z, rtol=1e-6, atol=1e-6)
    # the stored mean / std describe the same map, for readers that know only the per-channel form
    legacy = (z - torch.tensor(state["mean"]).view(1, -1, 1, 1)) / torch.tensor(state["std"]).view(1, -1, 1, 1)
    torch.testing.assert_close(legacy, got, rtol=1e-6, atol=1e-6)


def test_checkpoints_without_the_field_keep_per_channel_statistics():
    mean, std = LatentDataset.latent_stats
    old = {"kind": "latent", "vae": "some/vae", "mean": mean.tolist(), "std": std.tolist(), "factor": 8}
    codec = codec_from_state(old)
    assert codec.norm == "per-channel"
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(codec.denormalize(x), x * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1))


def test_meanflow_recipe_uses_the_constant_scale_and_no_flips_the_others_keep_theirs():
    for name in ("meanflow", "meanflow-irepa"):
        data = load_config(None, recipe_overrides(name)).data
        assert (data.latent_norm, data.flip) == ("constant", False)
    assert load_config(None, recipe_overrides("irepa")).data.latent_norm == "per-channel"
    with pytest.raises(ValueError, match="latent_norm"):
        DataConfig(latent_norm="batch")
    with pytest.raises(ValueError, match="normalisation"):
        CachedLatentCodec("some/vae", [0.0], [1.0], norm="batch")
